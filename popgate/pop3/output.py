"""
Back-pressure for everything a POP3 session writes.

A session registers one L{OutputGate} with its transport for its whole
life.  The transport pauses the gate when its write buffer is over its
bound (64 KiB for TCP) and resumes it once the buffer has drained; while
the gate is paused the session neither parses commands nor reads from the
socket.  So a client that pipelines thousands of commands and never reads
the answers makes the server hold at most one reply beyond the bound, for
single-line and multi-line replies alike, and a RETR being streamed
(L{MessageSender}) stops at the same signal.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.pop3.encoder import MessageEncoder

CHUNK_SIZE = 256 * 1024


@implementer(IPushProducer)
class OutputGate:
    """
    The one producer a session registers with its transport.

    @ivar blocked: the transport's write buffer is full: write nothing more
        than the reply being written, read nothing.
    @ivar child: the L{MessageSender} streaming a message, if any; it is
        paused and resumed with the gate.
    """

    def __init__(self, on_pause: Callable[[], object], on_resume: Callable[[], object],
                 on_stop: Callable[[], object]) -> None:
        self.blocked = False
        self.child: MessageSender | None = None
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_stop = on_stop

    def pauseProducing(self) -> None:
        self.blocked = True
        if self.child is not None:
            self.child.pauseProducing()
        self._on_pause()

    def resumeProducing(self) -> None:
        self.blocked = False
        if self.child is not None:
            self.child.resumeProducing()
        # The sender may have filled the buffer again.
        if not self.blocked:
            self._on_resume()

    def stopProducing(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stopProducing()
        self._on_stop()


@implementer(IPushProducer)
class MessageSender:
    """
    Streams one message through an L{OutputGate}: it reads and encodes a
    chunk at a time and stops whenever the gate is paused, so a slow client
    never makes the server hold a whole message.

    @param source: what the maildrop's C{open_message} returned: C{read(n)}
        and C{close()}.
    @param write: the transport's C{write}.
    @param progress: called after every chunk (the session's idle timer).
    """

    def __init__(self, gate: OutputGate, source: Any, encoder: MessageEncoder,
                 write: Callable[[bytes], object], progress: Callable[[], object]) -> None:
        self._gate = gate
        self._source = source
        self._encoder = encoder
        self._write = write
        self._progress = progress
        self._paused = False
        self._finished = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def start(self, first_line: bytes) -> defer.Deferred[None]:
        self._gate.child = self
        self._write(first_line)
        if self._gate.blocked:
            self._paused = True
        else:
            self.resumeProducing()
        return self.done

    def resumeProducing(self) -> None:
        self._paused = False
        write = self._write
        read = self._source.read
        encoder = self._encoder
        try:
            while not self._paused and not self._finished:
                chunk = read(CHUNK_SIZE)
                if not chunk or encoder.done:
                    self._finish(encoder.finish())
                    return
                out = encoder.encode(chunk)
                if out:
                    write(out)
                self._progress()
        except Exception:
            self._fail(Failure())

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        if not self._finished:
            self._fail(Failure(ConnectionLost("connection lost while sending")))

    def _detach(self) -> None:
        self._finished = True
        if self._gate.child is self:
            self._gate.child = None

    def _finish(self, tail: bytes) -> None:
        self._detach()
        self._write(tail)
        self._source.close()
        self.done.callback(None)

    def _fail(self, failure: Failure) -> None:
        self._detach()
        try:
            self._source.close()
        finally:
            self.done.errback(failure)
