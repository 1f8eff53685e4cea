"""
One message being relayed from the upstream (RETR or TOP), for
popgate's sender: an L{IDeferredMessageSource} fed by the upstream
connection as its octets arrive.  From a POP3 upstream
(L{UpstreamMessage}) they are the reply's wire form
(L{IWireMessageSource}: still dot-stuffed, without the C{.} line), which
the sender passes on as they are; from an IMAP upstream
(L{StreamedMessage}) they are the message itself, which popgate's
encoder stuffs.

It holds at most about L{HIGH_WATER} octets: past that the upstream
socket is paused until popgate's client has taken them, so a slow client
never makes popgate hold a whole message.  Closed before the end (the
client left, or TOP's line budget was reached), it lets go of the reply:
the connection reads and drops the rest, and stays usable.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.interfaces import IDeferredMessageSource, IWireMessageSource

__all__ = ["HIGH_WATER", "StreamedMessage", "UpstreamMessage"]

#: Octets held before the upstream socket is paused: a few of the
#: sender's reads (L{popgate.pop3.output.CHUNK_SIZE}).
HIGH_WATER = 1024 * 1024


@implementer(IDeferredMessageSource)
class StreamedMessage:
    """
    A message's octets as an upstream connection hands them over.

    @param connection: the L{popgate.stores.pop3_upstream.UpstreamProtocol}
        or L{popgate.stores.imap_upstream.ImapProtocol} whose current
        reply this is (its C{pause}, C{resume} and C{abandon}).
    """

    blocking = False

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._held: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._failure: Failure | None = None
        self._waiting: defer.Deferred[bytes] | None = None
        self._want = 0
        self._closed = False

    # -- fed by the connection (L{popgate.stores.pop3_upstream.Sink})

    def data(self, octets: bytes) -> None:
        if self._closed:
            return
        self._held.append(octets)
        self._size += len(octets)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(self._take(self._want))
        elif self._size >= HIGH_WATER:
            self._connection.pause()

    def end(self) -> None:
        self._ended = True
        # The reply is all in: what is held is all there will be, and the
        # connection must read on (the next reply), paused or not.
        self._connection.resume()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(b"")

    def failed(self, failure: Failure) -> None:
        self._failure = failure
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(failure)

    @property
    def closed(self) -> bool:
        """The sender let go (the client left, or TOP has its lines)."""
        return self._closed

    # -- read by popgate's sender

    def read_deferred(self, size: int) -> defer.Deferred[bytes]:
        if self._held:
            return defer.succeed(self._take(size))
        if self._failure is not None:
            return defer.fail(self._failure)
        if self._ended or self._closed:
            return defer.succeed(b"")
        self._waiting = defer.Deferred()
        self._want = size
        self._connection.resume()
        return self._waiting

    def read(self, size: int = -1) -> bytes:
        """What is held (the rest comes through L{read_deferred})."""
        return self._take(self._size if size < 0 else size) if self._held else b""

    def _take(self, size: int) -> bytes:
        first = self._held[0]
        if len(first) <= size:
            self._held.popleft()
        else:
            self._held[0] = first[size:]
            first = first[:size]
        self._size -= len(first)
        if self._size < HIGH_WATER // 2 and not self._ended:
            self._connection.resume()
        return first

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held.clear()
        self._size = 0
        if not self._ended and self._failure is None:
            self._connection.abandon()


@implementer(IWireMessageSource)
class UpstreamMessage(StreamedMessage):
    """A POP3 upstream's RETR or TOP reply, in its wire form."""
