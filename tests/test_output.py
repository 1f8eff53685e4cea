"""
The RETR sender (popgate.pop3.output): back-pressure, reads that finish
later (in a thread), failures after +OK, and where each source is read.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from popgate.interfaces import ICachedMessageSource, IMessageSource, IWireMessageSource
from popgate.pop3 import output
from popgate.pop3.encoder import encode_message
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.output import MessageSender, OutputGate, PoolReader, read_inline
from popgate.stores.sources import BytesSource
from popgate.wire import wire_size
from tests.helpers import connect, make_portal

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf


class Source:
    """A blocking source over bytes that records what was done to it."""

    blocking = True

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.reads = 0
        self.closed = 0
        self.fail_after = fail_after

    def read(self, size: int) -> bytes:
        assert not self.closed, "read after close"
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError(5, "I/O error")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed += 1


class LaterReader:
    """A reader whose reads finish when the test says (as from a thread)."""

    def __init__(self) -> None:
        self.pending: list[tuple[defer.Deferred[bytes], Any, int]] = []

    def __call__(self, source: Any, size: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.pending.append((d, source, size))
        return d

    def finish_one(self) -> None:
        d, source, size = self.pending.pop(0)
        try:
            data = source.read(size)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(data)


class Harness:
    def __init__(self, source: Any, reader: Any = read_inline, body_lines: int | None = None) -> None:
        self.out: list[bytes] = []
        self.gate = OutputGate(lambda: None, lambda: None, lambda: None)
        self.progress = 0
        self.source = source
        self.sender = MessageSender(self.gate, source, output.encoder_for(source, body_lines),
                                    self.write,
                                    self.tick, reader=reader)
        self.pause_after: int | None = None

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if self.pause_after is not None and len(self.out) >= self.pause_after:
            self.pause_after = None
            self.gate.pauseProducing()

    def tick(self) -> None:
        self.progress += 1

    def sent(self) -> bytes:
        return b"".join(self.out)


MESSAGE = b"".join(b"line %d\n.dot\n" % i for i in range(100_000))  # ~1.4 MB, 6 chunks


def test_inline_reads_send_the_whole_message() -> None:
    h = Harness(Source(MESSAGE))
    successResultOf(h.sender.start(b"+OK\r\n"))
    assert h.sent() == b"+OK\r\n" + encode_message([MESSAGE])
    assert h.source.closed == 1
    assert h.gate.child is None


def test_reads_that_finish_later() -> None:
    reader = LaterReader()
    h = Harness(Source(MESSAGE), reader)
    done = h.sender.start(b"+OK\r\n")
    chunks = 0
    while reader.pending:
        assert len(reader.pending) == 1  # never two reads at once
        reader.finish_one()
        chunks += 1
    successResultOf(done)
    assert chunks == len(MESSAGE) // output.CHUNK_SIZE + 2  # the last read says b""
    assert h.sent() == b"+OK\r\n" + encode_message([MESSAGE])
    assert h.source.closed == 1


def test_no_read_while_paused_and_one_chunk_held() -> None:
    reader = LaterReader()
    h = Harness(Source(MESSAGE), reader)
    done = h.sender.start(b"+OK\r\n")
    h.gate.pauseProducing()
    reader.finish_one()  # the read started before the pause lands
    assert not reader.pending  # ... and no other starts while paused
    assert h.sent() == b"+OK\r\n"  # held, not written
    h.gate.resumeProducing()
    assert len(h.out) == 2 and len(reader.pending) == 1
    while reader.pending:
        reader.finish_one()
    successResultOf(done)
    assert h.sent() == b"+OK\r\n" + encode_message([MESSAGE])


def test_pause_stops_inline_reads_until_resumed() -> None:
    h = Harness(Source(MESSAGE))
    h.pause_after = 2  # +OK and the first chunk: the transport is full
    done = h.sender.start(b"+OK\r\n")
    assert h.source.reads == 1 and not done.called
    h.gate.resumeProducing()
    successResultOf(done)
    assert h.sent() == b"+OK\r\n" + encode_message([MESSAGE])


def test_a_read_failure_after_ok_fails_done_and_closes() -> None:
    h = Harness(Source(MESSAGE, fail_after=2))
    failureResultOf(h.sender.start(b"+OK\r\n"), OSError)
    assert h.source.closed == 1
    assert h.gate.child is None


def test_a_later_read_failure_fails_done() -> None:
    reader = LaterReader()
    h = Harness(Source(MESSAGE, fail_after=1), reader)
    done = h.sender.start(b"+OK\r\n")
    reader.finish_one()
    reader.finish_one()
    failureResultOf(done, OSError)
    assert h.source.closed == 1


def test_connection_lost_during_a_read_closes_the_source_after_it() -> None:
    reader = LaterReader()
    h = Harness(Source(MESSAGE), reader)
    done = h.sender.start(b"+OK\r\n")
    h.gate.stopProducing()
    failureResultOf(done, ConnectionLost)
    assert h.source.closed == 0  # a thread may be reading it
    reader.finish_one()
    assert h.source.closed == 1 and not reader.pending


def test_many_chunks_that_complete_at_once_do_not_recurse() -> None:
    data = b"x" * (3000 * 16)
    h = Harness(Source(data))
    original = output.CHUNK_SIZE
    output.CHUNK_SIZE = 16
    try:
        successResultOf(h.sender.start(b"+OK\r\n"))
    finally:
        output.CHUNK_SIZE = original
    assert h.sent() == b"+OK\r\n" + data + b"\r\n.\r\n"


def test_top_stops_reading_at_its_limit() -> None:
    h = Harness(Source(b"H: v\n\nbody\n" + MESSAGE), body_lines=1)
    successResultOf(h.sender.start(b"+OK\r\n"))
    assert h.sent() == b"+OK\r\nH: v\r\n\r\nbody\r\n.\r\n"
    assert h.source.reads == 1


@implementer(IWireMessageSource)
class WireSource(Source):
    """A source whose octets are a reply's wire form (a proxied RETR)."""

    blocking = False


