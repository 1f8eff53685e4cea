"""
The C{imap:} store's upstream side in memory: the IMAP client on a
StringTransport and a Clock (untagged and tagged responses, literals split
at every chunk edge, a streamed C{BODY[]}, NO/BAD and their codes,
continuations for literals, deadlines, a lost connection, back-pressure),
the maildrop's snapshot, TOP windows, QUIT with and without UIDPLUS, a
refused expunge, and the argument string.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popgate import errors
from popgate.pop3.encoder import encode_message
from popgate.stores.imap_connect import login_command, login_refusal
from popgate.stores.imap_store import ImapMaildrop, make_store, uid_sets
from popgate.stores.imap_upstream import (
    ImapError,
    ImapProtocol,
    MessageGone,
    UpstreamUnavailable,
    command_parts,
)
from popgate.stores.proxy_source import HIGH_WATER, StreamedMessage


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


GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready\r\n"


def connected(greeting: bytes = GREETING) -> tuple[ImapProtocol, StringTransport, Clock]:
    clock = Clock()
    protocol = ImapProtocol(clock, timeout=30, greeting_timeout=5)
    transport = StringTransport()
    protocol.makeConnection(transport)
    if greeting:
        protocol.dataReceived(greeting)
    return protocol, transport, clock


def sent(transport: StringTransport) -> bytes:
    value = transport.value()
    transport.clear()
    return value


def test_greeting_commands_and_untagged() -> None:
    protocol, transport, _ = connected()
    assert protocol.greeting.result == b"[CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready"
    assert protocol.capabilities == {b"IMAP4REV1", b"AUTH=PLAIN", b"SASL-IR"}
    first = protocol.command(b"EXAMINE INBOX")
    second = protocol.command(b"LOGOUT")
    assert sent(transport) == b"p1 EXAMINE INBOX\r\n"  # one at a time
    protocol.dataReceived(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 77] ok\r\np1 OK [READ-ONLY] done\r\n")
    assert first.result.untagged == [b"3 EXISTS", b"OK [UIDVALIDITY 77] ok"]
    assert first.result.text == b"[READ-ONLY] done"
    assert sent(transport) == b"p2 LOGOUT\r\n"
    protocol.dataReceived(b"* BYE bye\r\np2 OK [CAPABILITY IMAP4rev1 UIDPLUS] out\r\n")
    assert second.called and b"UIDPLUS" in protocol.capabilities


def test_no_and_bad_with_codes() -> None:
    protocol, transport, _ = connected()
    d = protocol.command(b"AUTHENTICATE PLAIN x", kind="auth")
    protocol.dataReceived(b"p1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    error = d.result.value
    d.addErrback(lambda _: None)
    assert isinstance(error, ImapError) and error.status == b"NO"
    assert error.code == b"AUTHENTICATIONFAILED"
    assert isinstance(login_refusal(error, b"bob"), UnauthorizedLogin)
    assert isinstance(login_refusal(ImapError(b"NO", b"[UNAVAILABLE] later"), b"bob"),
                      errors.TemporaryFailure)
    assert isinstance(login_refusal(ImapError(b"NO", b"[INUSE] busy"), b"bob"),
                      errors.MaildropInUse)
    bad = protocol.command(b"NONSENSE")
    protocol.dataReceived(b"p2 BAD what?\r\n")
    assert bad.result.value.status == b"BAD"
    bad.addErrback(lambda _: None)
    # A tag nobody sent: no IMAP server; the connection is dropped.
    protocol.dataReceived(b"zz OK hm\r\n")
    assert transport.disconnecting or transport.disconnected


FETCH_REPLY = (b"* 2 FETCH (UID 9 BODY[] {%d}\r\n%s UID 9)\r\n"
               b"* 3 EXISTS\r\np1 OK Fetch completed.\r\n")
MESSAGE = b"Subject: x\r\n\r\n.dot\r\n{3}\r\nbare\rcr\r\n* 1 FETCH\r\np1 OK fake"


def test_streamed_literal_at_every_chunk_edge() -> None:
    reply = FETCH_REPLY % (len(MESSAGE), MESSAGE)
    for cut in range(len(reply) + 1):
        for cut2 in (cut, min(cut + 1, len(reply)), min(cut + 7, len(reply))):
            protocol, transport, _ = connected()
            sink = Sink()
            d = protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", sink)
            for part in (reply[:cut], reply[cut:cut2], reply[cut2:]):
                protocol.dataReceived(part)
            assert d.result == len(MESSAGE), (cut, cut2)
            assert sink.octets == MESSAGE and sink.ended, (cut, cut2)
            assert not transport.disconnecting
            assert protocol.idle


def test_inline_literals_bytewise_and_random() -> None:
    """Small literals outside BODY[] stay in their response line."""
    reply = b'* 1 FETCH (UID 4 BODY[HEADER] {12}\r\nSubject: a\r\n FLAGS (\\Seen))\r\np1 OK x\r\n'
    rng = random.Random(3)
    for trial in range(60):
        protocol, _, _ = connected()
        d = protocol.command(b"UID FETCH 4 (BODY.PEEK[HEADER] FLAGS)")
        if trial == 0:
            chunks = [reply[i:i + 1] for i in range(len(reply))]
        else:
            cuts = sorted(rng.sample(range(1, len(reply)), 6))
            chunks = [reply[a:b] for a, b in zip([0] + cuts, cuts + [len(reply)], strict=True)]
        for chunk in chunks:
            protocol.dataReceived(chunk)
        assert d.result.untagged == [
            b"1 FETCH (UID 4 BODY[HEADER] {12}\r\nSubject: a\r\n FLAGS (\\Seen))"]


@pytest.mark.parametrize("reply", [
    b"p1 OK Fetch completed.\r\n",
    b"* 1 FETCH (UID 9 BODY[] NIL)\r\np1 OK Fetch completed.\r\n"])  # Dovecot, expunged
def test_fetch_without_a_body_is_message_gone(reply: bytes) -> None:
    protocol, _, _ = connected()
    sink = Sink()
    d = protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", sink)
    protocol.dataReceived(reply)
    assert d.result.check(MessageGone)
    d.addErrback(lambda _: None)


@pytest.mark.parametrize(("item", "octets"), [
    (b'BODY[] ""', b""), (b'BODY[]<0> "x"', b"x"), (b'BODY[] "a \\"q\\" \\\\ b"', b'a "q" \\ b')])
def test_a_body_sent_as_a_quoted_string(item: bytes, octets: bytes) -> None:
    protocol, _, _ = connected()
    sink = Sink()
    d = protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", sink)
    protocol.dataReceived(b"* 2 FETCH (UID 9 " + item + b")\r\np1 OK done\r\n")
    assert d.result == len(octets)
    assert sink.octets == octets and sink.ended


def test_a_huge_literal_outside_body_is_refused() -> None:
    protocol, transport, _ = connected()
    d = protocol.command(b"UID FETCH 1 (BODY.PEEK[HEADER])")
    protocol.dataReceived(b"* 1 FETCH (BODY[HEADER] {99999999}\r\n")
    assert transport.disconnecting or transport.disconnected
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert d.result.check(UpstreamUnavailable)
    d.addErrback(lambda _: None)


def test_literal_strings_wait_for_continuations() -> None:
    assert command_parts(b"LOGIN", b'b"o\\b', b"pw") == [b'LOGIN "b\\"o\\\\b" "pw"']
    parts = command_parts(b"LOGIN", "jörg".encode(), b"p\r\nw")
    assert parts == [b"LOGIN {5}", "jörg".encode() + b" {4}", b"p\r\nw"]
    protocol, transport, _ = connected()
    d = protocol.command(parts)
    assert sent(transport) == b"p1 LOGIN {5}\r\n"
    protocol.dataReceived(b"+ OK\r\n")
    assert sent(transport) == "jörg {4}\r\n".encode()
    protocol.dataReceived(b"+ OK\r\n")
    assert sent(transport) == b"p\r\nw\r\n"
    protocol.dataReceived(b"p1 OK Logged in\r\n")
    assert d.called


def test_octets_after_the_starttls_reply_are_refused() -> None:
    protocol, transport, _ = connected()
    started: list[Any] = []
    transport.startTLS = started.append  # type: ignore[attr-defined]
    refused: list[Failure] = []

    def ok(_: Any) -> None:
        try:
            protocol.start_tls("options")
        except UpstreamUnavailable:
            refused.append(Failure())

    protocol.command(b"STARTTLS").addCallback(ok)
    protocol.dataReceived(b"p1 OK Begin TLS negotiation now.\r\n* CAPABILITY IMAP4rev1\r\n")
    assert refused and not started
    clean, transport, _ = connected()
    transport.startTLS = started.append  # type: ignore[attr-defined]
    clean.command(b"STARTTLS").addCallback(lambda _: clean.start_tls("options"))
    clean.dataReceived(b"p1 OK Begin TLS negotiation now.\r\n")
    assert started == ["options"]


def test_login_command_choices() -> None:
    assert login_command({b"AUTH=PLAIN", b"SASL-IR"}, b"bob", b"pw") == (
        [b"AUTHENTICATE PLAIN AGJvYgBwdw=="], "auth")
    assert login_command({b"AUTH=PLAIN"}, b"gw", b"secret", b"bob") == (
        [b"AUTHENTICATE PLAIN", b"Ym9iAGd3AHNlY3JldA=="], "auth")
    assert login_command(set(), b"gw", b"s", b"bob") == ([b'LOGIN "bob*gw" "s"'], "simple")
    with pytest.raises(UpstreamUnavailable):
        login_command({b"LOGINDISABLED"}, b"bob", b"pw")


def test_deadline_and_lost_connection() -> None:
    protocol, transport, clock = connected()
    sink = Sink()
    d = protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", sink)
    queued = protocol.command(b"LOGOUT")
    protocol.dataReceived(b"* 2 FETCH (UID 9 BODY[] {100}\r\nabc")
    clock.advance(29)
    protocol.dataReceived(b"def")  # progress: the deadline starts again
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting or transport.disconnected
    protocol.connectionLost(Failure(ConnectionError("aborted")))
    assert d.result == 100 and sink.octets == b"abcdef"
    assert sink.failure is not None and sink.failure.check(UpstreamUnavailable)
    assert queued.result.check(UpstreamUnavailable)
    queued.addErrback(lambda _: None)
    late = protocol.command(b"NOOP")
    assert late.result.check(UpstreamUnavailable)
    late.addErrback(lambda _: None)


def test_back_pressure_and_abandon() -> None:
    protocol, transport, _ = connected()
    source = StreamedMessage(protocol)
    big = HIGH_WATER + 1000
    protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", source)
    protocol.dataReceived(b"* 2 FETCH (UID 9 BODY[] {%d}\r\n" % (big + 10))
    protocol.dataReceived(b"x" * big)
    assert transport.producerState == "paused"
    first = source.read_deferred(HIGH_WATER)
    assert len(first.result) == HIGH_WATER
    assert transport.producerState == "producing"
    source.close()  # the client left: the rest is read and dropped
    after = protocol.command(b"LOGOUT")
    protocol.dataReceived(b"y" * 10 + b")\r\np1 OK done\r\n")
    assert sent(transport).endswith(b"p2 LOGOUT\r\n")
    protocol.dataReceived(b"p2 OK bye\r\n")
    assert after.called


# -- the maildrop

class Server:
    """A scripted upstream: each command written gets its canned reply."""

    def __init__(self, replies: dict[bytes, bytes], capabilities: bytes = b"UIDPLUS") -> None:
        self.protocol, self.transport, _ = connected(
            b"* OK [CAPABILITY IMAP4rev1 %s] hi\r\n" % capabilities)
        self.replies = replies
        self.log: list[bytes] = []

    def run(self) -> None:
        while data := sent(self.transport):
            for line in data.split(b"\r\n")[:-1]:
                tag, _, command = line.partition(b" ")
                self.log.append(command)
                for key, reply in self.replies.items():
                    if command.startswith(key):
                        self.protocol.dataReceived(reply.replace(b"TAG", tag))
                        break
                else:
                    self.protocol.dataReceived(tag + b" OK done\r\n")


SNAPSHOT = {
    b"EXAMINE": b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\nTAG OK [READ-ONLY] x\r\n",
    b"SELECT": b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\nTAG OK [READ-WRITE] x\r\n",
    b"UID FETCH 1:*": b"* 1 FETCH (UID 4 RFC822.SIZE 10)\r\n* 2 FETCH (RFC822.SIZE 2000000"
                      b" UID 5)\r\n* 3 FETCH (UID 9 RFC822.SIZE 30)\r\n* 3 FETCH (FLAGS ())\r\n"
                      b"TAG OK x\r\n",
}


def load(server: Server) -> ImapMaildrop:
    from twisted.internet import defer

    maildrop = ImapMaildrop(server.protocol, "bob")
    d = defer.Deferred.fromCoroutine(maildrop.load())
    server.run()
    assert d.called and d.result is None, d.result
    return maildrop


def test_snapshot_uidls_and_empty() -> None:
    maildrop = load(Server(SNAPSHOT))
    assert [(m.uid, m.size) for m in maildrop.list_messages()] == [
        (b"1700.4", 10), (b"1700.5", 2000000), (b"1700.9", 30)]
    empty = Server({b"EXAMINE": b"* 0 EXISTS\r\n* OK [UIDVALIDITY 8] x\r\nTAG OK x\r\n"})
    assert load(empty).list_messages() == []
    assert empty.log == [b"EXAMINE INBOX"]  # no FETCH 1:* on an empty mailbox


def commit(server: Server, maildrop: ImapMaildrop, deleted: list[int]) -> Any:
    d = maildrop.commit(deleted)
    server.run()
    result = d.result if d.called else "pending"
    d.addErrback(lambda _: None)
    return result


def test_quit_with_uidplus_expunges_exactly_those() -> None:
    server = Server(SNAPSHOT)
    maildrop = load(server)
    assert commit(server, maildrop, [0, 2]) is None
    assert server.log[2:] == [b"SELECT INBOX", b"UID STORE 4,9 +FLAGS.SILENT (\\Deleted)",
                              b"UID EXPUNGE 4,9", b"LOGOUT"]


def test_quit_without_uidplus() -> None:
    others = {**SNAPSHOT, b"UID SEARCH DELETED": b"* SEARCH 5 9\r\nTAG OK x\r\n"}
    server = Server(others, capabilities=b"")
    maildrop = load(server)
    result = commit(server, maildrop, [2])
    assert isinstance(result, Failure) and result.check(errors.TemporaryFailure)
    assert b"EXPUNGE" not in server.log and not any(b"STORE" in c for c in server.log)
    mine = {**SNAPSHOT, b"UID SEARCH DELETED": b"* SEARCH 9\r\nTAG OK x\r\n"}
    server = Server(mine, capabilities=b"")
    maildrop = load(server)
    assert commit(server, maildrop, [2]) is None
    assert server.log[-3:] == [b"UID STORE 9 +FLAGS.SILENT (\\Deleted)", b"EXPUNGE", b"LOGOUT"]


def test_refused_expunge_takes_the_flags_back() -> None:
    server = Server({**SNAPSHOT, b"UID EXPUNGE": b"TAG NO [SERVERBUG] oops\r\n"})
    maildrop = load(server)
    result = commit(server, maildrop, [1])
    assert isinstance(result, Failure) and result.check(errors.TemporaryFailure)
    assert server.log[-2:] == [b"UID STORE 5 -FLAGS.SILENT (\\Deleted)", b"LOGOUT"]


def test_changed_uidvalidity_deletes_nothing() -> None:
    server = Server({**SNAPSHOT, b"SELECT": b"* OK [UIDVALIDITY 1701] x\r\nTAG OK x\r\n"})
    maildrop = load(server)
    result = commit(server, maildrop, [0])
    assert isinstance(result, Failure) and result.check(errors.TemporaryFailure)
    assert not any(b"STORE" in c for c in server.log)


def test_top_windows_stop_once_the_reader_has_enough() -> None:
    body = b"Subject: t\r\n\r\n" + b"line\r\n" * 200_000  # 1.2 MB
    server = Server({**SNAPSHOT, b"UID FETCH 5 (BODY.PEEK[]<0.65536>)":
                     b"* 2 FETCH (UID 5 BODY[]<0> {65536}\r\n" + body[:65536]
                     + b")\r\nTAG OK x\r\n"})
    maildrop = load(server)
    d = maildrop.open_top(1, 3)
    server.run()
    source = d.result
    got = source.read_deferred(1 << 20).result
    assert encode_message([got], 3) == b"Subject: t\r\n\r\nline\r\nline\r\nline\r\n.\r\n"
    source.close()
    server.run()
    assert [c for c in server.log if c.startswith(b"UID FETCH 5")] == [
        b"UID FETCH 5 (BODY.PEEK[]<0.65536>)"]  # the next window was never asked for
    # A reader that wants more gets the next window, twice as large.
    d = maildrop.open_top(1, 10**6)
    server.run()
    source = d.result
    assert len(source.read_deferred(1 << 20).result) == 65536
    source.read_deferred(1 << 20)
    server.run()
    assert server.log[-1] == b"UID FETCH 5 (BODY.PEEK[]<65536.131072>)"
    source.close()
    server.run()
    # A reader already waiting when a window ends gets the next at once.
    d = maildrop.open_top(1, 10**6)
    tag = sent(server.transport).split(b" ")[0]
    server.protocol.dataReceived(b"* 2 FETCH (UID 5 BODY[]<0> {65536}\r\n" + body[:65536])
    source = d.result
    assert len(source.read_deferred(1 << 20).result) == 65536
    waiting = source.read_deferred(1 << 20)
    server.protocol.dataReceived(b")\r\n" + tag + b" OK x\r\n")
    assert sent(server.transport).endswith(b" UID FETCH 5 (BODY.PEEK[]<65536.131072>)\r\n")
    assert not waiting.called
    source.close()


def test_a_message_gone_upstream_is_sys_perm() -> None:
    server = Server({**SNAPSHOT, b"UID FETCH 4 ": b"TAG OK Fetch completed.\r\n",
                     b"UID FETCH 9 ": b"TAG NO [SERVERBUG] broken\r\n"})
    maildrop = load(server)
    for d in (maildrop.open_message(0), maildrop.open_top(0, 1), maildrop.open_message(2)):
        server.run()
        assert d.result.check(errors.PermanentFailure)
        d.addErrback(lambda _: None)


def test_drop_logs_out_without_changes() -> None:
    server = Server(SNAPSHOT)
    maildrop = load(server)
    maildrop.close()
    server.run()
    assert server.log[-1] == b"LOGOUT"
    assert not any(b"STORE" in c or b"SELECT" in c for c in server.log)


def test_uid_sets() -> None:
    assert uid_sets([9, 1, 2, 3, 5, 6]) == [b"1:3,5:6,9"]
    sets = uid_sets(range(1, 20000, 2))
    assert len(sets) > 1 and all(len(s) <= 4100 for s in sets)
    assert sorted(int(x) for s in sets for x in s.split(b",")) == list(range(1, 20000, 2))


def test_arguments(tmp_path: Any) -> None:
    store = make_store("upstream=imaps://mail.example.org", None)
    assert store.settings.upstream.port == 993 and store.settings.upstream.tls == "implicit"
    up = make_store("upstream=imap://127.0.0.1:1143?tls=starttls", None).settings.upstream
    assert (up.port, up.tls, up.url) == (1143, "starttls", "imap://127.0.0.1:1143?tls=starttls")
    assert make_store("upstream=imap://h", None).settings.upstream.port == 143
    for bad in ("upstream=pop3://h", "upstream=imaps://h?tls=starttls", "upstream=imap://"):
        with pytest.raises(ValueError, match="imap:"):
            make_store(bad, None)
    assert store.route("bob").result is store.settings.upstream


def test_an_imap_literal_is_stuffed_by_the_encoder_not_passed_through() -> None:
    """An IMAP BODY[] is the message itself, not a POP3 wire form: a dot
    line in it must be stuffed (a POP3 reply passes through as it is)."""
    from popgate.interfaces import IWireMessageSource
    from popgate.pop3.encoder import MessageEncoder
    from popgate.pop3.output import encoder_for

    protocol, _, _ = connected()
    source = StreamedMessage(protocol)
    assert not IWireMessageSource.providedBy(source)
    encoder = encoder_for(source, None)
    assert isinstance(encoder, MessageEncoder)
    assert encoder.encode(b".dot\n") + encoder.finish() == b"..dot\r\n.\r\n"


def test_a_literal_that_ends_while_paused_frees_the_connection() -> None:
    """As for a POP3 upstream: the literal's last octets and the tagged OK
    arrive with the sink past its high water; once it is all in, the
    connection reads on (the next command's reply)."""
    protocol, transport, _ = connected()
    source = StreamedMessage(protocol)
    big = HIGH_WATER + 1000
    protocol.stream(b"UID FETCH 9 (BODY.PEEK[])", source)
    protocol.dataReceived(b"* 2 FETCH (UID 9 BODY[] {%d}\r\n" % big + b"x" * big
                          + b")\r\np1 OK done\r\n")
    got = 0
    while piece := source.read_deferred(1 << 18).result:
        got += len(piece)
    assert got == big
    assert transport.producerState == "producing"
    after = protocol.command(b"LOGOUT")
    protocol.dataReceived(b"p2 OK bye\r\n")
    assert after.called
