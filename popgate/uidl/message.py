"""
What identifies one message on both sides of a migration: a SHA-256 of
its POP3 wire form (L{popgate.wire.to_crlf}: a Maildir with LF line ends
and the old server's CRLF copy compare equal), its size in that form, and
its Message-ID.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from popgate import wire

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:.|\r?\n[ \t])*)", re.I | re.M)


@dataclass(frozen=True, slots=True)
class Message:
    """
    One message as a side knows it; fields a source cannot tell are C{None}.

    @ivar key: what the side calls the message (an old UIDL; a Maildir base
        name, an mbox message's own UIDL, a PostgreSQL row id).
    @ivar uidl: the UIDL a client sees for it there.
    """

    key: str
    uidl: bytes
    size: int | None = None
    digest: str | None = None
    message_id: str | None = None


def message_id(data: bytes) -> str | None:
    """The Message-ID of a message (its header only), unfolded, or C{None}."""
    end = _HEADER_END.search(data)
    header = data[:end.start()] if end is not None else data
    match = _MESSAGE_ID.search(header)
    if match is None:
        return None
    value = re.sub(rb"\s+", b"", match.group(1))
    return value.decode("utf-8", "replace") or None


#: The header is looked at for a Message-ID up to this many octets.
MAX_HEADER = 256 << 10
_CHUNK = 1 << 16


class Digester:
    """
    The wire-form digest and size of a message fed in chunks of any size
    (a CRLF split across two chunks counts once, as in
    L{popgate.wire.WireSizer}), and its header kept for the Message-ID:
    a large message is never held whole.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._cr = False  # the last chunk ended with a CR not yet sent
        self._header = bytearray()
        self._in_header = True

    def add(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._in_header:
            self._header += chunk
            if _HEADER_END.search(self._header) or len(self._header) > MAX_HEADER:
                self._in_header = False
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        out = wire.to_crlf(chunk)
        self._hash.update(out)
        self._size += len(out)

    def message(self, key: str, uidl: bytes) -> Message:
        if self._cr:
            self._hash.update(b"\r")
            self._size += 1
            self._cr = False
        return Message(key, uidl, self._size, self._hash.hexdigest(),
                       message_id(bytes(self._header[:MAX_HEADER])))


def describe(key: str, uidl: bytes, data: bytes) -> Message:
    """A L{Message} from the full text of a message, in any line-end form."""
    digester = Digester()
    digester.add(data)
    return digester.message(key, uidl)


def describe_stream(key: str, uidl: bytes, read: Callable[[int], bytes]) -> Message:
    """L{describe} of a message read with C{read(n)} until C{b""}.  Blocking."""
    digester = Digester()
    while chunk := read(_CHUNK):
        digester.add(chunk)
    return digester.message(key, uidl)
