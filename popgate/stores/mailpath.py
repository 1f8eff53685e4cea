"""
Expanding a mail location template (C{/var/mail/%d/%n}) for one user,
safely: no user name can make the result leave the mail root.
"""

from __future__ import annotations

import os
import re

from popgate.cred.names import normalize_user
from popgate.errors import InvalidUserName

_PLACEHOLDER = re.compile(r"%(.)")
# Characters that never belong in a user name that names a directory.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")


def split_user(user: str) -> tuple[str, str]:
    """C{local@domain} -> (local, domain); no domain gives an empty one."""
    local, _, domain = user.rpartition("@") if "@" in user else (user, "", "")
    return local, domain


def check_component(value: str, what: str) -> str:
    """Refuse a value that could escape its directory or confuse a shell."""
    if not value or value in (".", "..") or value.startswith(".") or _FORBIDDEN.search(value) \
            or len(value.encode("utf-8", "surrogatepass")) > 255:
        raise InvalidUserName(f"{what} {value!r} cannot name a mailbox")
    return value


def expand(template: str, user: str) -> str:
    """
    Expand C{%u} (full user name), C{%n} (local part), C{%d} (domain) and
    C{%%} in C{template}.  The domain (in C{%d} and C{%u}) is lower-cased,
    so C{Bob@Example.org} and C{Bob@example.org} share one mailbox.

    @raise InvalidUserName: if the user name or a part that the template
        uses is empty or could leave the directory (C{..}, C{/}, NUL, ...).
    """
    user = normalize_user(user)
    local, domain = split_user(user)

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        if key == "u":
            return check_component(user, "user name")
        if key == "n":
            return check_component(local, "local part")
        if key == "d":
            return check_component(domain, "domain")
        raise ValueError(f"unknown placeholder %{key} in mail location {template!r}")

    path = _PLACEHOLDER.sub(value, template)
    if ".." in path.split(os.sep):
        raise InvalidUserName(f"mail location {path!r} leaves the mail root")
    return path


def check_template(template: str) -> str:
    """Validate a template at start-up, so a typo is a one-line error."""
    if not template:
        raise ValueError("an empty mail location template")
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1) not in "%und":
            raise ValueError(f"unknown placeholder %{match.group(1)} in {template!r} "
                             "(use %u, %n, %d or %%)")
    return template


def placeholders(template: str) -> set[str]:
    """The placeholders C{template} uses, without their C{%} (C{%%} included)."""
    return {match.group(1) for match in _PLACEHOLDER.finditer(template)}


def is_per_user(template: str) -> bool:
    """Whether C{template} names a different place for each user: it uses
    C{%u} or C{%n} (C{%d} alone gives a whole domain one mailbox)."""
    return bool(placeholders(template) & {"u", "n"})


def check_per_user(template: str, kind: str, shared: bool = False) -> str:
    """
    Refuse, at start-up, a template that gives every user the same mailbox
    (C{maildir:/srv/mail/shared}): each would read and delete the others'
    mail.  C{shared=yes} in the store's arguments says it is meant.

    @param kind: the store type, for the message (C{maildir}, C{mbox}).
    @raise ValueError: with a one-line reason.
    """
    if not shared and not is_per_user(template):
        who = "every user of a domain" if "d" in placeholders(template) else "every user"
        raise ValueError(f"{kind}: the path {template} has no per-user placeholder (%u, %n); "
                         f"{who} would share one mailbox — add shared=yes if that is "
                         "really wanted")
    return template


def fixed_root(template: str) -> str:
    """
    The directory every expansion of C{template} lies in, known before any
    user logs in: the directory part of the text before the first
    placeholder (C{/var/mail/vhosts/%d/%n} -> C{/var/mail/vhosts},
    C{/home/%n/Maildir} -> C{/home}); a template without placeholders is
    its own path.
    """
    literal = []
    for piece in re.split(r"(%.)", template):
        if piece == "%%":
            literal.append("%")
        elif len(piece) == 2 and piece.startswith("%"):
            return os.path.dirname("".join(literal)) or "."
        else:
            literal.append(piece)
    return "".join(literal)


def pop_shared(argstring: str, kind: str) -> tuple[str, bool]:
    """
    Take the C{shared=yes|no} option out of a store's C{TEMPLATE[,key=value...]}
    argument string; the rest is left for the store to parse as before.

    @return: the argument string without it, and whether it said yes.
    @raise ValueError: for a value other than yes or no.
    """
    first, *rest = argstring.split(",")
    kept, shared = [first], False
    for item in rest:
        key, eq, value = item.partition("=")
        if key.strip() != "shared" or not eq:
            kept.append(item)
        elif value.strip().lower() in ("yes", "no"):
            shared = value.strip().lower() == "yes"
        else:
            raise ValueError(f"{kind}: shared must be yes or no")
    return ",".join(kept), shared
