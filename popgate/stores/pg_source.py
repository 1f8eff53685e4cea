"""
A message read out of C{popgate_chunks} a row at a time, for RETR and TOP.

The sender asks for at most C{size} octets per read; a row (256 KiB) is
fetched when the last one is used up, and what the client did not take
yet is kept, so the source never holds more than one row, however big the
message.  The first row comes with the open (one round trip for the
existence check and the first octets).  Rows are fetched on the session's
connection from the reactor thread without blocking it
(L{popgate.stores.pg_reactor}): the sender reads with
L{IDeferredMessageSource.read_deferred}, and what is held is handed out
at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeferredMessageSource

__all__ = ["ChunkSource"]

#: C{fetch(message_id, seq)}: a Deferred firing with that row's octets, or
#: C{None} if there is no such row.
Fetch = Callable[[int, int], "defer.Deferred[bytes | None]"]


@implementer(IDeferredMessageSource)
class ChunkSource:
    """
    @param fetch: reads one row (on the session's connection).
    @param message_id: the message's C{popgate_messages.id}.
    @param size: its C{stored_size}: the octets to hand out in all; rows
        missing before that many were read mean the message was deleted
        under the session (which its lock should prevent).
    @param first: row 0 if the open read it already.
    """

    blocking = False

    def __init__(self, fetch: Fetch, message_id: int, size: int,
                 first: bytes | None = None) -> None:
        self._fetch = fetch
        self._id = message_id
        self._left = size
        self._held = memoryview(first or b"")
        self._seq = 0 if first is None else 1

    def read_deferred(self, size: int) -> defer.Deferred[bytes]:
        held = self.read_cached(size)
        if held is not None:
            return defer.succeed(held)
        return self._fetch(self._id, self._seq).addCallback(self._arrived, size)

    def _arrived(self, data: bytes | None, size: int) -> bytes:
        if not data:
            raise errors.TemporaryFailure(
                f"message {self._id}: row {self._seq} is missing "
                f"({self._left} octets unread): deleted meanwhile?")
        self._seq += 1
        self._held = memoryview(data)
        return self._take(size)

    def read(self, size: int = -1) -> bytes:
        """What is held (the rows come through L{read_deferred})."""
        held = self.read_cached(1 << 30 if size < 0 else size)
        if held is None:
            raise errors.TemporaryFailure("the next row must be read with read_deferred")
        return held

    def read_cached(self, size: int) -> bytes | None:
        """What is held, at most C{size} octets; C{None} if the next row
        must be fetched first."""
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


def read_all(source: Any) -> defer.Deferred[bytes]:
    """All of C{source}'s octets (for tests and tools)."""
    parts: list[bytes] = []

    def more(part: bytes) -> Any:
        if not part:
            return b"".join(parts)
        parts.append(part)
        return source.read_deferred(1 << 20).addCallback(more)

    return cast("defer.Deferred[bytes]", source.read_deferred(1 << 20).addCallback(more))
