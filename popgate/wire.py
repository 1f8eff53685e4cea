"""
The line-end rules of the POP3 wire, in one place.

A store keeps a message with LF or CRLF line ends; on the wire every line
ends with CRLF.  Only LF ends a line: a bare CR (one not followed by LF) is
sent as it is, the way Dovecot does.  So the wire form of a message is its
stored bytes with every LF that does not follow a CR turned into CRLF, and
its size (what STAT, LIST and C{RETR}'s C{+OK} report) is the length of
that, before dot-stuffing and without the terminating C{.} line, or the
CRLF a reply adds to a last line that has none.

Every store sizes messages with L{WireSizer} or L{wire_size}, the RETR
encoder (L{popgate.pop3.encoder}) converts with L{to_crlf}, and delivery
stores what it received with L{to_stored}, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Callable

_READ_CHUNK = 1 << 16


def to_crlf(data: bytes) -> bytes:
    """
    C{data} with every LF not after a CR turned into CRLF; bare CRs stay.
    A CR at the very end may be the first half of a CRLF split across
    chunks: a caller converting chunk by chunk holds it back (the encoder
    does).
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")  # LF-only storage: one pass
    if data.count(b"\n") == data.count(b"\r\n"):
        # Already CRLF (an IMAP literal, mail stored with CRLF): two
        # counting passes and no copy, instead of two replacing passes.
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_size(data: bytes) -> int:
    """The octet count of C{to_crlf(data)}, without building it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


class WireSizer:
    """
    L{wire_size} of a message fed in chunks of any size: the same total
    whatever the chunk edges (a CRLF split across two chunks counts once).
    """

    __slots__ = ("size", "_after_cr")

    def __init__(self) -> None:
        self.size = 0
        self._after_cr = False

    def add(self, chunk: bytes) -> None:
        if not chunk:
            return
        crlf = chunk.count(b"\r\n")
        if self._after_cr and chunk[0] == 0x0A:
            crlf += 1
        self.size += len(chunk) + chunk.count(b"\n") - crlf
        self._after_cr = chunk[-1] == 0x0D


def measure(read: Callable[[int], bytes]) -> int:
    """L{wire_size} of a stream, read with C{read(n)} until it returns
    C{b""}.  Blocking if C{read} is."""
    sizer = WireSizer()
    while chunk := read(_READ_CHUNK):
        sizer.add(chunk)
    return sizer.size


def to_stored(data: bytes) -> bytes:
    """
    A message received with CRLF line ends (LMTP DATA, already un-stuffed)
    in the form a Maildir or mbox keeps: LF line ends.  A message in which
    a line ends with a bare CR keeps its CRLFs instead: stored as
    C{\\r\\n}, C{\\r\\r\\n} would be served as C{\\r\\n}, so either way
    POP3 serves exactly the octets that were received.
    """
    if b"\r\r\n" in data:
        return data
    return data.replace(b"\r\n", b"\n")
