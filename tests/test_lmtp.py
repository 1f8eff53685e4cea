"""
The LMTP server through StringTransport and a Clock: every command,
pipelining, one reply per recipient after DATA, unknown users at RCPT
time, temporary failures, the SIZE limit, dot-unstuffing, and input that
must not crash it.
"""

from __future__ import annotations

import errno
import os
import poplib
import random
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.cred.userinfo import UserInfo
from popgate.delivery import message as trace
from popgate.delivery.lmtp import MAX_BAD_COMMANDS, LMTPServerProtocol
from popgate.delivery.lmtp_factory import LMTPFactory
from popgate.delivery.service import lmtp_factory
from popgate.delivery.users import UserResolver, candidate_names
from popgate.interfaces import IDeliveryTarget, IUserLookup
from popgate.maildrop import wire_size
from popgate.stores.maildir import MaildirStore
from popgate.stores.maildir_scan import scan
from popgate.stores.memory import MemoryStore
from tests.helpers import InlineReactor
from tests.ldap_server import USERS as LDAP_USERS
from tests.ldap_server import LDAPServer, ldap_server, local_slapd  # noqa: F401  (fixtures)
from tests.popgate_server import REPO, PopgateProcess, child_env, free_port

LHLO_REPLY = (b"250-mx.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
              b"250 SIZE 10000\r\n")


@implementer(IUserLookup)
class Users:
    """A user store: known names, optionally failing or answering later."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.failing = False
        self.pending: list[tuple[defer.Deferred[Any], str]] = []
        self.hold = False
        self.asked: list[str] = []

    def lookup_user(self, name: str) -> defer.Deferred[UserInfo | None]:
        self.asked.append(name)
        if self.failing:
            return defer.fail(errors.TemporaryFailure("directory down"))
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append((d, name))
            return d
        return defer.succeed(UserInfo(name) if name in self.names else None)

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for d, name in pending:
            d.callback(UserInfo(name) if name in self.names else None)


@implementer(IDeliveryTarget)
class Target:
    """A delivery target that records, fails on demand, or waits."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes, str | None]] = []
        self.fail: dict[str, BaseException] = {}
        self.hold = False
        self.pending: list[defer.Deferred[None]] = []

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[None]:
        if user in self.fail:
            return defer.fail(self.fail[user])
        if self.hold:
            d: defer.Deferred[None] = defer.Deferred()
            d.addCallback(lambda _: self.delivered.append((user, message, sender)))
            self.pending.append(d)
            return d
        self.delivered.append((user, message, sender))
        return defer.succeed(None)


class Session:
    def __init__(self, factory: LMTPFactory) -> None:
        self.protocol: LMTPServerProtocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out


@pytest.fixture
def users() -> Users:
    return Users("alice", "bob")


@pytest.fixture
def target() -> Target:
    return Target()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(target: Target, users: Users, clock: Clock) -> LMTPFactory:
    return LMTPFactory(target, users, "mx.test", clock=clock, max_message_size=10000)


@pytest.fixture
def session(factory: LMTPFactory) -> Session:
    s = Session(factory)
    assert s.take() == b"220 mx.test LMTP popgate ready\r\n"
    return s


def test_lhlo_lists_the_extensions(session):
    assert session.send(b"LHLO client.test\r\n") == LHLO_REPLY


def test_lhlo_needs_an_argument_and_helo_ehlo_are_refused(session):
    assert session.send(b"LHLO\r\n") == b"501 5.5.4 Syntax: LHLO hostname\r\n"
    assert session.send(b"HELO x\r\n") == b"500 5.5.1 This is LMTP: use LHLO\r\n"
    assert session.send(b"EHLO x\r\n") == b"500 5.5.1 This is LMTP: use LHLO\r\n"


def test_mail_needs_lhlo(session):
    assert session.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Send LHLO first\r\n"


