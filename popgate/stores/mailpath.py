"""
Expanding a mail location template (C{/var/mail/%d/%n}) for one user,
safely: no user name can make the result leave the mail root.
"""

from __future__ import annotations

import os
import re

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
    C{%%} in C{template}.

    @raise InvalidUserName: if the user name or a part that the template
        uses is empty or could leave the directory (C{..}, C{/}, NUL, ...).
    """
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
