"""
The LMTP command syntax: the C{<path>} argument of MAIL and RCPT, and the
safe echo of an address in a reply; kept apart from the protocol so the
parsing rules can be read (and tested) on their own.
"""

from __future__ import annotations

import re

_PATH = re.compile(rb"^<([^<>]*)>(.*)$", re.DOTALL)
VERB = re.compile(rb"^[A-Za-z]{1,16}$")
UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


class BadPath(ValueError):
    """A MAIL or RCPT argument that is not C{KEYWORD:<address> params}."""


def parse_path(argument: bytes, keyword: bytes) -> tuple[str, list[bytes]]:
    """C{FROM:<a@b> SIZE=10} -> (C{a@b}, [C{SIZE=10}])."""
    if argument[:len(keyword)].upper() != keyword:
        raise BadPath()
    match = _PATH.match(argument[len(keyword):].lstrip())
    if match is None:
        raise BadPath()
    raw = match.group(1)
    if raw.startswith(b"@") and b":" in raw:
        raw = raw.split(b":", 1)[1]  # an RFC 821 source route: ignored
    try:
        address = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath() from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise BadPath()
    return address, match.group(2).split()


def shown(address: str) -> bytes:
    """An address as echoed in a reply: printable ASCII only."""
    return UNPRINTABLE.sub("?", address)[:256].encode("ascii")