def test_a_whole_transaction_pipelined_in_one_write(session, target):
    reply = session.send(
        b"LHLO c\r\nMAIL FROM:<sender@example.org> BODY=8BITMIME SIZE=40\r\n"
        b"RCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert reply == LHLO_REPLY + (
        b"250 2.1.0 OK\r\n"
        b"250 2.1.5 <alice@example.test> OK\r\n"
        b"250 2.1.5 <bob@example.test> OK\r\n"
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        b"250 2.0.0 <alice@example.test> Delivered\r\n"
        b"250 2.0.0 <bob@example.test> Delivered\r\n"
        b"221 2.0.0 Bye\r\n")
    assert session.transport.disconnecting
    assert target.delivered == [
        ("alice", b"Return-Path: <sender@example.org>\nDelivered-To: alice@example.test\n"
                  b"Subject: hi\n\nbody\n", "sender@example.org"),
        ("bob", b"Return-Path: <sender@example.org>\nDelivered-To: bob@example.test\n"
                b"Subject: hi\n\nbody\n", "sender@example.org"),
    ]


def test_the_same_session_fed_one_byte_at_a_time(session, target):
    data = (b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n"
            b"a\r\n..b\r\n..\r\n\r\n.\r\nNOOP\r\n")
    out = b""
    for i in range(len(data)):
        out += session.send(data[i:i + 1])
    assert out.endswith(b"250 2.0.0 <alice> Delivered\r\n250 2.0.0 OK\r\n")
    assert target.delivered[0][1].endswith(b"\na\n.b\n.\n\n")


def test_unknown_user_is_refused_at_rcpt_time(session, target):
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<nobody@example.test>\r\n"
                         b"RCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\n")
    assert b"550 5.1.1 <nobody@example.test> User unknown\r\n" in reply
    # one reply after the data, for the one accepted recipient
    assert reply.endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
                          b"250 2.0.0 <alice@example.test> Delivered\r\n")
    assert [d[0] for d in target.delivered] == ["alice"]


def test_data_without_accepted_recipients_is_refused(session):
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<nobody>\r\nDATA\r\n")
    assert reply.endswith(b"550 5.1.1 <nobody> User unknown\r\n503 5.5.1 No valid recipients\r\n")
    assert session.send(b"DATA\r\n") == b"503 5.5.1 No valid recipients\r\n"
    assert session.send(b"RSET\r\nDATA\r\n") == b"250 2.0.0 OK\r\n503 5.5.1 Need MAIL command\r\n"


def test_lookup_outage_is_a_temporary_failure(session, users):
    users.failing = True
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@example.test>\r\n")
    assert reply.endswith(
        b"451 4.3.0 <alice@example.test> Temporary user lookup failure, try again later\r\n")


def test_replies_wait_for_a_slow_lookup_and_stay_in_order(session, users):
    users.hold = True
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nNOOP\r\n")
    assert reply == LHLO_REPLY + b"250 2.1.0 OK\r\n"
    assert users.asked == ["alice"]  # nothing after the waiting command was parsed
    users.release()
    assert session.take() == b"250 2.1.5 <alice> OK\r\n"
    users.release()
    assert session.take() == b"250 2.1.5 <bob> OK\r\n250 2.0.0 OK\r\n"


def test_read_ahead_is_bounded_while_a_command_waits(session, users):
    users.hold = True
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\n")
    assert session.transport.producerState == "producing"
    session.send(b"NOOP\r\n" * 20000)
    assert session.transport.producerState == "paused"
    users.release()
    assert session.transport.producerState == "producing"
    assert session.take().count(b"250 2.0.0 OK\r\n") == 20000


def test_no_reply_before_the_message_is_durable(session, target):
    target.hold = True
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\n"
                         b"DATA\r\nx\r\n.\r\nQUIT\r\n")
    assert reply.endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
    target.pending[0].callback(None)
    assert session.take() == b"250 2.0.0 <alice> Delivered\r\n"
    assert not session.transport.disconnecting
    target.pending[1].callback(None)
    assert session.take() == b"250 2.0.0 <bob> Delivered\r\n221 2.0.0 Bye\r\n"


@pytest.mark.parametrize(("failure", "reply"), [
    (errors.TemporaryFailure("lock timeout"), b"451 4.3.0 <bob> Temporary failure, try again later"),
    (errors.PermanentFailure("corrupt"), b"554 5.3.0 <bob> Mailbox unavailable"),
    (errors.InvalidUserName("bad"), b"550 5.1.3 <bob> Bad destination mailbox address"),
    (RuntimeError("bug"), b"451 4.3.0 <bob> Local error, try again later"),
])
def test_store_failures_are_per_recipient(session, target, failure, reply):
    target.fail["bob"] = failure
    out = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\n"
                       b"DATA\r\nx\r\n.\r\nNOOP\r\n")
    assert out.endswith(b"250 2.0.0 <alice> Delivered\r\n" + reply + b"\r\n250 2.0.0 OK\r\n")


