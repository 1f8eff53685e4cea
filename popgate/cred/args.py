"""
The C{key=value[,key=value...]} argument string of a user store
(C{ldap:url=...,base=...}, C{sql:dsn=...,query=...}), parsed once for all.

Only the store's own keys split the string, so values keep their commas:
DNs (C{base=ou=people,dc=example,dc=org}), filters and SQL queries need no
escaping.  A value cannot itself contain C{,KEY=} for one of the store's
keys (put such a password in a file: C{bindpw_file=}).  Whitespace around
keys and values is ignored.

A key that is not the store's is an error, with one exception that commas
make necessary: inside a I{free-text} value (a DN, a filter, a query, a
password) C{,word=} is text, so C{base=dc=x,bogus=1} is the DN
C{dc=x,bogus=1}.  Every error is a L{ValueError} with one line that starts
with the store's name and names the key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

__all__ = ["ArgSpec", "Args"]

_N = TypeVar("_N", int, float)

_YES = {
    "yes": True, "true": True, "on": True, "1": True,
    "no": False, "false": False, "off": False, "0": False,
}
_STRAY_KEY = re.compile(r",\s*(\w+)\s*=")


class ArgSpec:
    """
    What one store accepts: its name (for messages), its keys, which of them
    hold free text, and which must be given.

    @param keys: the keys, or each key with its help (what
        C{--help-auth-type} prints: L{describe}).
    """

    def __init__(
        self, kind: str, keys: Iterable[str] | Mapping[str, str], *,
        free_text: Iterable[str] = (), required: Iterable[str] = (),
    ) -> None:
        self.kind = kind
        self.help = dict(keys) if isinstance(keys, Mapping) else {}
        self.keys = tuple(keys)
        self.free_text = frozenset(free_text)
        self.required = tuple(required)
        # A key starts the string or follows a comma; longer keys first, so
        # that bindpw_file= is never read as bindpw= (the \s*= also sees to it).
        alternatives = "|".join(re.escape(k) for k in sorted(self.keys, key=len, reverse=True))
        self._key_at = re.compile(rf"(?:^|,)\s*({alternatives})\s*=")

    def describe(self) -> list[tuple[str, str]]:
        """Each C{key=} with its help (and whether it is required)."""
        return [(key + "=", ("(required) " if key in self.required else "")
                 + self.help.get(key, "")) for key in self.keys]

    def error(self, message: str) -> ValueError:
        """A L{ValueError} saying C{message}, prefixed with the store's name."""
        return ValueError(f"{self.kind}: {message}")

    def _unknown(self, name: str) -> ValueError:
        expected = ", ".join(k + "=" for k in self.keys)
        return self.error(f"unknown key {name}= (expected one of {expected})")

    def parse(self, argstring: str) -> Args:
        """
        @raise ValueError: a key not the store's, a key given twice, or a
            required key missing or empty.
        """
        argstring = argstring.strip()
        matches = list(self._key_at.finditer(argstring))
        if argstring and (not matches or matches[0].start() != 0):
            end = matches[0].start() if matches else len(argstring)
            head, eq, _ = argstring[:end].partition("=")
            if eq:
                raise self._unknown(head.strip()[:40])
            expected = ", ".join(k + "=" for k in self.keys)
            raise self.error(f"expected key=value pairs, one of {expected}, got {head[:40]!r}")
        values: dict[str, str] = {}
        # (With no match at all, the None is left over.)
        for match, following in zip(matches, matches[1:] + [None], strict=False):
            key = match.group(1)
            if key in values:
                raise self.error(f"{key}= given twice")
            end = following.start() if following else len(argstring)
            value = argstring[match.end() : end].strip()
            stray = None if key in self.free_text else _STRAY_KEY.search(value)
            if stray:
                raise self._unknown(stray.group(1))
            values[key] = value
        for key in self.required:
            if not values.get(key):
                raise self.error(f"{key}= is required")
        return Args(self, values)


class Args(Mapping[str, str]):
    """The values given, by key, with the conversions stores share."""

    def __init__(self, spec: ArgSpec, values: dict[str, str]) -> None:
        self.spec = spec
        self._values = values

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def text(self, key: str) -> str | None:
        """The value, or C{None} when not given or empty."""
        return self._values.get(key) or None

    def number(self, key: str, kind: type[_N], default: _N, *, unit: str = "") -> _N:
        """
        The value as an C{int} or C{float} (C{default} when not given).

        @param unit: how the message names it, e.g. C{"seconds"}.
        """
        if key not in self._values:
            return default
        text = self._values[key]
        try:
            return kind(text)
        except ValueError:
            what = f"a number of {unit}" if unit else "a number"
            raise self.spec.error(f"{key}= must be {what}, got {text[:20]!r}") from None

    def yes_no(self, key: str, default: bool = False) -> bool:
        """A yes/no (true/false, on/off, 1/0) value."""
        if key not in self._values:
            return default
        text = self._values[key].lower()
        if text not in _YES:
            raise self.spec.error(f"{key}= must be yes or no, got {text[:20]!r}")
        return _YES[text]
