"""
Reply lines, with RFC 2449 / RFC 3206 response codes.

Clients parse the bracketed code, not the text: C{[AUTH]} means "your
credentials are wrong", C{[SYS/TEMP]} "try again later", so a client never
throws away a saved password because a directory server was down.
"""

from __future__ import annotations

IN_USE = b"IN-USE"
LOGIN_DELAY = b"LOGIN-DELAY"
AUTH = b"AUTH"
SYS_TEMP = b"SYS/TEMP"
SYS_PERM = b"SYS/PERM"


def ok(text: bytes = b"") -> bytes:
    """A C{+OK} line."""
    return b"+OK " + text + b"\r\n" if text else b"+OK\r\n"


def err(text: bytes, code: bytes | None = None) -> bytes:
    """A C{-ERR} line, with a response code when one fits."""
    if code:
        return b"-ERR [" + code + b"] " + text + b"\r\n"
    return b"-ERR " + text + b"\r\n"


def multiline(first: bytes, lines: list[bytes]) -> bytes:
    """A C{+OK} reply with a body of lines that need no dot-stuffing."""
    body = b"\r\n".join(lines)
    if body:
        body += b"\r\n"
    return ok(first) + body + b".\r\n"