def _failure_from(code: int) -> errors.TemporaryFailure:
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError as e:
            raise errors.TemporaryFailure("disk") from e
    except errors.TemporaryFailure as e:
        return e


@pytest.mark.parametrize(("code", "status"), [(errno.ENOSPC, b"452 4.3.1"), (errno.EDQUOT, b"452 4.2.2")])
def test_disk_full_and_quota_have_their_own_codes(session, target, code, status):
    target.fail["alice"] = _failure_from(code)
    out = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n")
    assert out.endswith(status + b" <alice> Temporary failure, try again later\r\n")


def test_size_parameter_over_the_limit(session):
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x> SIZE=10001\r\nMAIL FROM:<s@x> SIZE=x\r\n")
    assert reply.endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
                          b"501 5.5.4 Bad SIZE parameter\r\n")


def test_message_over_the_limit_gets_552_per_recipient_and_the_session_goes_on(session, target):
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nDATA\r\n")
    reply = session.send((b"y" * 998 + b"\r\n") * 11 + b".\r\n")
    assert reply == b"552 5.3.4 <alice> Message too big\r\n552 5.3.4 <bob> Message too big\r\n"
    assert target.delivered == []
    assert session.send(b"MAIL FROM:<s@x>\r\n") == b"250 2.1.0 OK\r\n"


def test_dot_unstuffing_and_the_end_of_data(session, target):
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    body = (b"..\r\n"          # a line that is one dot
            b"...two\r\n"      # starts with two dots
            b".x\r\n"          # a dot that was not stuffed: dropped, as RFC 5321 says
            b"a.\r\nb\n.\nc\r\n"  # bare LF ".": data, never the end (SMTP smuggling)
            b"\r\n.\r\n")
    assert session.send(body) == b"250 2.0.0 <alice> Delivered\r\n"
    stored = target.delivered[0][1].split(b"\n", 2)[2]
    assert stored == b".\n..two\nx\na.\nb\n.\nc\n\n"


def test_an_empty_message(session, target):
    session.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    assert session.send(b".\r\n") == b"250 2.0.0 <alice> Delivered\r\n"
    assert target.delivered == [("alice", b"Return-Path: <>\nDelivered-To: alice\n", "")]


def test_lines_ending_in_a_bare_cr_keep_the_message_exact(session, target):
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    session.send(b"Subject: cr\r\n\r\nends in cr\r\r\n.\r\n")
    stored = target.delivered[0][1]
    assert stored == (b"Return-Path: <s@x>\r\nDelivered-To: alice\r\n"
                      b"Subject: cr\r\n\r\nends in cr\r\r\n")


def test_long_message_lines_are_kept_whole(session, target):
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    factory_limit = session.protocol.factory.max_message_size
    session.protocol.factory.max_message_size = 10_000_000
    line = b"." + b"z" * 300_000 + b"\r\n"
    for i in range(0, len(line), 4096):
        session.send(line[i:i + 4096])
    session.send(b".\r\n")
    session.protocol.factory.max_message_size = factory_limit
    assert target.delivered[0][1].endswith(b"\n" + b"z" * 300_000 + b"\n")


