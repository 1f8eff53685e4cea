"""
A transport in front of the test server's protocol that sends replies the
way bad networks and slow servers do: in tiny TCP segments, late.

It sits between popgate's protocol and the TCP transport as a
L{ProtocolWrapper}, so the protocol is the real one, unchanged.  Writes are
queued and sent from reactor timers, one piece per timer, a millisecond
apart by default, with TCP_NODELAY set by the protocol: each piece leaves
as its own segment, and a client in the same process (another thread, the
same GIL) gets to read between them.  The
queue acts as a consumer, pausing the protocol's message producer while it
holds more than L{HIGH_WATER} octets.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

HIGH_WATER = 1 << 16
LOW_WATER = 1 << 14

_CLOSE = object()


class _Pending:
    __slots__ = ("data", "due")

    def __init__(self, data: bytes, due: float) -> None:
        self.data = data
        self.due = due


class ShapingProtocol(ProtocolWrapper):
    """
    Passes everything through unless the factory's faults ask for split
    writes or a delay (decided when the connection is made).

    A failed send makes popgate abort the connection; here that becomes a
    close after everything already written, so a client sees exactly the
    part of the reply that was sent before the drop.
    """

    factory: ShapingFactory
    # Set by makeConnection, before anything here runs.
    transport: ITransport

    def connectionMade(self) -> None:
        faults = self.factory.faults
        self._split: tuple[int, int] | None = faults.split_writes
        self._interval: float = faults.split_interval
        self._delay: float = faults.response_delay
        self._shaped = self._split is not None or self._delay > 0
        self._queue: deque[Any] = deque()
        self._queued = 0
        self._call: Any = None
        self._producer: Any = None
        self._streaming = True
        self._producer_paused = False
        self._lost = False
        self._random = random.Random(self.factory.seed)

    # -- the transport the protocol sees

    def write(self, data: bytes) -> None:
        if not self._shaped:
            super().write(data)
            return
        if self._lost or self.disconnecting or not data:
            return
        self._queue.append(_Pending(bytes(data), self.factory.clock.seconds() + self._delay))
        self._queued += len(data)
        if self._producer is not None and self._queued > HIGH_WATER and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()
        self._schedule()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self._shaped:
            super().loseConnection()
            return
        if self._lost or self.disconnecting:
            return
        self.disconnecting = 1
        self._queue.append(_CLOSE)
        self._schedule()

    def abortConnection(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self._shaped:
            super().registerProducer(producer, streaming)
            return
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        if not self._shaped:
            super().unregisterProducer()
            return
        self._producer = None

    # -- sending the queue

    def _schedule(self, delay: float = 0) -> None:
        if self._call is None and not self._lost:
            self._call = self.factory.clock.callLater(delay, self._pump)

    def _pump(self) -> None:
        self._call = None
        if self._lost:
            return
        while self._queue:
            item = self._queue[0]
            if item is _CLOSE:
                self._queue.clear()
                self.transport.loseConnection()
                return
            wait = item.due - self.factory.clock.seconds()
            if wait > 0:
                self._schedule(wait)
                return
            if self._split is None:
                piece, item.data = item.data, b""
            else:
                n = self._random.randint(*self._split)
                piece, item.data = item.data[:n], item.data[n:]
            self.transport.write(piece)
            self._queued -= len(piece)
            if not item.data:
                self._queue.popleft()
            self._wake_producer()
            if self._split is not None:
                if self._queue:
                    self._schedule(self._interval)
                return
        self._wake_producer()

    def _wake_producer(self) -> None:
        producer = self._producer
        if producer is None or self._queued > LOW_WATER:
            return
        if self._streaming:
            if self._producer_paused:
                self._producer_paused = False
                producer.resumeProducing()
        elif not self._queue:
            producer.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if getattr(self, "_shaped", False):
            self._lost = True
            self._queue.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
            producer, self._producer = self._producer, None
            if producer is not None:
                producer.stopProducing()
        super().connectionLost(reason)


class ShapingFactory(WrappingFactory):
    """Wraps the POP3 factory; keeps every open connection (in
    C{protocols}) so the server can close them all when it stops."""

    protocol = ShapingProtocol

    def __init__(self, wrapped: Any, faults: Any, clock: Any, seed: int | None = None) -> None:
        super().__init__(wrapped)
        self.faults = faults
        self.clock = clock
        self.seed = seed
        self._waiting: list[defer.Deferred[None]] = []

    def close_all(self) -> defer.Deferred[None]:
        """Drop every open connection; fires once all of them are gone."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        for wrapper in list(self.protocols):
            wrapper.transport.abortConnection()
        return d

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
