"""
Whom C{popgate migrate} copies: the users named on the command line, in
a file (one a line), or found by globbing the source store's template.

Globbing finds each mailbox under the template (C{/var/mail/%d/%n} ->
C{/var/mail/*/*}) and reads the user back out of its path.  That is only
reliable when the path holds the whole user name: C{%u}, or C{%n} with
C{%d}.  A template with C{%n} and no C{%d} (C{/home/%n/Maildir}) loses the
domain, so the name popgate's user store gives the session (and the
PostgreSQL mailbox is keyed on) cannot be told; those are refused, and
the users must be named.  A path is only taken when expanding the template
for the user read from it gives that very path back (so C{Example.ORG}
on disk, which popgate would never open, is left out), and a mail location
a user store gives (LDAP, SQL) is not seen at all.

Blocking (directory listings): called before the reactor runs.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable

from popgate.errors import InvalidUserName
from popgate.stores import mailpath

__all__ = ["EnumerationRefused", "enumerate_users", "merge", "read_users_file"]

_PIECE = re.compile(r"(%.)")
# What sits beside mbox spools in /var/mail and is not one: MTA dotlocks,
# popgate's session locks and UIDL records.
_NOT_SPOOLS = (".lock", ".popgate-lock", ".popgate-uidl", ".popgate-imported-uidls")


class EnumerationRefused(ValueError):
    """The template cannot give back whole user names (one line: why)."""


def read_users_file(path: str, read: Callable[[str], str] | None = None) -> list[str]:
    """
    The users in C{path}: one a line; blank lines and C{#} comments are
    skipped, surrounding whitespace dropped.  C{-} is standard input.

    @raise OSError: the file cannot be read.
    """
    if read is None:
        read = _read_text
    names = []
    for line in read(path).splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def merge(*lists: Iterable[str]) -> list[str]:
    """The names of every list, each once, in the order first given."""
    seen: dict[str, None] = {}
    for names in lists:
        for name in names:
            seen.setdefault(name, None)
    return list(seen)


def _pattern(template: str) -> tuple[str, re.Pattern[str]]:
    """The glob matching every expansion of C{template}, and a regex
    reading the placeholders back out of a match."""
    globbed, regex, seen = [], [], set()
    for piece in _PIECE.split(template):
        if piece == "%%":
            globbed.append(glob.escape("%"))
            regex.append(re.escape("%"))
        elif len(piece) == 2 and piece[0] == "%":
            key = piece[1]
            globbed.append("*")
            regex.append(f"(?P={key})" if key in seen else f"(?P<{key}>[^/]+)")
            seen.add(key)
        elif piece:
            globbed.append(glob.escape(piece))
            regex.append(re.escape(piece))
    return "".join(globbed), re.compile("".join(regex) + r"\Z")


def _user_of(values: dict[str, str]) -> str:
    if "u" in values:
        return values["u"]
    return f"{values['n']}@{values['d']}"


def _is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) or os.path.isdir(os.path.join(path, "new"))


def _is_spool(path: str) -> bool:
    """A regular file that is empty or starts with a From_ line."""
    if path.endswith(_NOT_SPOOLS):
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        return False
    return head in (b"", b"From ")


def enumerate_users(template: str, kind: str) -> tuple[list[str], list[str]]:
    """
    The users whose mailboxes C{template} finds on disk, sorted, and the
    paths it matched but left out (each with why).

    @param kind: C{maildir} (a directory with C{cur/} or C{new/}) or
        C{mbox} (a regular file, empty or starting with C{From }).
    @raise EnumerationRefused: the template cannot give whole user names.
    """
    used = mailpath.placeholders(template) - {"%"}
    if "u" not in used and not {"n", "d"} <= used:
        missing = "the user (%u or %n)" if "n" not in used else "the domain (%d)"
        raise EnumerationRefused(
            f"--all cannot tell the users from {template}: its paths do not hold {missing}; "
            "name the users (USER... or --users-from FILE)")
    pattern, regex = _pattern(template)
    looks_right = _is_maildir if kind == "maildir" else _is_spool
    users: set[str] = set()
    left_out: list[str] = []
    for path in sorted(glob.glob(pattern)):
        match = regex.match(path)
        if match is None or not looks_right(path):
            continue
        user = _user_of(match.groupdict())
        try:
            same = mailpath.expand(template, user) == path
        except (InvalidUserName, ValueError):
            same = False
        if not same:
            left_out.append(f"{path}: no user's mailbox (popgate would not open it for "
                            f"{user!r})")
            continue
        users.add(user)
    return sorted(users), left_out