def test_overlong_command_line_is_refused_and_the_session_goes_on(session):
    reply = session.send(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n")
    assert reply == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    reply = session.send(b"NOOP " + b"x" * 3000)
    assert reply == b"500 5.5.2 Line too long\r\n"
    assert session.send(b"x" * 3000 + b"\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_rset_noop_vrfy_and_unknown_commands(session, target):
    assert session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRSET\r\n").endswith(
        b"250 2.0.0 OK\r\n")
    assert session.send(b"DATA\r\n") == b"503 5.5.1 Need MAIL command\r\n"
    assert session.send(b"noop\r\n") == b"250 2.0.0 OK\r\n"
    assert session.send(b"VRFY alice\r\n").startswith(b"252 2.5.0 ")
    assert session.send(b"STARTTLS\r\n") == b"500 5.5.2 Command not recognized\r\n"
    assert session.send(b"\xff\xfe\r\n") == b"500 5.5.2 Command not recognized\r\n"


def test_rcpt_before_mail_and_nested_mail(session):
    assert session.send(b"LHLO c\r\nRCPT TO:<alice>\r\n").endswith(b"503 5.5.1 Need MAIL command\r\n")
    assert session.send(b"MAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n") == \
        b"250 2.1.0 OK\r\n503 5.5.1 Nested MAIL command\r\n"


@pytest.mark.parametrize(("command", "reply"), [
    (b"MAIL FROM:a@b", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
    (b"MAIL TO:<a@b>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
    (b"MAIL FROM:<a@b> FOO=1", b"555 5.5.4 Unsupported parameter"),
    (b"MAIL FROM:<a@b> BODY=BINARYMIME", b"501 5.5.4 Bad BODY parameter"),
    (b"MAIL FROM:<\xff@b>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
    (b"MAIL from: <a@b>", b"250 2.1.0 OK"),
    (b"MAIL FROM:<@route,@r2:a@b>", b"250 2.1.0 OK"),
])
def test_mail_from_syntax(session, command, reply):
    session.send(b"LHLO c\r\n")
    assert session.send(command + b"\r\n") == reply + b"\r\n"


@pytest.mark.parametrize(("command", "reply"), [
    (b"RCPT TO:<>", b"501 5.1.3 Bad recipient address syntax"),
    (b"RCPT TO:alice", b"501 5.5.4 Syntax: RCPT TO:<address>"),
    (b"RCPT TO:<alice> NOTIFY=NEVER", b"555 5.5.4 Unsupported parameter"),
    (b"RCPT TO:<al\x01ice>", b"501 5.5.4 Syntax: RCPT TO:<address>"),
])
def test_rcpt_to_syntax(session, command, reply):
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\n")
    assert session.send(command + b"\r\n") == reply + b"\r\n"


def test_too_many_bad_commands_close_the_connection(session):
    reply = session.send(b"BOGUS\r\n" * MAX_BAD_COMMANDS + b"NOOP\r\n")
    assert reply.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
    assert session.transport.disconnecting
    assert b"250" not in reply


def test_idle_timeout(session, clock):
    clock.advance(299)
    session.send(b"NOOP\r\n")
    clock.advance(299)
    assert session.take() == b""
    clock.advance(2)
    assert session.take() == b"421 4.4.2 mx.test Timeout, closing connection\r\n"
    assert session.transport.disconnecting


def test_timeout_waits_for_a_delivery_in_progress(session, target, clock):
    target.hold = True
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n")
    clock.advance(400)
    assert not session.transport.disconnecting
    target.pending[0].callback(None)
    assert session.take() == b"250 2.0.0 <alice> Delivered\r\n"


def test_connection_lost_mid_delivery_does_not_crash(session, target):
    target.hold = True
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n")
    session.protocol.connectionLost(Failure(ConnectionError("gone")))
    target.pending[0].callback(None)
    assert target.delivered and session.take() == b""


def test_random_garbage_never_crashes(factory):
    rng = random.Random(5)
    alphabet = [b"\r", b"\n", b".", b"\r\n", b"LHLO x", b"MAIL FROM:<a@b>", b"RCPT TO:<alice>",
                b"DATA", b"\x00", b"\xff", b" ", b"RSET", b"<", b">", b"x" * 3000]
    for _ in range(200):
        session = Session(factory)
        for _ in range(40):
            session.send(b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
        session.protocol.connectionLost(Failure(ConnectionError("done")))


# -- with real stores and user stores


def test_delivery_into_a_memory_store(users, clock):
    store = MemoryStore()
    factory = LMTPFactory(store, users, "mx.test", clock=clock)
    session = Session(factory)
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert store.messages("alice") == [b"Return-Path: <s@x>\nDelivered-To: alice@example.test\nhi\n"]


def test_delivery_into_a_maildir_has_the_right_name_and_size(tmp_path: Path, users, clock):
    store = MaildirStore(str(tmp_path / "%n"), reactor=InlineReactor())
    factory = LMTPFactory(store, users, "mx.test", clock=clock)
    session = Session(factory)
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    names = os.listdir(tmp_path / "alice" / "new")
    assert len(names) == 1 and os.listdir(tmp_path / "alice" / "tmp") == []
    data = (tmp_path / "alice" / "new" / names[0]).read_bytes()
    assert data == b"Return-Path: <s@x>\nDelivered-To: alice\nSubject: x\n\nbody\n"
    name = names[0]
    assert name.endswith(f",S={len(data)},W={wire_size(data)}")
    (entry,) = scan(str(tmp_path / "alice"))
    assert entry.info.size == wire_size(data)


def test_users_from_a_real_htpasswd_checker(tmp_path: Path, clock):
    from popgate.cred.htpasswd import HtpasswdChecker

    path = tmp_path / "users"
    path.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ncarol@example.org:{SHA}x\n")
    store = MemoryStore()
    factory = LMTPFactory(store, [HtpasswdChecker(str(path), InlineReactor())], "mx.test", clock=clock)
    session = Session(factory)
    reply = session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<Alice@Example.Test>\r\n"
                         b"RCPT TO:<carol@example.org>\r\nRCPT TO:<dave@example.test>\r\n")
    assert reply.endswith(b"250 2.1.5 <Alice@Example.Test> OK\r\n250 2.1.5 <carol@example.org> OK\r\n"
                          b"550 5.1.1 <dave@example.test> User unknown\r\n")
    session.send(b"DATA\r\nx\r\n.\r\n")
    assert len(store.messages("alice")) == 1 and len(store.messages("carol@example.org")) == 1


def test_no_user_lookup_accepts_everyone(clock):
    store = MemoryStore()
    session = Session(LMTPFactory(store, None, "mx.test", clock=clock))
    session.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<anyone@example.test>\r\nDATA\r\nx\r\n.\r\n")
    assert len(store.messages("anyone@example.test")) == 1


def test_candidate_names():
    # The domain is lower-cased first; the exact local part goes first.
    assert candidate_names("Alice@Example.Test") == [
        "Alice@example.test", "Alice", "alice@example.test", "alice"]
    assert candidate_names("bob") == ["bob"]


def test_resolver_tries_every_store_and_reports_outages():
    down, up = Users(), Users("alice")
    down.failing = True
    d = UserResolver([down, up]).resolve("alice@x")
    assert d.result == "alice"
    d = UserResolver([down, Users()]).resolve("alice@x")
    assert isinstance(d.result, Failure) and d.result.check(errors.TemporaryFailure)
    d.addErrback(lambda _: None)


def test_trace_headers_for_pipe_delivery_are_not_doubled():
    message = b"Return-Path: <a@b>\nDelivered-To: Alice@x\nSubject: s\n\nbody\n"
    assert trace.add_trace_headers(message, "c@d", "alice@x", only_missing=True) == message
    assert trace.add_trace_headers(message, "c@d", "bob@x", only_missing=True) == \
        b"Delivered-To: bob@x\n" + message
    assert trace.add_trace_headers(message, "c@d", "alice", only_missing=True) == message  # local(8) $USER
    assert trace.add_trace_headers(b"x\n", None, "bob@x") == b"Delivered-To: bob@x\nx\n"
    assert trace.add_trace_headers(b"x\n", "a\r\nb@c", None) == b"Return-Path: <ab@c>\nx\n"


def test_from_wire():
    assert trace.from_wire(b"a\r\nb\r\n") == b"a\nb\n"
    assert trace.from_wire(b"a\r\r\nb\r\n") == b"a\r\r\nb\r\n"
    assert trace.split_from_line(b"From MAILER-DAEMON Thu Jan 1\nx\n") == ("", b"x\n")
    assert trace.split_from_line(b"From a@b  Thu\nx\n") == ("a@b", b"x\n")
    assert trace.split_from_line(b"Subject: x\n") == (None, b"Subject: x\n")


# -- the service


def test_the_lmtp_factory_delivers_into_the_store_and_checks_with_the_user_stores(tmp_path: Path):
    store = MaildirStore(str(tmp_path / "%n"), InlineReactor())
    users = Users("alice")
    clock = Clock()
    factory = lmtp_factory(store, [users], "mx.test", clock)
    assert factory.hostname_bytes == b"mx.test"
    assert factory.target is store
    assert factory.clock is clock
    assert factory.resolver.lookups == [users]


def test_lmtp_with_a_store_that_cannot_deliver_is_a_usage_error():
    class ReadOnly:
        pass

    with pytest.raises(usage.UsageError, match="--lmtp: the ReadOnly mail store cannot accept"):
        lmtp_factory(ReadOnly(), [], "mx.test", Clock())
    lmtp_factory(MemoryStore(), [], "mx.test", Clock())


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"From a", b"\xff", b"a\rb", b"end\r"]),
                      max_size=10),
       cuts=st.lists(st.integers(min_value=1, max_value=7), max_size=30))
