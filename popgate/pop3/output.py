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

The sender reads through a I{reader} (L{PoolReader} in a server): chunks
that may wait for a disk are read in the reactor's thread pool, so one slow
disk never stalls the other sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.interfaces import (
    ICachedMessageSource,
    IDeferredMessageSource,
    IMessageSource,
    IWireMessageSource,
)
from popgate.pop3.encoder import MessageEncoder, WireEncoder

CHUNK_SIZE = 256 * 1024

log = Logger()

Encoder = MessageEncoder | WireEncoder


def encoder_for(source: Any, body_lines: int | None) -> Encoder:
    """
    The encoder of one RETR (C{body_lines} None) or TOP reply: for a
    source already in wire form (L{IWireMessageSource}: a proxied reply)
    one that passes its octets on, else one that converts line ends,
    stuffs dots and applies TOP's line budget.
    """
    if IWireMessageSource.providedBy(source):
        return WireEncoder()
    return MessageEncoder(body_lines)


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

    @property
    def paced(self) -> bool:
        """Only a message being streamed needs its writes paced by the
        transport's buffer (L{popgate.eager_writes}): a reply is one write."""
        return self.child is not None

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


Reader = Callable[[Any, int], "defer.Deferred[bytes]"]


def read_inline(source: Any, size: int) -> defer.Deferred[bytes]:
    """Read in the calling thread (the reactor's): for sources that never
    block, and for tests (a L{IDeferredMessageSource} by its own
    C{read_deferred})."""
    if IDeferredMessageSource.providedBy(source):
        return cast("defer.Deferred[bytes]", source.read_deferred(size))
    try:
        return defer.succeed(source.read(size))
    except Exception:
        return defer.fail()


class PoolReader:
    """
    Reads a message source where it says it may be read (see
    L{IMessageSource}): in the reactor thread if it never blocks, or if the
    page cache holds what comes next (L{ICachedMessageSource}); otherwise
    in the reactor's thread pool, so a slow disk stalls only the sessions
    reading from it.  A source that is no L{IMessageSource} (a file object
    from a third-party store) is read in the pool.

    @ivar cached_reads: reads served in the reactor thread by C{read_cached}.
    @ivar pool_reads: reads sent to the thread pool.
    """

    def __init__(self, reactor: IReactorThreads) -> None:
        self._reactor = reactor
        self.cached_reads = 0
        self.pool_reads = 0

    def __call__(self, source: Any, size: int) -> defer.Deferred[bytes]:
        if IDeferredMessageSource.providedBy(source):
            return cast("defer.Deferred[bytes]", source.read_deferred(size))
        if IMessageSource.providedBy(source) and not source.blocking:
            return read_inline(source, size)
        if ICachedMessageSource.providedBy(source):
            try:
                data = source.read_cached(size)
            except Exception:
                return defer.fail()
            if data is not None:
                self.cached_reads += 1
                return defer.succeed(data)
        self.pool_reads += 1
        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), source.read, size)


@implementer(IPushProducer)
class MessageSender:
    """
    Streams one message through an L{OutputGate}: it reads and encodes a
    chunk at a time and stops whenever the gate is paused, so a slow client
    never makes the server hold a whole message.  At most one chunk is
    being read or waiting to be sent; a read started before a pause is
    sent on resume.

    @param source: what the maildrop's C{open_message} gave: an
        L{IMessageSource} (or any object with C{read(n)} and C{close()}).
    @param encoder: from L{encoder_for}.
    @param write: the transport's C{write}.
    @param progress: called after every chunk (the session's idle timer).
    @param reader: C{reader(source, n)} reads one chunk, returning a
        L{defer.Deferred} (fired at once, or later from a thread): a
        L{PoolReader} in a server; by default the source is read inline.
    """

    def __init__(self, gate: OutputGate, source: Any, encoder: Encoder,
                 write: Callable[[bytes], object], progress: Callable[[], object],
                 reader: Reader = read_inline) -> None:
        self._gate = gate
        self._source = source
        self._encoder = encoder
        self._write = write
        self._progress = progress
        self._reader = reader
        self._paused = False
        self._finished = False
        self._reading = False  # a read is running; the source stays open for it
        self._pumping = False
        self._chunk: bytes | None = None  # read, not sent yet
        self.done: defer.Deferred[None] = defer.Deferred()

    def start(self, first_line: bytes) -> defer.Deferred[None]:
        self._gate.child = self
        self._write(first_line)
        self._paused = self._gate.blocked
        self._pump()
        return self.done

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        if not self._finished:
            self._fail(Failure(ConnectionLost("connection lost while sending")))

    def _pump(self) -> None:
        """Send chunks while the gate is open, reading each first.  Reads
        that complete at once are looped over here, not recursed into."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._finished and not self._paused:
                chunk, self._chunk = self._chunk, None
                if chunk is not None:
                    self._send(chunk)
                    continue
                if self._reading:
                    return  # _read_done pumps again
                self._reading = True
                try:
                    d = self._reader(self._source, CHUNK_SIZE)
                except Exception:
                    d = defer.fail()
                d.addCallbacks(self._read_done, self._read_failed)
                if self._chunk is None:
                    return  # still reading (or failed)
        except Exception:
            self._fail(Failure())
        finally:
            self._pumping = False

    def _read_done(self, chunk: bytes) -> None:
        self._reading = False
        if self._finished:
            self._close_source()  # held back while the read ran
            return
        self._chunk = chunk
        self._pump()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        if self._finished:
            self._close_source()  # the session is gone: nobody to tell
            return
        self._fail(failure)

    def _send(self, chunk: bytes) -> None:
        encoder = self._encoder
        if chunk:
            out = encoder.encode(chunk)
            if out:
                self._write(out)
            self._progress()
        if not chunk or encoder.done:
            self._finish(encoder.finish())

    def _detach(self) -> None:
        self._finished = True
        if self._gate.child is self:
            self._gate.child = None

    def _close_source(self) -> None:
        try:
            self._source.close()
        except Exception:
            log.failure("closing a message source")

    def _finish(self, tail: bytes) -> None:
        self._detach()
        self._write(tail)
        self._source.close()
        self.done.callback(None)

    def _fail(self, failure: Failure) -> None:
        self._detach()
        try:
            if not self._reading:
                self._source.close()
        finally:
            self.done.errback(failure)
