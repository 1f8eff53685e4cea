"""
The proxy store's upstream side in memory: the dot decoder and the wire
scanner (RETR's end, passed through) at every chunk edge, the upstream
POP3 client on a StringTransport and a Clock (replies,
-ERR codes, deadlines, a lost connection, back-pressure, an abandoned
reply), the maildrop's snapshot, QUIT and drop, and the argument string.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from popgate import errors
from popgate.interfaces import IDeferredMessageSource, IMailStore, ITopMaildrop
from popgate.pop3.encoder import encode_message
from popgate.pop3.output import MessageSender, OutputGate, encoder_for
from popgate.stores import pop3_upstream, proxy_source
from popgate.stores.pop3_dots import DotDecoder, WireScanner
from popgate.stores.pop3_upstream import UpstreamError, UpstreamProtocol, UpstreamUnavailable
from popgate.stores.proxy_auth import PasswordForwarder, UpstreamAvatarId, claim_upstream
from popgate.stores.proxy_connect import login_refusal
from popgate.stores.proxy_settings import parse_args, parse_upstream
from popgate.stores.proxy_source import UpstreamMessage
from popgate.stores.proxy_store import ProxyMaildrop, ProxyStore
from tests.pop3_oracle import normalized, wire

CORPUS = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . line\r\n.\r\n",
    b"Subject: open end\r\n\r\nno newline at the end\r\n",
    b"Subject: cr\r\n\r\none\rtwo\r\nthree\r\r\nfour\r\r\n",
    "Subject: 8\r\n\r\ncafé\r\n".encode() + bytes(range(128, 256)) + b"\r\n",
    b".\r\n",
    b"..\r\n.\r\n\r\n.x\r\n",
    b"",
]


def decode(chunks: list[bytes]) -> tuple[bytes, bytes]:
    decoder = DotDecoder()
    out, rest = [], b""
    for i, chunk in enumerate(chunks):
        data, rest = decoder.feed(chunk)
        out.append(data)
        if decoder.done:
            rest += b"".join(chunks[i + 1:])
            break
    assert decoder.done
    return b"".join(out), rest


@pytest.mark.parametrize("message", CORPUS)
def test_decoder_every_split(message: bytes) -> None:
    """The upstream's RETR body decodes to the message at any chunk edge,
    and popgate's encoder then gives the upstream's octets back."""
    body = wire(message) + b"+OK next"
    for cut in range(len(body) + 1):
        for cut2 in range(cut, min(cut + 4, len(body)) + 1):
            got, rest = decode([body[:cut], body[cut:cut2], body[cut2:]])
            assert got == message, (cut, cut2)
            assert rest == b"+OK next"
    assert encode_message([message]) == wire(message)


def test_decoder_bytewise_and_random() -> None:
    rng = random.Random(7)
    message = b"".join(rng.choice([b".", b"..", b"x", b"\r", b"\n", b"\r\n", b"\r\n."])
                       for _ in range(3000))
    message = normalized(message)  # what a server sends: CRLF lines
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    body = wire(message)
    assert decode([body[i:i + 1] for i in range(len(body))])[0] == message
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(body)), 20))
        chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)], strict=True)]
        assert decode(chunks)[0] == message


def scan(chunks: list[bytes]) -> tuple[bytes, bytes]:
    """What the scanner passes on, and what it leaves for the next reply."""
    scanner = WireScanner()
    out, rest = [], b""
    for i, chunk in enumerate(chunks):
        data, rest = scanner.feed(chunk)
        out.append(data)
        if scanner.done:
            rest += b"".join(chunks[i + 1:])
            break
    assert scanner.done, chunks
    return b"".join(out), rest


# Replies as servers send them (wire form, terminated), with the edges
# that matter: dot lines, "..", an empty message, a terminator-like line
# that is stuffed, bare CRs and bare LFs, which end no line.
WIRE_REPLIES = [wire(message) for message in CORPUS] + [
    b".\r\n",  # an empty message
    b"..\r\n.\r\n",  # a message that is one "." line
    b"\r\n.\r\n",  # one empty line
    b"...\r\n..\r\n\r\n.\r\n",
    b"a\n.\r\nb\r\n.\r\n",  # "\n.\r\n" ends nothing: a bare LF ends no line
    b"a\r.\r\n\r\n.\r\n",  # nor does "\r.\r\n"
    b"x\r\n.\r\r\n.\r\n",  # ".\r\r\n": a (stuffed) line, not the end
    b"x\r\n.\rx\r\n.\r\n",
    b"x\r\n.\r\n",
]


@pytest.mark.parametrize("reply", WIRE_REPLIES)
def test_scanner_every_split(reply: bytes) -> None:
    """Every split of a reply into three chunks (so the terminator is cut
    after each of its 1, 2, 3 and 4 first octets, and into pieces): the
    octets before ".\r\n" come out as they came, and what follows is left
    for the next reply."""
    body = reply + b"+OK next\r\n"
    for cut in range(len(body) + 1):
        for cut2 in range(cut, len(body) + 1):
            got, rest = scan([body[:cut], body[cut:cut2], body[cut2:]])
            assert got == reply[:-3], (cut, cut2)
            assert rest == b"+OK next\r\n", (cut, cut2)


def test_scanner_bytewise_and_random() -> None:
    rng = random.Random(11)
    message = b"".join(rng.choice([b".", b"..", b"x", b"\r", b"\n", b"\r\n", b"\r\n."])
                       for _ in range(3000))
    body = wire(message)
    assert scan([body[i:i + 1] for i in range(len(body))]) == (body[:-3], b"")
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(body)), 20))
        chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)], strict=True)]
        assert scan(chunks) == (body[:-3], b"")
        # And the client, un-stuffing it, gets what the decoder gets.
        assert decode(chunks)[0] == normalized(message) + (
            b"\r\n" if message and not normalized(message).endswith(b"\r\n") else b"")


def test_scanner_passes_whole_chunks_on() -> None:
    """No copy on the way: a chunk that ends no line start goes on as the
    same object; one that ends in ".\r" after a CRLF is held back."""
    scanner = WireScanner()
    chunk = b"Subject: x\r\n\r\n" + b"body line\r\n" * 1000
    assert scanner.feed(chunk)[0] is chunk
    assert scanner.feed(b"..dot\r\n.") == (b"..dot\r\n", b"")
    assert scanner.feed(b"\r") == (b"", b"")
    assert scanner.feed(b"\r\n") == (b".\r\r\n", b"")  # not the end: a stuffed line
    assert scanner.feed(b".\r\n+OK") == (b"", b"+OK")
    assert scanner.done


# -- the client

class Sink:
    def __init__(self) -> None:
        self.octets = b""
        self.ended = False
        self.failure: Failure | None = None

    def data(self, octets: bytes) -> None:
        self.octets += octets

    def end(self) -> None:
        self.ended = True

    def failed(self, failure: Failure) -> None:
        self.failure = failure


def connected(greeting: bytes = b"+OK ready\r\n") -> tuple[UpstreamProtocol, StringTransport,
                                                          Clock]:
    clock = Clock()
    protocol = UpstreamProtocol(clock, timeout=30, greeting_timeout=5)
    transport = StringTransport()
    protocol.makeConnection(transport)
    if greeting:
        protocol.dataReceived(greeting)
    return protocol, transport, clock


def sent(transport: StringTransport) -> bytes:
    value = transport.value()
    transport.clear()
    return value


def test_reads_the_upstream_in_big_pieces() -> None:
    """The TCP transport reads up to READ_SIZE at once (under TLS, the
    TCP transport beneath it); a transport without the knob is left alone."""
    tcp = StringTransport()
    tcp.bufferSize = 65536  # type: ignore[attr-defined]
    UpstreamProtocol(Clock(), timeout=30).makeConnection(tcp)
    assert tcp.bufferSize == pop3_upstream.READ_SIZE  # type: ignore[attr-defined]
    inner = StringTransport()
    inner.bufferSize = 65536  # type: ignore[attr-defined]
    tls = StringTransport()
    tls.transport = inner  # type: ignore[attr-defined]
    UpstreamProtocol(Clock(), timeout=30).makeConnection(tls)
    assert inner.bufferSize == pop3_upstream.READ_SIZE  # type: ignore[attr-defined]
    connected()  # a StringTransport: nothing to set


def test_commands_one_at_a_time() -> None:
    protocol, transport, _ = connected()
    assert protocol.greeting.result == b"ready"
    first = protocol.simple(b"USER bob")
    second = protocol.listing(b"UIDL")
    assert sent(transport) == b"USER bob\r\n"  # the second waits for the reply
    protocol.dataReceived(b"+OK hi\r\n+OK 2 messages\r\n")  # (an answer ahead of time)
    assert first.result == b"hi"
    assert sent(transport) == b"UIDL\r\n"
    protocol.dataReceived(b"1 abc\r\n2 d")
    assert not second.called
    protocol.dataReceived(b"ef\r\n.\r\n")
    assert second.result == [b"1 abc", b"2 def"]


def test_err_codes() -> None:
    protocol, transport, _ = connected()
    d = protocol.simple(b"PASS x")
    protocol.dataReceived(b"-ERR [IN-USE] locked\r\n")
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, UpstreamError) and failure.value.code == b"IN-USE"
    assert isinstance(login_refusal(failure.value, b"bob"), errors.MaildropInUse)
    assert isinstance(login_refusal(UpstreamError(b"[AUTH] no"), b"bob"), UnauthorizedLogin)
    assert isinstance(login_refusal(UpstreamError(b"no"), b"bob"), UnauthorizedLogin)
    assert isinstance(login_refusal(UpstreamError(b"[SYS/TEMP] db"), b"bob"),
                      errors.TemporaryFailure)


def test_greeting_deadline_and_lost() -> None:
    protocol, transport, clock = connected(greeting=b"")
    clock.advance(5)
    assert transport.disconnecting or transport.aborting if hasattr(transport, "aborting") \
        else True
    protocol.connectionLost(Failure(ConnectionError("gone")))
    failure = protocol.greeting.result
    protocol.greeting.addErrback(lambda _: None)
    assert isinstance(failure.value, UpstreamUnavailable)
    assert "no progress on the greeting" in str(failure.value)
    late = protocol.simple(b"NOOP")
    assert isinstance(late.result.value, UpstreamUnavailable)
    late.addErrback(lambda _: None)


def test_listing_cut_short_fails() -> None:
    protocol, transport, _ = connected()
    d = protocol.listing(b"UIDL")
    queued = protocol.simple(b"NOOP")
    protocol.dataReceived(b"+OK\r\n1 abc\r\n")
    protocol.connectionLost(Failure(ConnectionError("reset")))
    for waiting in (d, queued):
        assert isinstance(waiting.result.value, UpstreamUnavailable)
        waiting.addErrback(lambda _: None)


def test_command_deadline_resets_on_progress() -> None:
    protocol, transport, clock = connected()
    sink = Sink()
    d = protocol.stream(b"RETR 1", sink)
    protocol.dataReceived(b"+OK\r\nabc\r\n")
    assert d.called
    clock.advance(29)
    protocol.dataReceived(b"more\r\n")
    clock.advance(29)
    assert protocol.lost is None
    clock.advance(2)
    protocol.connectionLost(Failure(ConnectionError("aborted")))
    assert isinstance(sink.failure.value, UpstreamUnavailable)  # type: ignore[union-attr]
    assert sink.octets == b"abc\r\nmore\r\n"


def test_stream_pause_and_abandon() -> None:
    protocol, transport, clock = connected()
    source = UpstreamMessage(protocol)
    verifyObject(IDeferredMessageSource, source)
    d = protocol.stream(b"RETR 1", source)
    protocol.dataReceived(b"+OK\r\n")
    assert d.called
    chunk = b"x" * 1000 + b"\r\n"
    for _ in range(proxy_source.HIGH_WATER // len(chunk) + 1):
        protocol.dataReceived(chunk)
    assert transport.producerState == "paused"
    clock.advance(3600)  # no deadline while popgate's client is the slow one
    assert protocol.lost is None
    got = source.read_deferred(1 << 20).result
    assert len(got) == len(chunk)  # one arrival at a time, at most size
    while source._size > proxy_source.HIGH_WATER // 2:
        source.read_deferred(1 << 20)
    assert transport.producerState == "producing"
    # TOP's budget reached: the rest of the reply is read and dropped.
    source.close()
    after = protocol.simple(b"NOOP")
    assert sent(transport) == b"RETR 1\r\n"
    protocol.dataReceived(chunk + b".\r\n+OK noop\r\n")
    assert after.result == b"noop"
    assert sent(transport) == b"NOOP\r\n"


def test_a_reply_that_ends_while_paused_frees_the_connection() -> None:
    """The last octets of a big reply arrive with the sink past its high
    water: the connection is paused, and must not stay so once the reply
    is in, or the next reply (QUIT's) is never read (a CI rehearsal's
    QUIT through the proxy hung so)."""
    protocol, transport, _ = connected()
    source = UpstreamMessage(protocol)
    protocol.stream(b"RETR 1", source)
    protocol.dataReceived(b"+OK\r\n")
    chunk = b"x" * 1000 + b"\r\n"
    body = chunk * (proxy_source.HIGH_WATER // len(chunk) + 1)
    protocol.dataReceived(body + b".\r\n")  # the whole rest in one read
    got = b""
    while True:
        piece = source.read_deferred(1 << 18).result
        if not piece:
            break
        got += piece
    assert got == body
    assert transport.producerState == "producing"
    after = protocol.simple(b"QUIT")
    assert sent(transport) == b"RETR 1\r\nQUIT\r\n"
    protocol.dataReceived(b"+OK bye\r\n")
    assert after.result == b"bye"


def test_source_waits_for_data() -> None:
    protocol, transport, _ = connected()
    source = UpstreamMessage(protocol)
    protocol.stream(b"RETR 1", source)
    protocol.dataReceived(b"+OK\r\n")
    first = source.read_deferred(4)
    assert not first.called
    protocol.dataReceived(b"..abcdef\r\n")
    assert first.result == b"..ab"  # the wire form, passed through
    assert source.read_deferred(100).result == b"cdef\r\n"
    second = source.read_deferred(100)
    protocol.dataReceived(b".\r\n")
    assert second.result == b""


@pytest.mark.parametrize("cut", [b"abc\r\n", b"abc\r\n.", b"abc\r\n.\r", b"..x\r\n"])
def test_relayed_retr_cut_by_the_upstream_never_looks_finished(cut: bytes) -> None:
    """The upstream goes away before its end line (even in the middle of
    it): popgate's sender fails (its client is dropped), and what the
    client got does not end with a "." line."""
    protocol, transport, _ = connected()
    source = UpstreamMessage(protocol)
    protocol.stream(b"RETR 1", source)
    protocol.dataReceived(b"+OK\r\n" + cut)
    out: list[bytes] = []
    gate = OutputGate(lambda: None, lambda: None, lambda: None)
    sender = MessageSender(gate, source, encoder_for(source, None), out.append, lambda: None)
    done = sender.start(b"+OK 9 octets\r\n")
    protocol.connectionLost(Failure(ConnectionError("reset")))
    assert done.result.check(UpstreamUnavailable)
    done.addErrback(lambda _: None)
    assert not b"".join(out).endswith(b"\r\n.\r\n")


def test_relayed_retr_goes_out_as_the_upstream_sent_it() -> None:
    protocol, transport, _ = connected()
    source = UpstreamMessage(protocol)
    protocol.stream(b"RETR 1", source)
    protocol.dataReceived(b"+OK\r\n")
    out: list[bytes] = []
    gate = OutputGate(lambda: None, lambda: None, lambda: None)
    done = MessageSender(gate, source, encoder_for(source, None), out.append,
                         lambda: None).start(b"+OK 11 octets\r\n")
    for piece in (b"..a\r\nb\nc\r", b"\n\r\n.", b"\r", b"\n"):
        protocol.dataReceived(piece)
    assert done.result is None
    assert b"".join(out) == b"+OK 11 octets\r\n..a\r\nb\nc\r\n\r\n.\r\n"


# -- the maildrop

def logged_in(listing: bytes = b"+OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n"
              b"+OK\r\n1 120\r\n2 7340032\r\n.\r\n") -> tuple[ProxyMaildrop, StringTransport,
                                                          UpstreamProtocol]:
    protocol, transport, _ = connected()
    maildrop = ProxyMaildrop(protocol, "bob")
    d = defer.Deferred.fromCoroutine(maildrop.load())
    protocol.dataReceived(listing)
    assert d.called, d
    d.result  # noqa: B018 (raises if it failed)
    sent(transport)
    return maildrop, transport, protocol


def test_snapshot_and_retr() -> None:
    maildrop, transport, protocol = logged_in()
    verifyObject(ITopMaildrop, maildrop)
    assert [(m.uid, m.size) for m in maildrop.list_messages()] == [
        (b"uid-a", 120), (b"uid-b", 7340032)]
    d = maildrop.open_top(1, 0)
    assert sent(transport) == b"TOP 2 0\r\n"
    protocol.dataReceived(b"+OK\r\nSubject: x\r\n\r\n.\r\n")
    source = d.result
    assert source.read_deferred(100).result == b"Subject: x\r\n\r\n"
    assert source.read_deferred(100).result == b""
    gone = maildrop.open_message(0)
    protocol.dataReceived(b"-ERR no such message\r\n")
    assert gone.result.check(errors.PermanentFailure)
    gone.addErrback(lambda _: None)


@pytest.mark.parametrize("listing", [
    b"+OK\r\n1 a\r\n.\r\n+OK\r\n1 10\r\n2 20\r\n.\r\n",  # no UIDL for 2
    b"+OK\r\n1 a\r\n2 a\r\n.\r\n+OK\r\n1 10\r\n2 20\r\n.\r\n",  # the same UIDL twice
    b"+OK\r\nx a\r\n.\r\n+OK\r\n1 10\r\n.\r\n",  # no number
    b"-ERR no UIDL here\r\n+OK\r\n1 10\r\n.\r\n",
])
def test_unusable_snapshot(listing: bytes) -> None:
    protocol, transport, _ = connected()
    maildrop = ProxyMaildrop(protocol, "bob")
    d = defer.Deferred.fromCoroutine(maildrop.load())
    protocol.dataReceived(listing)
    assert d.result.check(errors.PermanentFailure)
    d.addErrback(lambda _: None)


def test_quit_deletes_then_waits_for_quit() -> None:
    maildrop, transport, protocol = logged_in()
    d = maildrop.commit([1, 0])
    assert sent(transport) == b"DELE 1\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"DELE 2\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"
    assert not d.called  # popgate's +OK waits for the upstream's
    protocol.dataReceived(b"+OK bye\r\n")
    assert d.result is None
    assert transport.disconnecting
    maildrop.close()  # after QUIT: nothing more
    assert sent(transport) == b""


def test_refused_dele_deletes_nothing() -> None:
    maildrop, transport, protocol = logged_in()
    d = maildrop.commit([0, 1])
    protocol.dataReceived(b"+OK\r\n-ERR [SYS/TEMP] nope\r\n")
    assert d.result.check(errors.TemporaryFailure)
    d.addErrback(lambda _: None)
    assert sent(transport) == b"DELE 1\r\nDELE 2\r\nRSET\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"


def test_quit_refused_upstream() -> None:
    maildrop, transport, protocol = logged_in()
    d = maildrop.commit([])
    protocol.dataReceived(b"-ERR [SYS/TEMP] could not expunge\r\n")
    assert d.result.check(errors.TemporaryFailure)
    d.addErrback(lambda _: None)


FOUR = (b"+OK\r\n1 a\r\n2 b\r\n3 c\r\n4 d\r\n.\r\n"
        b"+OK\r\n1 10\r\n2 20\r\n3 30\r\n4 40\r\n.\r\n")


def writes_of(transport: StringTransport) -> list[bytes]:
    writes: list[bytes] = []
    write = transport.write

    def recorded(data: bytes) -> None:
        writes.append(data)
        write(data)

    transport.write = recorded  # type: ignore[method-assign]
    return writes


def test_quit_pipelines_the_deles_if_the_upstream_offers_it() -> None:
    maildrop, transport, protocol = logged_in(FOUR)
    writes = writes_of(transport)
    d = maildrop.commit([3, 0, 1])
    assert sent(transport) == b"CAPA\r\n"
    protocol.dataReceived(b"+OK\r\nTOP\r\nPIPELINING\r\nUIDL\r\n.\r\n")
    assert writes[1:] == [b"DELE 1\r\nDELE 2\r\nDELE 4\r\n"]  # one write, before any reply
    sent(transport)
    protocol.dataReceived(b"+OK\r\n+OK\r\n")
    assert sent(transport) == b""  # QUIT only once every DELE said +OK
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"
    assert not d.called
    protocol.dataReceived(b"+OK bye\r\n")
    assert d.result is None


def test_a_refused_pipelined_dele_deletes_nothing() -> None:
    maildrop, transport, protocol = logged_in(FOUR)
    d = maildrop.commit([0, 1, 2])
    protocol.dataReceived(b"+OK\r\nPIPELINING\r\n.\r\n")
    assert sent(transport) == b"CAPA\r\nDELE 1\r\nDELE 2\r\nDELE 3\r\n"
    protocol.dataReceived(b"+OK\r\n-ERR [SYS/TEMP] nope\r\n")
    assert not d.called  # the third reply is still to come
    protocol.dataReceived(b"+OK\r\n")
    assert d.result.check(errors.TemporaryFailure)
    d.addErrback(lambda _: None)
    assert sent(transport) == b"RSET\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"


def test_upstream_lost_during_pipelined_deles() -> None:
    maildrop, transport, protocol = logged_in(FOUR)
    d = maildrop.commit([0, 1, 2])
    protocol.dataReceived(b"+OK\r\nPIPELINING\r\n.\r\n+OK\r\n")
    protocol.connectionLost(Failure(ConnectionError("reset")))
    assert d.result.check(UpstreamUnavailable)
    d.addErrback(lambda _: None)
    assert b"QUIT" not in transport.value()


@pytest.mark.parametrize("capa", [b"-ERR what?\r\n", b"+OK\r\nTOP\r\nUIDL\r\n.\r\n"])
def test_deles_one_at_a_time_without_pipelining(capa: bytes) -> None:
    maildrop, transport, protocol = logged_in(FOUR)
    d = maildrop.commit([0, 1, 2])
    assert sent(transport) == b"CAPA\r\n"
    protocol.dataReceived(capa)
    for n in (1, 2, 3):
        assert sent(transport) == b"DELE %d\r\n" % n
        protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert d.result is None


def test_drop_sends_no_dele() -> None:
    maildrop, transport, protocol = logged_in()
    maildrop.close()
    assert sent(transport) == b"RSET\r\n"
    protocol.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"QUIT\r\n"
    maildrop.close()  # idempotent


def test_drop_mid_reply_aborts() -> None:
    maildrop, transport, protocol = logged_in()
    maildrop.open_message(1)
    protocol.dataReceived(b"+OK\r\npartial")
    transport.abortConnection = lambda: setattr(transport, "aborted", True)  # type: ignore
    maildrop.close()
    assert getattr(transport, "aborted", False)
    assert b"DELE" not in transport.value() and b"QUIT" not in transport.value()


# -- credentials

class FakeStore:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.reactor = Clock()
        self.calls: list[tuple[str, bytes, bytes]] = []

    def log_in(self, name: str, user: bytes, password: bytes) -> defer.Deferred[Any]:
        self.calls.append((name, user, password))
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


def test_upstream_checker_hands_over_the_connection() -> None:
    from popgate.stores.proxy_auth import UpstreamChecker

    connection = object()
    store = FakeStore(connection)
    avatar = UpstreamChecker(store).requestAvatarId(
        UsernamePassword(b"Bob@Example.ORG", b"pw")).result
    assert avatar == "Bob@example.org"
    assert store.calls == [("Bob@example.org", b"Bob@Example.ORG", b"pw")]
    assert claim_upstream(avatar) is connection
    assert claim_upstream(avatar) is None  # once
    assert not store.reactor.getDelayedCalls()  # the unclaimed timer went with it


def test_store_checkers_by_mode() -> None:
    settings = parse_args("upstream=pop3://127.0.0.1:1")
    store = ProxyStore(settings, Clock())
    verifyObject(IMailStore, store)
    (own,) = store.checkers([])
    assert own.credentialInterfaces == (own.credentialInterfaces[0],)  # passwords only

    class Local:
        credentialInterfaces = ()

        def requestAvatarId(self, credentials: Any) -> Any:
            return defer.succeed("bob")

    (forwarder,) = store.checkers([Local()])
    assert isinstance(forwarder, PasswordForwarder)
    avatar = forwarder.requestAvatarId(UsernamePassword(b"bob", b"pw")).result
    assert isinstance(avatar, UpstreamAvatarId) and avatar.password == b"pw"
    assert "pw" not in repr(avatar)


def test_arguments(tmp_path: Any) -> None:
    assert parse_upstream("pop3s://mail.example.org").port == 995
    up = parse_upstream("pop3://127.0.0.1:1110?tls=starttls")
    assert (up.host, up.port, up.tls, up.server_name) == ("127.0.0.1", 1110, "starttls",
                                                           "127.0.0.1")
    for bad in ("imap://x", "pop3s://x?tls=starttls", "pop3://x?tls=yes", "pop3://:110",
                "pop3://u:p@x", "pop3://x/path", "pop3://x:99999"):
        with pytest.raises(ValueError):
            parse_upstream(bad)
    secret = tmp_path / "master"
    secret.write_bytes(b"s3cret\n")
    settings = parse_args(f"upstream=pop3://h,master_user=admin,master_password_file={secret},"
                          "command_timeout=5")
    assert settings.master_password == b"s3cret" and settings.command_timeout == 5
    assert "s3cret" not in repr(settings)
    for bad in ("upstream=pop3://h,master_user=admin", "upstream=pop3://h,command_timeout=0",
                "upstream=pop3://h,ca_file=/nonexistent", "ca_file=x"):
        with pytest.raises(ValueError):
            parse_args(bad)


def test_local_authentication_logs_in_as_master_or_with_the_password(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from popgate.stores import proxy_store

    calls: list[tuple[bytes, bytes]] = []

    async def log_in(reactor: Any, settings: Any, upstream: Any, user: bytes,
                     password: bytes) -> str:
        calls.append((user, password))
        return "connection"

    monkeypatch.setattr(proxy_store, "log_in", log_in)
    secret = tmp_path / "master"
    secret.write_text("m-pw\n")
    master = ProxyStore(parse_args(f"upstream=pop3://h,master_user=gw,"
                                   f"master_password_file={secret}"), Clock())
    plain = ProxyStore(parse_args("upstream=pop3://h"), Clock())

    def run(store: ProxyStore, avatar: str) -> Any:
        d = defer.Deferred.fromCoroutine(store.log_in_for(avatar))
        result = d.result
        d.addErrback(lambda _: None)
        return result

    assert run(master, "bob@example.org") == "connection"
    assert run(plain, UpstreamAvatarId("bob", password=b"own-pw")) == "connection"
    assert calls == [(b"bob@example.org*gw", b"m-pw"), (b"bob", b"own-pw")]
    assert run(plain, "bob").check(errors.PermanentFailure)  # no password to send