def test_any_message_survives_stuffing_and_any_chunking(lines, cuts):
    target = Target()
    session = Session(LMTPFactory(target, None, "mx.test", clock=Clock()))
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    data = b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a>\r\nDATA\r\n" + stuffed + b".\r\nNOOP\r\n"
    pos = 0
    out = b""
    for cut in cuts:
        out += session.send(data[pos:pos + cut])
        pos += cut
    out += session.send(data[pos:])
    assert out.endswith(b"250 2.0.0 <a> Delivered\r\n250 2.0.0 OK\r\n")
    stored = target.delivered[0][1].split(b"\n", 2)[2] if b"\r\r\n" not in message else \
        target.delivered[0][1].split(b"\r\n", 2)[2]
    assert stored == trace.from_wire(message)


# -- case in user names, end to end --------------------------------------------


@pytest.fixture(params=["ldap", "mysql"])
def case_insensitive_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """
    A user store that matches names case-insensitively: the directory as
    the README sets it up (no user_attribute, uid C{bob}), or a MariaDB
    table under its default collation holding C{Bob@Example.org}, with the
    default query's C{userid AS user}.  Yields (C{--auth} argument, the
    password, the mailbox directory: the store's spelling).
    """
    if request.param == "ldap":
        server: LDAPServer = request.getfixturevalue("ldap_server")
        yield "ldap:" + server.argstring(), LDAP_USERS["bob"][0], "bob"
        return
    from popgate.cred.sql import DEFAULT_QUERY
    from tests.test_sql import _make_backend

    for backend in _make_backend("mysql", tmp_path):
        backend.execute(f"INSERT INTO {backend.table} VALUES ('Bob@Example.org', '{{PLAIN}}bob-pw', NULL)")
        query = DEFAULT_QUERY.replace("FROM users", f"FROM {backend.table}")
        yield f"sql:dsn={backend.dsn},query={query}", "bob-pw", "Bob"


