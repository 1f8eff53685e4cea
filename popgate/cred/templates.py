"""
Templates that name a user's parts: C{%u} (the whole name), C{%n} (the
local part) and C{%d} (the domain), as Dovecot writes them; C{%%} is a
literal C{%}.  SQL queries spell the same parts C{%(user)s},
C{%(localpart)s} and C{%(domain)s} (L{SQL}).

The template is parsed once, so a typo is a start-up error; what a value
must become inside the result is the caller's to say, as a function:
RFC 4515 escaping for an LDAP filter, a bound-parameter marker for SQL, a
path-component check for a mail location.  The domain is after the I{last}
C{@}: C{a@b@example.org} is C{a@b} at C{example.org}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PERCENT", "SQL", "Syntax", "Template", "split_user"]


def split_user(user: str) -> tuple[str, str]:
    """C{local@domain} -> (local, domain); no C{@} gives an empty domain."""
    local, at, domain = user.rpartition("@")
    return (local, domain) if at else (user, "")


def _user(user: str) -> str:
    return user


def _local(user: str) -> str:
    return split_user(user)[0]


def _domain(user: str) -> str:
    return split_user(user)[1]


@dataclass(frozen=True)
class Syntax:
    """
    How placeholders are written.  C{token} matches a placeholder (group
    C{name}), C{%%} (group C{percent}) or a lone C{%} (neither).
    """

    token: re.Pattern[str]
    parts: dict[str, Callable[[str], str]]
    spelling: str  # a placeholder as written, with {} for its name

    def spell(self, name: str) -> str:
        return self.spelling.format(name)


PERCENT = Syntax(
    re.compile(r"%(?:(?P<percent>%)|(?P<name>.))?", re.DOTALL),
    {"u": _user, "n": _local, "d": _domain},
    "%{}",
)
SQL = Syntax(
    re.compile(r"%(?:(?P<percent>%)|\((?P<name>\w*)\)s)?"),
    {"user": _user, "localpart": _local, "domain": _domain},
    "%({})s",
)


class Template:
    """
    A template parsed once: literal text and placeholders.

    @ivar names: the placeholders used, in the order of their first use.
    @raise ValueError: (from the constructor) an unknown placeholder or a
        lone C{%}, with a one-line reason naming C{what}.
    """

    def __init__(self, text: str, what: str, syntax: Syntax = PERCENT) -> None:
        self.text = text
        self.syntax = syntax
        # (literal text, then a placeholder's name or None for a literal %),
        # and the literal text after the last one.
        pieces: list[tuple[str, str | None]] = []
        names: list[str] = []
        literal_from = 0
        for match in syntax.token.finditer(text):
            literal = text[literal_from : match.start()]
            literal_from = match.end()
            name = match.group("name")
            if match.group("percent"):
                pieces.append((literal, None))
            elif name is None:
                raise ValueError(f"lone % at offset {match.start()} in {what} "
                                 "(write %% for a literal %)")
            elif name not in syntax.parts:
                known = ", ".join(syntax.spell(n) for n in syntax.parts)
                raise ValueError(f"unknown placeholder {syntax.spell(name)} in {what} "
                                 f"(use {known} or %%)")
            else:
                pieces.append((literal, name))
                if name not in names:
                    names.append(name)
        self._pieces = pieces
        self._tail = text[literal_from:]
        self.names = tuple(names)

    def values(self, user: str) -> dict[str, str]:
        """The value of each placeholder used, for C{user}."""
        return {name: self.syntax.parts[name](user) for name in self.names}

    def expand(self, user: str, escape: Callable[[str], str] = _user) -> str:
        """The template for C{user}, each value passed through C{escape}."""
        values = self.values(user)
        return self.render(lambda name: escape(values[name]))

    def render(self, fill: Callable[[str], str], percent: str = "%") -> str:
        """
        The template with each placeholder replaced by C{fill(name)} and
        each C{%%} by C{percent}.
        """
        out: list[str] = []
        for literal, name in self._pieces:
            out.append(literal)
            out.append(percent if name is None else fill(name))
        out.append(self._tail)
        return "".join(out)
