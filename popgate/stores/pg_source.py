"""
A message read out of C{popgate_chunks} a row at a time, for RETR and TOP.

The sender asks for at most C{size} octets per read; a row (256 KiB) is
fetched when the last one is used up, and what the client did not take
yet is kept, so the source never holds more than one row, however big the
message.  The first row comes with the open (one round trip for the
existence check and the first octets), and whatever is held is handed out
in the reactor thread (L{ICachedMessageSource.read_cached}): only a read
that needs the next row goes to a pool thread.
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from popgate import errors
from popgate.interfaces import ICachedMessageSource

__all__ = ["ChunkSource"]

#: C{fetch(message_id, seq)}: that row's octets, or C{None} if there is no
#: such row.  Blocking.
Fetch = Callable[[int, int], "bytes | None"]


@implementer(ICachedMessageSource)
class ChunkSource:
    """
    @param fetch: reads one row (on the session's connection).
    @param message_id: the message's C{popgate_messages.id}.
    @param size: its C{stored_size}: the octets to hand out in all; rows
        missing before that many were read mean the message was deleted
        under the session (which its lock should prevent).
    @param first: row 0 if the open read it already.
    """

    blocking = True

    def __init__(self, fetch: Fetch, message_id: int, size: int,
                 first: bytes | None = None) -> None:
        self._fetch = fetch
        self._id = message_id
        self._left = size
        self._held = memoryview(first or b"")
        self._seq = 0 if first is None else 1

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        if self._left <= 0 or size == 0:
            return b""
        if not self._held:
            data = self._fetch(self._id, self._seq)
            if not data:
                raise errors.TemporaryFailure(
                    f"message {self._id}: row {self._seq} is missing "
                    f"({self._left} octets unread): deleted meanwhile?")
            self._seq += 1
            self._held = memoryview(data)
        return self._take(size)

    def read_cached(self, size: int) -> bytes | None:
        if self._left <= 0 or size == 0:
            return b""
        if not self._held:
            return None
        return self._take(size)

    def _take(self, size: int) -> bytes:
        n = min(size, len(self._held), self._left)
        part, self._held = self._held[:n], self._held[n:]
        self._left -= n
        if self._left <= 0:
            self._held = memoryview(b"")  # a longer row than stored_size says: ignored
        return bytes(part)

    def close(self) -> None:
        self._held = memoryview(b"")
        self._left = 0