@pytest.mark.integration
def test_mail_for_Bob_at_Example_org_reaches_the_login_bob_at_example_org(case_insensitive_store, tmp_path):
    """
    The issue's probe, with the real server: Postfix-style LMTP to
    C{Bob@Example.org} and C{popgate deliver -u BOB@EXAMPLE.ORG}, then POP3
    logins as C{bob@example.org} and C{BOB@Example.ORG}: one mailbox,
    C{example.org/} and the store's spelling of the user, holds both.
    """
    auth, password, mailbox = case_insensitive_store
    store = f"maildir:{tmp_path}/mail/%d/%n"
    lmtp_port = free_port()
    with PopgateProcess(["--auth", auth, "--store", store, "--lmtp", f"tcp:{lmtp_port}:interface=127.0.0.1"],
                        log_path=str(tmp_path / "popgate.log")) as server:
        with smtplib.LMTP("127.0.0.1", lmtp_port, timeout=10) as lmtp:
            assert lmtp.sendmail("s@example.net", ["Bob@Example.org"], b"Subject: over lmtp\r\n\r\nhi\r\n") == {}
        piped = subprocess.run(
            [sys.executable, "-m", "popgate.cli", "deliver", "-u", "BOB@EXAMPLE.ORG", "-f", "s@example.net",
             "--store", store, "--auth", auth],
            input=b"Subject: through deliver\n\nhi\n", capture_output=True, env=child_env(), cwd=REPO, timeout=60, check=False)
        assert piped.returncode == 0, piped.stderr
        assert os.listdir(tmp_path / "mail") == ["example.org"]
        assert os.listdir(tmp_path / "mail" / "example.org") == [mailbox]
        assert len(os.listdir(tmp_path / "mail" / "example.org" / mailbox / "new")) == 2
        for typed in ("bob@example.org", "BOB@Example.ORG"):
            client = poplib.POP3("127.0.0.1", server.port, timeout=10)
            try:
                client.user(typed)
                client.pass_(password)
                subjects = sorted(line for i in (1, 2) for line in client.retr(i)[1] if line.startswith(b"Subject:"))
                assert client.stat()[0] == 2
                assert subjects == [b"Subject: over lmtp", b"Subject: through deliver"]
            finally:
                client.quit()