WIRE = b"".join(b"line %d\r\n..dot\r\n" % i for i in range(100_000))  # ~1.6 MB


@pytest.mark.parametrize("body_lines", [None, 1])
def test_a_wire_source_goes_out_as_it_is(body_lines: int | None) -> None:
    """Its chunks are written as they are read, not stuffed again, TOP's
    budget is the upstream's (nothing is cut), and the "." line ends it."""
    h = Harness(WireSource(WIRE), body_lines=body_lines)
    h.pause_after = 3  # back-pressure holds for it as for any source
    done = h.sender.start(b"+OK\r\n")
    assert not done.called and len(h.out) == 3
    h.gate.resumeProducing()
    successResultOf(done)
    assert h.sent() == b"+OK\r\n" + WIRE + b".\r\n"
    assert len(h.out) == 2 + -(-len(WIRE) // output.CHUNK_SIZE)  # +OK, chunks, "."
    assert h.source.closed == 1


def test_a_wire_source_without_a_final_crlf_still_ends_well() -> None:
    h = Harness(WireSource(b"x\r\ny"))
    successResultOf(h.sender.start(b"+OK\r\n"))
    assert h.sent() == b"+OK\r\nx\r\ny\r\n.\r\n"
    h = Harness(WireSource(b""))
    successResultOf(h.sender.start(b"+OK\r\n"))
    assert h.sent() == b"+OK\r\n.\r\n"


# -- where sources are read


class CountingPool:
    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
        self.calls += 1
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class CountingReactor:
    def __init__(self) -> None:
        self.pool = CountingPool()

    def getThreadPool(self) -> CountingPool:
        return self.pool

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


@implementer(ICachedMessageSource)
class Cached(Source):
    def __init__(self, data: bytes, cached: bool) -> None:
        super().__init__(data)
        self.cached = cached

    def read_cached(self, size: int) -> bytes | None:
        return self.read(size) if self.cached else None


@implementer(IMessageSource)
class Declared(Source):
    pass


@pytest.mark.parametrize(("source", "pooled"), [
    (BytesSource(b"abc"), False),          # never blocks: inline
    (Cached(b"abc", cached=True), False),  # in the page cache: inline
    (Cached(b"abc", cached=False), True),  # would wait for the disk
    (Declared(b"abc"), True),              # blocking, cannot tell
    (Source(b"abc"), True),                # no IMessageSource: assume it blocks
])
def test_pool_reader_reads_in_the_pool_only_what_may_block(source: Any, pooled: bool) -> None:
    reactor = CountingReactor()
    reader = PoolReader(reactor)  # type: ignore[arg-type]
    assert successResultOf(reader(source, 2)) == b"ab"
    assert reactor.pool.calls == (1 if pooled else 0)
    assert reader.pool_reads == (1 if pooled else 0)



# -- how a server's sessions read


@implementer(IReactorThreads)
class ThreadedClock(Clock):
    """A clock with a (counting) thread pool, as a reactor has."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = CountingPool()

    def getThreadPool(self) -> CountingPool:
        return self.pool

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)

    def callInThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass


def test_a_server_reads_messages_in_the_reactor_thread_pool() -> None:
    # On a reactor the factory gives every session a PoolReader, so RETR
    # reads what may wait for the disk in a pool thread; on a fake clock,
    # inline.
    clock = ThreadedClock()
    portal, store = make_portal()
    store.add_message("alice", MESSAGE)
    session = connect(portal, clock)  # type: ignore[arg-type]
    assert isinstance(session.protocol.reader, PoolReader)
    session.login()
    reply = session.send(b"RETR 1\r\n")
    assert reply == b"+OK %d octets\r\n" % wire_size(MESSAGE) + encode_message([MESSAGE])
    assert clock.pool.calls == 0  # a memory store's source never blocks
    assert POP3ServerFactory(portal, None, Clock()).buildProtocol(None).reader is read_inline


def test_retr_reads_through_the_session_reader() -> None:
    portal, store = make_portal()
    store.add_message("alice", MESSAGE)
    session = connect(portal)
    sizes: list[int] = []

    def reader(source: Any, size: int) -> defer.Deferred[bytes]:
        sizes.append(size)
        return read_inline(source, size)

    session.protocol.reader = reader
    session.login()
    reply = session.send(b"RETR 1\r\n")
    assert reply.endswith(b"\r\n.\r\n")
    assert sizes == [output.CHUNK_SIZE] * (len(MESSAGE) // output.CHUNK_SIZE + 2)
