"""
The POP3 server protocol against RFC 1939 / RFC 2449 / RFC 3206, in memory:
a L{StringTransport}, a L{Clock}, a L{MemoryStore} behind a real portal.
"""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from popgate import errors
from popgate.interfaces import IMaildrop
from popgate.maildrop import wire_size
from popgate.pop3 import protocol as protocol_module
from popgate.pop3.encoder import encode_message
from popgate.pop3.settings import SessionSettings
from popgate.stores.memory import MemoryStore

from .helpers import PausingTransport, Session, connect, make_portal

M1 = b"From: a@example.com\nSubject: one\n\nbody one\n.dot line\n"
M2 = b"Subject: two\r\n\r\nbody two\r\n"
M3 = b"Subject: three\n\nx\ny\nz"
MESSAGES = [M1, M2, M3]
HUGE = b"99999999999999999999"


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[list[dict[str, Any]]]:
    """Every failure logged during a test; the test fails on any left over."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("isError") or event.get("log_level") == LogLevel.error:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
        gc.collect()  # unhandled errors in Deferreds are logged when collected
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not events, [e.get("log_failure") or e.get("log_format") for e in events]


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    for message in MESSAGES:
        store.add_message("alice", message)
    return store


@pytest.fixture
def session(store: MemoryStore) -> Session:
    portal, _ = make_portal(store)
    return connect(portal)


@pytest.fixture
def logged_in(session: Session) -> Session:
    session.take()
    session.login()
    return session


def uids(store: MemoryStore) -> list[bytes]:
    return [m.uid for m in store._boxes["alice"]]


def is_err(reply: bytes, code: bytes | None = None) -> bool:
    prefix = b"-ERR [" + code + b"] " if code else b"-ERR "
    return reply.startswith(prefix) and reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1


# -- greeting and CAPA


def test_greeting_carries_an_apop_timestamp(session: Session) -> None:
    greeting = session.take()
    assert re.fullmatch(rb"\+OK popgate ready\. <\d+\.\d+\.\d+@localhost>\r\n", greeting)


def test_greeting_without_apop_checker_has_no_timestamp(store: MemoryStore) -> None:
    portal, _ = make_portal(store, checker=DeferredChecker())
    assert connect(portal).take() == b"+OK popgate ready.\r\n"


def test_capa_before_login_lists_user(session: Session) -> None:
    session.take()
    reply = session.send(b"CAPA\r\n")
    # Issue 3 added SASL (CRAM-MD5: this checker can verify it) and UTF8.
    assert reply == (b"+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
                     b"AUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5\r\n"
                     b"UTF8\r\nIMPLEMENTATION popgate\r\n.\r\n")


def test_capa_after_login_has_no_user(logged_in: Session) -> None:
    reply = logged_in.send(b"CAPA\r\n")
    lines = reply.split(b"\r\n")
    assert lines[0] == b"+OK Capability list follows"
    assert b"USER" not in lines
    assert {b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES"} <= set(lines)
    assert reply.endswith(b"\r\n.\r\n")


def test_capa_without_implementation(store: MemoryStore) -> None:
    portal, _ = make_portal(store)
    session = connect(portal, settings=SessionSettings(implementation=""))
    session.take()
    assert b"IMPLEMENTATION" not in session.send(b"CAPA\r\n")


def test_tcp_nodelay_is_optional() -> None:
    # StringTransport has no setTcpNoDelay; a transport whose socket refuses
    # it (a UNIX socket) raises OSError: neither may break the session.
    portal, _ = make_portal()
    assert connect(portal).take().startswith(b"+OK")

    class NoDelayRefused(StringTransport):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[bool] = []

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.calls.append(enabled)
            raise OSError("not a TCP socket")

    transport = NoDelayRefused()
    assert connect(portal, transport=transport).take().startswith(b"+OK")
    assert transport.calls == [True]


# -- AUTHORIZATION


def test_user_pass_login(session: Session) -> None:
    session.take()
    assert session.send(b"USER alice\r\n") == b"+OK\r\n"
    assert session.send(b"PASS secret\r\n") == b"+OK Logged in.\r\n"
    assert session.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % sum(map(wire_size, MESSAGES))


def test_commands_are_case_insensitive(session: Session) -> None:
    session.take()
    assert session.send(b"user alice\r\n") == b"+OK\r\n"
    assert session.send(b"pAsS secret\r\n") == b"+OK Logged in.\r\n"
    assert session.send(b"stat\r\n").startswith(b"+OK 3 ")
    assert session.send(b"List 1\r\n") == b"+OK 1 %d\r\n" % wire_size(M1)
    assert session.send(b"noop\r\n") == b"+OK\r\n"
    assert session.send(b"capa\r\n").startswith(b"+OK Capability")


def test_bare_lf_line_ends_are_accepted(session: Session) -> None:
    session.take()
    assert session.send(b"USER alice\nPASS secret\nSTAT\n") == (
        b"+OK\r\n+OK Logged in.\r\n+OK 3 %d\r\n" % sum(map(wire_size, MESSAGES)))


def test_password_with_spaces(store: MemoryStore) -> None:
    portal, _ = make_portal(store, users={b"carol": b"correct horse  battery "})
    session = connect(portal)
    session.take()
    reply = session.send(b"USER carol\r\nPASS correct horse  battery \r\n")
    assert reply == b"+OK\r\n+OK Logged in.\r\n"


@pytest.mark.parametrize("command", [b"STAT", b"LIST", b"LIST 1", b"UIDL", b"RETR 1", b"DELE 1",
                                     b"TOP 1 0", b"RSET", b"NOOP", b"APOPX", b"LAST", b"RPOP x"])
def test_transaction_commands_refused_before_login(session: Session, command: bytes) -> None:
    session.take()
    assert is_err(session.send(command + b"\r\n"))
    assert session.send(b"USER alice\r\n") == b"+OK\r\n"
    assert not session.transport.disconnecting


@pytest.mark.parametrize("command", [b"USER alice", b"PASS secret", b"APOP alice 0123", b"LAST",
                                     b"AUTH PLAIN", b"STLS"])
def test_authorization_commands_refused_after_login(logged_in: Session, command: bytes) -> None:
    assert is_err(logged_in.send(command + b"\r\n"))
    assert logged_in.send(b"STAT\r\n").startswith(b"+OK 3 ")


def test_user_without_name(session: Session) -> None:
    # As Dovecot: USER takes any name, an empty or wrong one fails at PASS.
    session.take()
    assert session.send(b"USER\r\n") == b"+OK\r\n"
    assert session.send(b"USER   \r\n") == b"+OK\r\n"
    session.send(b"PASS secret\r\n")
    session.clock.advance(5)
    assert is_err(session.take(), b"AUTH")
    session.login()


def test_user_name_is_taken_as_it_is(session: Session) -> None:
    session.take()
    assert session.send(b"USER alice \r\n") == b"+OK\r\n"
    session.send(b"PASS secret\r\n")
    session.clock.advance(5)
    assert is_err(session.take(), b"AUTH")


def test_pass_without_user(session: Session) -> None:
    session.take()
    assert is_err(session.send(b"PASS secret\r\n"))
    session.login()


def test_pass_needs_a_new_user_after_a_failure(session: Session) -> None:
    session.take()
    session.send(b"USER alice\r\nPASS wrong\r\n")
    session.clock.advance(1)
    session.take()
    assert is_err(session.send(b"PASS secret\r\n"))


def test_failed_login_answers_after_the_delay(session: Session) -> None:
    session.take()
    assert session.send(b"USER alice\r\nPASS wrong\r\n") == b"+OK\r\n"
    session.clock.advance(0.99)
    assert session.take() == b""
    session.clock.advance(0.01)
    assert session.take() == b"-ERR [AUTH] Authentication failed.\r\n"
    assert not session.transport.disconnecting
    session.login()


def test_commands_wait_for_the_failure_delay(session: Session) -> None:
    session.take()
    assert session.send(b"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS secret\r\nSTAT\r\n") == b"+OK\r\n"
    session.clock.advance(0.5)
    assert session.take() == b""
    session.clock.advance(0.5)
    assert session.take() == (b"-ERR [AUTH] Authentication failed.\r\n+OK\r\n+OK Logged in.\r\n"
                              b"+OK 3 %d\r\n" % sum(map(wire_size, MESSAGES)))


def test_unknown_user_and_wrong_password_look_the_same(store: MemoryStore) -> None:
    replies = []
    for user, password in [(b"alice", b"wrong"), (b"nobody", b"wrong"), (b"nobody", b"secret")]:
        portal, _ = make_portal(store)
        session = connect(portal)
        session.take()
        replies.append(session.send(b"USER " + user + b"\r\nPASS " + password + b"\r\n"))
        session.clock.advance(1)
        replies[-1] += session.take()
    assert replies[0] == replies[1] == replies[2] == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"


def test_connection_closes_after_max_auth_failures(session: Session) -> None:
    session.take()
    for _ in range(2):
        session.send(b"USER alice\r\nPASS wrong\r\n")
        session.clock.advance(1)
        assert session.take().endswith(b"-ERR [AUTH] Authentication failed.\r\n")
        assert not session.transport.disconnecting
    assert session.send(b"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS secret\r\n") == b"+OK\r\n"
    session.clock.advance(1)
    assert session.take() == b"-ERR [AUTH] Authentication failed.\r\n"
    assert session.transport.disconnecting
    session.lose()
    assert session.protocol.state == "AUTHORIZATION"


def test_connection_lost_during_the_failure_delay(session: Session) -> None:
    session.take()
    session.send(b"USER alice\r\nPASS wrong\r\n")
    session.lose()
    session.clock.advance(1)
    assert session.take() == b""


def test_quit_in_authorization(session: Session, store: MemoryStore) -> None:
    session.take()
    assert session.send(b"QUIT\r\nUSER alice\r\n") == b"+OK Logging out.\r\n"
    assert session.transport.disconnecting
    session.lose()
    assert len(store.messages("alice")) == 3


def test_in_use_for_a_second_session(store: MemoryStore) -> None:
    portal, _ = make_portal(store)
    first = connect(portal)
    first.take()
    first.login()
    second = connect(portal)
    second.take()
    assert second.send(b"USER alice\r\nPASS secret\r\n") == (
        b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    assert not second.transport.disconnecting
    first.send(b"QUIT\r\n")
    first.lose()
    second.login()


class FailingStore:
    def __init__(self, exception: Exception) -> None:
        self.exception = exception

    def open_maildrop(self, avatar_id: str) -> Any:
        raise self.exception


@pytest.mark.parametrize("exception, reply", [
    (errors.TemporaryFailure("db down"), b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"),
    (errors.PermanentFailure("corrupt"), b"-ERR [SYS/PERM] Mailbox cannot be opened.\r\n"),
    (errors.InvalidUserName("../x"), b"-ERR [SYS/PERM] Mailbox cannot be opened.\r\n"),
    (RuntimeError("bug"), b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"),
])
def test_store_failures_get_response_codes(exception: Exception, reply: bytes,
                                           logged_errors: list[dict[str, Any]]) -> None:
    portal, _ = make_portal(FailingStore(exception))
    session = connect(portal)
    session.take()
    assert session.send(b"USER alice\r\nPASS secret\r\n") == b"+OK\r\n" + reply
    # No secret leaks into the reply; the session goes on.
    assert str(exception).encode() not in reply
    assert session.send(b"NOOP\r\n").startswith(b"-ERR")
    assert session.send(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    logged_errors.clear()


def test_store_failure_with_a_deferred_checker(store: MemoryStore,
                                               logged_errors: list[dict[str, Any]]) -> None:
    checker = DeferredChecker()
    portal, _ = make_portal(FailingStore(errors.TemporaryFailure("x")), checker=checker)
    session = connect(portal)
    session.take()
    assert session.send(b"USER alice\r\nPASS secret\r\nNOOP\r\n") == b"+OK\r\n"
    checker.pending[0][1].callback(b"alice")
    assert session.take() == b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n-ERR Unknown command.\r\n"


# -- APOP


def challenge_of(greeting: bytes) -> bytes:
    match = re.search(rb"<[^>]+>", greeting)
    assert match is not None
    return match.group(0)


def test_apop_with_the_right_digest(session: Session) -> None:
    challenge = challenge_of(session.take())
    digest = hashlib.md5(challenge + b"secret").hexdigest().encode()
    assert session.send(b"APOP alice " + digest + b"\r\n") == b"+OK Logged in.\r\n"
    assert session.send(b"STAT\r\n").startswith(b"+OK 3 ")


def test_apop_digest_is_case_insensitive(session: Session) -> None:
    challenge = challenge_of(session.take())
    digest = hashlib.md5(challenge + b"secret").hexdigest().upper().encode()
    assert session.send(b"apop alice " + digest + b"\r\n") == b"+OK Logged in.\r\n"


def test_apop_with_a_wrong_digest(session: Session) -> None:
    challenge = challenge_of(session.take())
    digest = hashlib.md5(challenge + b"wrong").hexdigest().encode()
    session.send(b"APOP alice " + digest + b"\r\n")
    session.clock.advance(1)
    assert session.take() == b"-ERR [AUTH] Authentication failed.\r\n"


@pytest.mark.parametrize("args", [b"", b" alice", b" alice a b"])
def test_apop_with_bad_arguments(session: Session, args: bytes) -> None:
    session.take()
    assert is_err(session.send(b"APOP" + args + b"\r\n"))
    session.login()


def test_challenges_differ_between_sessions(store: MemoryStore) -> None:
    portal, _ = make_portal(store)
    first = connect(portal)
    second = connect(portal)
    assert challenge_of(first.take()) != challenge_of(second.take())


def test_apop_not_offered_without_a_hashed_password_checker(store: MemoryStore) -> None:
    checker = DeferredChecker()
    portal, _ = make_portal(store, checker=checker)
    session = connect(portal)
    session.take()
    assert session.send(b"APOP alice 0123456789abcdef0123456789abcdef\r\n") == b"-ERR APOP not enabled.\r\n"
    assert checker.pending == []


@pytest.mark.parametrize("args, reply", [
    (b"", b"-ERR Invalid parameters.\r\n"),
    (b" alice", b"-ERR Invalid parameters.\r\n"),
    (b" alice 0123", b"-ERR Invalid parameters.\r\n"),
    (b" alice  0123456789abcdef0123456789abcdef", b"-ERR Invalid parameters.\r\n"),
    (b" alice 0123456789abcdef0123456789abcdeg", b"-ERR Invalid characters in MD5 response.\r\n"),
])
def test_apop_argument_checks(session: Session, args: bytes, reply: bytes) -> None:
    """Dovecot's checks: user, one space, 32 hex digits; no login attempt."""
    session.take()
    for _ in range(4):  # not counted as bad commands
        assert session.send(b"APOP" + args + b"\r\n") == reply
    session.login()


# -- TRANSACTION: listings


def test_stat_list_uidl(logged_in: Session, store: MemoryStore) -> None:
    sizes = [wire_size(m) for m in MESSAGES]
    ids = uids(store)
    assert logged_in.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % sum(sizes)
    assert logged_in.send(b"LIST\r\n") == (
        b"+OK 3 messages:\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(sizes))
    assert logged_in.send(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % sizes[1]
    assert logged_in.send(b"UIDL\r\n") == b"+OK\r\n1 %s\r\n2 %s\r\n3 %s\r\n.\r\n" % tuple(ids)
    assert logged_in.send(b"UIDL 2\r\n") == b"+OK 2 %s\r\n" % ids[1]
    assert logged_in.send(b"UIDL 02\r\n") == b"+OK 2 %s\r\n" % ids[1]


def test_empty_maildrop(store: MemoryStore) -> None:
    portal, _ = make_portal(store)
    session = connect(portal)
    session.take()
    session.login(b"bob", b"hunter2")
    assert session.send(b"STAT\r\n") == b"+OK 0 0\r\n"
    assert session.send(b"LIST\r\n") == b"+OK 0 messages:\r\n.\r\n"
    assert session.send(b"UIDL\r\n") == b"+OK\r\n.\r\n"
    assert is_err(session.send(b"LIST 1\r\n"))
    assert session.send(b"QUIT\r\n") == b"+OK Logging out.\r\n"


@pytest.mark.parametrize("command", [b"LIST", b"UIDL", b"RETR", b"DELE"])
@pytest.mark.parametrize("argument", [b"0", b"-1", b"4", HUGE, b"x", b"1x", b"1.0", b"\xb9",
                                      b"+1", b"1 Noise", b"1 2", b"1 ", b"1\t", b"4294967297"])
def test_bad_message_numbers(logged_in: Session, store: MemoryStore, command: bytes, argument: bytes) -> None:
    assert is_err(logged_in.send(command + b" " + argument + b"\r\n"))
    assert logged_in.send(b"STAT\r\n").startswith(b"+OK 3 ")
    assert not logged_in.transport.disconnecting


@pytest.mark.parametrize("command", [b"RETR", b"DELE", b"RETR ", b"DELE  "])
def test_missing_message_number(logged_in: Session, command: bytes) -> None:
    assert is_err(logged_in.send(command + b"\r\n"))
    assert logged_in.send(b"NOOP\r\n") == b"+OK\r\n"


@pytest.mark.parametrize("args", [b"", b" 1", b" 1 x", b" 1 -1", b" 0 1", b" 4 0", b" x 1",
                                  b" 1 1 1", b" " + HUGE + b" 1", b" 1 1 ", b" 1 +1", b" 1 1.5",
                                  b" 1\t1", b" 1 " + HUGE])
def test_top_bad_arguments(logged_in: Session, args: bytes) -> None:
    assert is_err(logged_in.send(b"TOP" + args + b"\r\n"))
    assert logged_in.send(b"NOOP\r\n") == b"+OK\r\n"


def test_dele_hides_the_message(logged_in: Session, store: MemoryStore) -> None:
    ids = uids(store)
    assert logged_in.send(b"DELE 2\r\n") == b"+OK Marked to be deleted.\r\n"
    assert logged_in.send(b"STAT\r\n") == b"+OK 2 %d\r\n" % (wire_size(M1) + wire_size(M3))
    assert logged_in.send(b"LIST\r\n") == (
        b"+OK 2 messages:\r\n1 %d\r\n3 %d\r\n.\r\n" % (wire_size(M1), wire_size(M3)))
    assert logged_in.send(b"UIDL\r\n") == b"+OK\r\n1 %s\r\n3 %s\r\n.\r\n" % (ids[0], ids[2])
    for command in [b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0", b"DELE 2"]:
        assert is_err(logged_in.send(command + b"\r\n")), command
    assert logged_in.send(b"LIST 3\r\n") == b"+OK 3 %d\r\n" % wire_size(M3)


def test_rset_undeletes(logged_in: Session) -> None:
    full = logged_in.send(b"LIST\r\n")
    logged_in.send(b"DELE 1\r\nDELE 3\r\n")
    assert logged_in.send(b"RSET\r\n") == b"+OK\r\n"
    assert logged_in.send(b"LIST\r\n") == full
    assert logged_in.send(b"STAT\r\n").startswith(b"+OK 3 ")


def test_noise_after_commands_without_arguments_is_tolerated(logged_in: Session) -> None:
    assert logged_in.send(b"NOOP x\r\n") == b"+OK\r\n"
    assert logged_in.send(b"STAT x\r\n").startswith(b"+OK 3 ")


# -- TRANSACTION: RETR and TOP


def test_retr_sends_the_encoded_message(logged_in: Session) -> None:
    for number, message in enumerate(MESSAGES, 1):
        reply = logged_in.send(b"RETR %d\r\n" % number)
        assert reply == b"+OK %d octets\r\n" % wire_size(message) + encode_message([message])


def test_retr_dot_stuffs(logged_in: Session) -> None:
    assert b"\r\n..dot line\r\n.\r\n" in logged_in.send(b"RETR 1\r\n")


def test_retr_does_not_delete(logged_in: Session, store: MemoryStore) -> None:
    logged_in.send(b"RETR 1\r\nQUIT\r\n")
    logged_in.lose()
    assert store.messages("alice") == MESSAGES


def test_top(logged_in: Session) -> None:
    assert logged_in.send(b"TOP 1 0\r\n") == b"+OK\r\nFrom: a@example.com\r\nSubject: one\r\n\r\n.\r\n"
    assert logged_in.send(b"TOP 1 1\r\n") == (
        b"+OK\r\nFrom: a@example.com\r\nSubject: one\r\n\r\nbody one\r\n.\r\n")
    assert logged_in.send(b"TOP 3 %d\r\n" % (2**64 - 1)) == b"+OK\r\n" + encode_message([M3])
    assert logged_in.send(b"TOP 3  4294967296\r\n") == b"+OK\r\n" + encode_message([M3])
    assert logged_in.send(b"TOP 1 01\r\n") == logged_in.send(b"TOP 1 1\r\n")
    # Dovecot: a count beyond 64 bits is an error, not "everything".
    assert is_err(logged_in.send(b"TOP 3 %d\r\n" % 2**64))
    assert is_err(logged_in.send(b"TOP 3 " + HUGE + b"\r\n"))


def test_retr_streams_with_back_pressure(store: MemoryStore) -> None:
    big = b"".join(b"line %07d with some text\n.dot\n" % i for i in range(40000))
    assert len(big) > 3 * protocol_module._CHUNK_SIZE
    store.add_message("alice", big)
    portal, _ = make_portal(store)
    transport = PausingTransport(high=1000)
    session = connect(portal, transport=transport)
    session.take()
    session.login()
    transport.clear()
    session.protocol.dataReceived(b"RETR 4\r\nSTAT\r\n")
    assert transport.producer_paused, "the sender should be paused, not finished"
    assert not transport.value().endswith(b"+OK 4 %d\r\n" % sum(map(wire_size, store.messages("alice"))))
    rounds = 0
    while transport.drain():
        rounds += 1
        assert rounds < 100
    assert rounds >= 3
    stat = b"+OK 4 %d\r\n" % sum(map(wire_size, store.messages("alice")))
    assert transport.value() == b"+OK %d octets\r\n" % wire_size(big) + encode_message([big]) + stat
    assert session.protocol._gate.child is None


def test_retr_streams_on_a_plain_string_transport(logged_in: Session, store: MemoryStore) -> None:
    # StringTransport never pauses its producer: the message goes at once.
    reply = logged_in.send(b"RETR 2\r\nNOOP\r\n")
    assert reply.endswith(b".\r\n+OK\r\n")
    assert logged_in.protocol._gate.child is None


class TCPLikeTransport(PausingTransport):
    """abortConnection on a disconnected TCP transport does nothing."""

    def abortConnection(self) -> None:
        if not self.disconnected:
            super().abortConnection()

    def resumeProducing(self) -> None:
        if not self.disconnected:
            super().resumeProducing()


def test_connection_lost_mid_retr_runs_no_pipelined_commands(store: MemoryStore) -> None:
    """
    A TCP transport stops its producer before it tells the protocol the
    connection is gone: commands pipelined after the RETR must not run
    (RETR 1 / DELE 1 / QUIT must not delete a message the client never got).
    """
    big = b"x" * 100 + b"\n" + b"y" * (2 * protocol_module._CHUNK_SIZE)
    store = MemoryStore()
    store.add_message("alice", big)
    portal, _ = make_portal(store)
    transport = TCPLikeTransport(high=1000)
    session = connect(portal, transport=transport)
    session.take()
    session.login()
    session.protocol.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert transport.producer_paused
    # What tcp.Connection.connectionLost does: producer first, then protocol.
    transport.disconnected = True
    transport.producer.stopProducing()
    transport.producer = None
    assert not transport.disconnecting
    session.lose()
    assert store.messages("alice") == [big]
    again = connect(portal)
    again.take()
    again.login()


class BrokenSource:
    def __init__(self) -> None:
        self.closed = False

    def read(self, n: int) -> bytes:
        raise OSError("I/O error")

    def close(self) -> None:
        self.closed = True


@implementer(IMaildrop)
class WrappedMaildrop:
    """An L{IMaildrop} over a memory maildrop, with hooks for tests."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.commit_deferred: defer.Deferred[None] | None = None
        self.committed: list[int] | None = None
        self.closes = 0
        self.open_failure: Exception | None = None
        self.source: Any = None

    def list_messages(self) -> Any:
        return self.inner.list_messages()

    def open_message(self, index: int) -> Any:
        if self.open_failure is not None:
            raise self.open_failure
        if self.source is not None:
            return self.source
        return self.inner.open_message(index)

    def commit(self, deleted: Any) -> Any:
        self.committed = list(deleted)
        if self.commit_deferred is None:
            return self.inner.commit(self.committed)
        return self.commit_deferred.addCallback(lambda _: self.inner.commit(self.committed))

    def close(self) -> None:
        self.closes += 1
        self.inner.close()


class WrappingStore:
    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.opened: list[WrappedMaildrop] = []
        self.commit_deferred: defer.Deferred[None] | None = None

    def open_maildrop(self, avatar_id: str) -> WrappedMaildrop:
        drop = WrappedMaildrop(self.inner.open_maildrop(avatar_id))
        drop.commit_deferred = self.commit_deferred
        self.opened.append(drop)
        return drop


def test_wrapped_maildrop_provides_the_interface(store: MemoryStore) -> None:
    verifyObject(IMaildrop, WrappedMaildrop(store.open_maildrop("alice")))


@pytest.mark.parametrize("failure, code", [
    (errors.PermanentFailure("gone"), b"SYS/PERM"),
    (FileNotFoundError("gone"), b"SYS/PERM"),
    (errors.TemporaryFailure("nfs"), b"SYS/TEMP"),
])
def test_retr_open_failure(store: MemoryStore, failure: Exception, code: bytes) -> None:
    wrapping = WrappingStore(store)
    portal, _ = make_portal(wrapping)
    session = connect(portal)
    session.take()
    session.login()
    wrapping.opened[0].open_failure = failure
    assert is_err(session.send(b"RETR 1\r\n"), code)
    assert session.send(b"NOOP\r\n") == b"+OK\r\n"


def test_read_failure_after_ok_drops_the_connection(store: MemoryStore,
                                                    logged_errors: list[dict[str, Any]]) -> None:
    wrapping = WrappingStore(store)
    portal, _ = make_portal(wrapping)
    session = connect(portal)
    session.take()
    session.login()
    source = wrapping.opened[0].source = BrokenSource()
    assert session.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n") == b"+OK %d octets\r\n" % wire_size(M1)
    assert session.transport.disconnected  # aborted
    assert source.closed
    session.lose()
    assert store.messages("alice") == MESSAGES
    assert logged_errors
    logged_errors.clear()


# -- QUIT and UPDATE


def test_quit_commits_deletions(logged_in: Session, store: MemoryStore) -> None:
    logged_in.send(b"DELE 1\r\nDELE 3\r\n")
    assert logged_in.send(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    assert logged_in.transport.disconnecting
    logged_in.lose()
    assert store.messages("alice") == [M2]


def test_quit_without_deletions(logged_in: Session, store: MemoryStore) -> None:
    assert logged_in.send(b"QUIT\r\n") == b"+OK Logging out.\r\n"
    logged_in.lose()
    assert store.messages("alice") == MESSAGES


def test_commands_after_quit_are_ignored(logged_in: Session, store: MemoryStore) -> None:
    assert logged_in.send(b"QUIT\r\nDELE 1\r\nSTAT\r\n") == b"+OK Logging out.\r\n"
    logged_in.lose()
    assert store.messages("alice") == MESSAGES


def test_mail_delivered_during_the_session_survives_quit(logged_in: Session, store: MemoryStore) -> None:
    store.add_message("alice", b"Subject: new\n\nnew\n")
    assert logged_in.send(b"STAT\r\n").startswith(b"+OK 3 ")
    logged_in.send(b"DELE 1\r\nDELE 2\r\nDELE 3\r\nQUIT\r\n")
    logged_in.lose()
    assert store.messages("alice") == [b"Subject: new\n\nnew\n"]


def test_quit_answers_only_once_the_commit_is_durable(store: MemoryStore) -> None:
    wrapping = WrappingStore(store)
    wrapping.commit_deferred = defer.Deferred()
    portal, _ = make_portal(wrapping)
    session = connect(portal)
    session.take()
    session.login()
    assert session.send(b"DELE 1\r\nQUIT\r\nNOOP\r\n") == b"+OK Marked to be deleted.\r\n"
    drop = wrapping.opened[0]
    assert drop.committed == [0]
    assert not session.transport.disconnecting
    assert store.messages("alice") == MESSAGES
    wrapping.commit_deferred.callback(None)
    assert session.take() == b"+OK Logging out, messages deleted.\r\n"
    assert session.transport.disconnecting
    session.lose()
    assert store.messages("alice") == [M2, M3]


def test_lock_is_kept_until_the_commit_is_done(store: MemoryStore) -> None:
    """The client hangs up while UPDATE runs: the maildrop stays locked
    until the deletions are applied, so no other session sees them."""
    wrapping = WrappingStore(store)
    wrapping.commit_deferred = defer.Deferred()
    portal, _ = make_portal(wrapping)
    session = connect(portal)
    session.take()
    session.login()
    session.send(b"DELE 1\r\nQUIT\r\n")
    session.lose()
    drop = wrapping.opened[0]
    assert drop.closes == 0
    other = connect(portal)
    other.take()
    assert b"[IN-USE]" in other.send(b"USER alice\r\nPASS secret\r\n")
    wrapping.commit_deferred.callback(None)
    assert store.messages("alice") == [M2, M3]
    assert session.take() == b""
    wrapping.commit_deferred = None
    other.login()
    assert other.send(b"STAT\r\n").startswith(b"+OK 2 ")


def test_quit_reports_a_failed_commit(store: MemoryStore, logged_errors: list[dict[str, Any]]) -> None:
    wrapping = WrappingStore(store)
    wrapping.commit_deferred = defer.Deferred()
    portal, _ = make_portal(wrapping)
    session = connect(portal)
    session.take()
    session.login()
    session.send(b"DELE 1\r\nQUIT\r\n")
    wrapping.commit_deferred.errback(errors.TemporaryFailure("disk"))
    assert session.take() == b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n"
    assert session.transport.disconnecting
    session.lose()
    logged_errors.clear()


def test_connection_lost_before_quit_deletes_nothing(logged_in: Session, store: MemoryStore) -> None:
    logged_in.send(b"DELE 1\r\nDELE 2\r\n")
    logged_in.lose()
    assert store.messages("alice") == MESSAGES
    portal = logged_in.protocol.portal
    again = connect(portal)
    again.take()
    again.login()
    assert again.send(b"STAT\r\n").startswith(b"+OK 3 ")


def test_connection_lost_while_the_login_is_pending(store: MemoryStore) -> None:
    wrapping = WrappingStore(store)
    checker = DeferredChecker()
    portal, _ = make_portal(wrapping, checker=checker)
    session = connect(portal)
    session.take()
    session.send(b"USER alice\r\nPASS secret\r\n")
    session.lose()
    checker.pending[0][1].callback(b"alice")
    assert session.take() == b""
    assert wrapping.opened[0].closes >= 1
    store._locks.acquire("alice")  # released: taking it again does not raise


# -- idle timeout


def test_idle_timeout_closes_without_update(logged_in: Session, store: MemoryStore) -> None:
    logged_in.send(b"DELE 1\r\n")
    logged_in.clock.advance(599)
    assert not logged_in.transport.disconnecting
    logged_in.clock.advance(1)
    assert logged_in.take() == b"-ERR Disconnected for inactivity.\r\n"
    assert logged_in.transport.disconnecting
    logged_in.lose()
    assert store.messages("alice") == MESSAGES
    assert logged_in.clock.getDelayedCalls() == []


def test_timeout_while_the_client_does_not_read_a_retr(store: MemoryStore) -> None:
    big = b"z" * (3 * protocol_module._CHUNK_SIZE)
    store.add_message("alice", big)
    portal, _ = make_portal(store)
    transport = PausingTransport(high=1000)
    session = connect(portal, transport=transport)
    session.take()
    session.login()
    session.send(b"DELE 1\r\nRETR 4\r\nQUIT\r\n")
    assert transport.producer_paused
    session.clock.advance(600)
    # Aborted, not loseConnection (which waits for the paused sender), and
    # no -ERR line inside the message.
    assert transport.disconnected
    assert b"-ERR" not in session.take()
    transport.producer.stopProducing()
    transport.producer = None
    session.lose()
    assert len(store.messages("alice")) == 4
    again = connect(portal)
    again.take()
    again.login()


def test_idle_timeout_before_login(store: MemoryStore) -> None:
    portal, _ = make_portal(store)
    session = connect(portal, settings=SessionSettings(login_timeout=0))
    session.take()
    session.clock.advance(599)
    assert not session.transport.disconnecting
    session.clock.advance(1)
    assert session.take() == b"-ERR Disconnected for inactivity.\r\n"
    assert session.transport.disconnecting


def test_login_timeout_is_not_reset_by_activity(session: Session) -> None:
    """Dovecot's 180 s from connect to login: CAPA and NOOP do not extend it."""
    session.take()
    for _ in range(17):
        session.clock.advance(10)
        assert session.send(b"CAPA\r\n").startswith(b"+OK")
    session.clock.advance(10)
    assert session.take() == b"-ERR Disconnected: no login in time.\r\n"
    assert session.transport.disconnecting


def test_login_timeout_ends_with_the_login(session: Session) -> None:
    session.take()
    session.clock.advance(179)
    session.login()
    session.clock.advance(60)
    assert session.send(b"NOOP\r\n") == b"+OK\r\n"
    assert not session.transport.disconnecting


def test_every_command_resets_the_idle_timer(logged_in: Session) -> None:
    for _ in range(5):
        logged_in.clock.advance(500)
        assert logged_in.send(b"NOOP\r\n") == b"+OK\r\n"
    assert not logged_in.transport.disconnecting


def test_no_timer_left_after_disconnect(logged_in: Session) -> None:
    logged_in.send(b"QUIT\r\n")
    logged_in.lose()
    assert logged_in.clock.getDelayedCalls() == []


# -- framing, pipelining, junk


def test_pipelined_commands_are_answered_in_order(logged_in: Session) -> None:
    reply = logged_in.send(b"STAT\r\nLIST 1\r\nBOGUS\r\nUIDL 1\r\nTOP 2 0\r\nRETR 3\r\nNOOP\r\n")
    first_lines = [line for line in reply.split(b"\r\n") if line[:1] in (b"+", b"-")]
    assert [line.split(b" ")[0] for line in first_lines] == [
        b"+OK", b"+OK", b"-ERR", b"+OK", b"+OK", b"+OK", b"+OK"]
    assert reply.endswith(encode_message([M3]) + b"+OK\r\n")


@implementer(ICredentialsChecker)
class DeferredChecker:
    """A checker that answers only when the test says so."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[tuple[Any, defer.Deferred[Any]]] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((credentials, d))
        return d


def test_pipelining_waits_for_a_pending_login(store: MemoryStore) -> None:
    checker = DeferredChecker()
    portal, _ = make_portal(store, checker=checker)
    session = connect(portal)
    session.take()
    reply = session.send(b"CAPA\r\nUSER alice\r\nPASS pass word\r\nSTAT\r\nLIST 1\r\nQUIT\r\n")
    assert reply.endswith(b".\r\n+OK\r\n")
    # Parsing waits; reading goes on below the read-ahead bound.
    assert session.transport.producerState == "producing"
    credentials, d = checker.pending[0]
    assert credentials.username == b"alice" and credentials.password == b"pass word"
    # More input while the login is pending is kept, in order.
    session.protocol.dataReceived(b"NOOP\r\n")
    assert session.take() == b""
    d.callback(b"alice")
    assert session.take() == (b"+OK Logged in.\r\n+OK 3 %d\r\n+OK 1 %d\r\n+OK Logging out.\r\n"
                              % (sum(map(wire_size, MESSAGES)), wire_size(M1)))
    assert session.transport.disconnecting


def test_read_ahead_is_bounded_while_a_command_waits(store: MemoryStore) -> None:
    """A client that keeps sending while its login is pending fills the
    kernel's buffers, not ours: reading pauses past 64 KiB and resumes
    when the commands can be served."""
    checker = DeferredChecker()
    portal, _ = make_portal(store, checker=checker)
    session = connect(portal)
    session.take()
    session.send(b"USER alice\r\nPASS pw\r\n")
    flood = b"NOOP\r\n" * 12000
    session.protocol.dataReceived(flood)
    assert session.transport.producerState == "paused"
    checker.pending[0][1].callback(b"alice")
    # 200 commands a turn: the other sessions run in between.
    out = session.take()
    assert out.count(b"+OK\r\n") == 200
    turns = 0
    while session.protocol._next_turn is not None and turns < 100:
        session.clock.advance(0)
        turns += 1
    out += session.take()
    # (A Clock runs the turns scheduled while it advances at once; the
    # reactor runs them an I/O round apart.)
    assert out.count(b"+OK\r\n") == 12000
    assert turns >= 1
    assert session.transport.producerState == "producing"


def test_pipelining_after_a_rejected_pending_login(store: MemoryStore) -> None:
    checker = DeferredChecker()
    portal, _ = make_portal(store, checker=checker)
    session = connect(portal)
    session.take()
    session.send(b"USER alice\r\nPASS x\r\nSTAT\r\nQUIT\r\n")
    checker.pending[0][1].errback(cred_error.UnauthorizedLogin())
    assert session.take() == b""
    session.clock.advance(1)
    assert session.take() == b"-ERR [AUTH] Authentication failed.\r\n-ERR Unknown command.\r\n+OK Logging out.\r\n"


def test_split_command_lines(logged_in: Session) -> None:
    assert logged_in.send(b"ST") == b""
    assert logged_in.send(b"AT\r") == b""
    assert logged_in.send(b"\nNO").startswith(b"+OK 3 ")
    assert logged_in.send(b"OP\r\n") == b"+OK\r\n"


def test_message_numbers_with_spaces(logged_in: Session) -> None:
    """Dovecot skips the spaces before the arguments and refuses any after
    a message number."""
    assert logged_in.send(b"LIST  1\r\n").startswith(b"+OK 1 ")
    assert logged_in.send(b"TOP 1  0\r\n").startswith(b"+OK\r\n")
    assert is_err(logged_in.send(b"LIST 1 \r\n"))
    assert is_err(logged_in.send(b"RETR 1  \r\n"))
    assert logged_in.send(b"LIST \r\n").startswith(b"+OK 3 messages:")
    assert logged_in.send(b"STAT \r\n").startswith(b"+OK 3 ")


def test_overlong_line_closes_the_connection(logged_in: Session, store: MemoryStore) -> None:
    """As Dovecot: after login, lines up to 2048 octets; a longer one gets
    -ERR and the connection is closed without UPDATE."""
    line = b"NOOP " + b"x" * (2048 - 7) + b"\r\n"
    assert len(line) == 2048
    assert logged_in.send(line) == b"+OK\r\n"
    logged_in.send(b"DELE 1\r\n")
    reply = logged_in.send(b"NOOP " + b"x" * (2049 - 7) + b"\r\nQUIT\r\n")
    assert reply == b"-ERR Input line too long.\r\n"
    assert logged_in.transport.disconnecting
    logged_in.lose()
    assert store.messages("alice") == MESSAGES


def test_overlong_login_line_closes_the_connection(session: Session) -> None:
    """Before login: 1024 octets of arguments (Dovecot's pop3-login)."""
    session.take()
    assert session.send(b"USER " + b"a" * 1024 + b"\r\n") == b"+OK\r\n"
    assert session.send(b"USER " + b"a" * 1025 + b"\r\n") == b"-ERR Input line too long.\r\n"
    assert session.transport.disconnecting


def test_overlong_line_in_pieces(logged_in: Session) -> None:
    assert logged_in.send(b"NOOP " + b"x" * 2000) == b""
    assert logged_in.send(b"x" * 200) == b"-ERR Input line too long.\r\n"
    assert logged_in.transport.disconnecting
    assert logged_in.send(b"\r\nNOOP\r\n") == b""


def test_unterminated_blob_does_not_grow_the_buffer(logged_in: Session) -> None:
    protocol = logged_in.protocol
    replies = b""
    for _ in range(1000):
        replies += logged_in.send(b"y" * 4096)
        assert len(protocol._buffer) <= 2048 + 4096
    assert replies == b"-ERR Input line too long.\r\n"


def test_binary_junk_is_refused(logged_in: Session) -> None:
    for junk in [b"\x00", b"\x00\x00\x00", b"\xff\xfe", b"ST\x00AT", b"\x1b[A", b"", b" ", b"\tSTAT",
                 b"STAT\x00", b"\xc3\xa9T\xc3\xa9", b"LIST \x00", b"RETR \xff"]:
        reply = logged_in.send(junk + b"\r\n")
        assert is_err(reply), (junk, reply)
    assert logged_in.send(b"STAT\r\n").startswith(b"+OK 3 ")


def test_unicode_digits_are_not_message_numbers(logged_in: Session) -> None:
    assert is_err(logged_in.send("LIST \u0661\r\n".encode("utf-8")))
    assert is_err(logged_in.send(b"LIST \xd9\xa1\r\n"))


def test_too_many_bad_commands_close_the_connection(session: Session) -> None:
    """Dovecot's pop3-login: the third unknown command in a row closes."""
    session.take()
    reply = session.send(b"BOGUS\r\n" * 5)
    assert reply == b"-ERR Unknown command.\r\n" * 3 + b"-ERR Too many invalid bad commands.\r\n"
    assert session.transport.disconnecting


def test_bad_commands_before_login_count_in_a_row(session: Session) -> None:
    """Only unknown commands count, and any other command resets the count:
    a refused USER, PASS or AUTH is not a confused client."""
    session.take()
    reply = session.send(b"BOGUS\r\nSTAT\r\nPASS x\r\nBOGUS\r\nBOGUS\r\nAUTH FOO\r\n"
                         b"BOGUS\r\nBOGUS\r\nCAPA\r\n")
    assert reply.count(b"-ERR") == 8
    assert not session.transport.disconnecting
    session.login()


def test_too_many_bad_commands_after_login(logged_in: Session) -> None:
    """Dovecot's pop3: more than 20 bad commands in a row close; a good
    command resets the count."""
    reply = logged_in.send(b"BOGUS\r\n" * 20 + b"NOOP\r\n" + b"RETR 9\r\n" * 20)
    assert reply.count(b"-ERR") == 40
    assert not logged_in.transport.disconnecting
    reply = logged_in.send(b"BOGUS\r\nSTAT\r\n")
    assert reply == b"-ERR Unknown command.\r\n-ERR Too many bad commands.\r\n"
    assert logged_in.transport.disconnecting


def test_nothing_is_read_after_the_connection_is_closing(logged_in: Session) -> None:
    logged_in.transport.loseConnection()
    assert logged_in.send(b"STAT\r\n") == b""


def test_clear_line_buffer(logged_in: Session) -> None:
    logged_in.send(b"STA")
    assert logged_in.protocol.clearLineBuffer() == b"STA"
    assert logged_in.send(b"NOOP\r\n") == b"+OK\r\n"


def _penalised_factory(clock: Any, penalty: Any) -> Any:
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal

    from popgate.pop3.factory import POP3ServerFactory
    from popgate.realm import MaildropRealm

    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", b"secret")
    checker.addUser(b"bob", b"hunter2")
    portal = Portal(MaildropRealm(MemoryStore(), clock), [checker])
    # StringTransport's peer is a remote address: allow USER/PASS without
    # TLS there (issue 3 refuses plaintext passwords from remote clients).
    return POP3ServerFactory(portal, SessionSettings(auth_failure_delay=1.0,
                                                     allow_plaintext_auth=True), clock,
                             penalty=penalty)


def _timed_login(factory: Any, clock: Clock, user: bytes, password: bytes,
                 peer: str = "192.0.2.1") -> tuple[float, bytes]:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 4321))
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"USER " + user + b"\r\nPASS " + password + b"\r\n")
    waited = 0.0
    while not transport.value().endswith((b"failed.\r\n", b"Logged in.\r\n")):
        clock.advance(0.5)
        waited += 0.5
        assert waited < 60
    proto.connectionLost()
    return waited, transport.value().splitlines()[-1]


def test_a_penalised_address_waits_before_the_check_successes_included() -> None:
    """
    After failures, every login from the address waits before it is
    checked, a correct one too, so the answer's timing says nothing about
    the password; a success forgives only that user name.
    """
    from popgate.cred.penalty import LoginPenalty

    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=1.0, max_delay=8.0)
    factory = _penalised_factory(clock, penalty)
    waits = [_timed_login(factory, clock, b"alice", b"wrong%d" % i)[0] for i in range(4)]
    # The failure delay (1 s) plus the penalty left when the login came.
    assert waits == [1.0, 1.0, 2.0, 4.0]
    assert penalty.penalty("192.0.2.1") == 8.0
    # A correct password waits as long before its check as a wrong one.
    waited, reply = _timed_login(factory, clock, b"alice", b"secret")
    assert reply == b"+OK Logged in." and waited == 7.0
    assert penalty.penalty("192.0.2.1") == 8.0, "a success does not forgive the address"
    # alice is forgiven from here; another name still pays.
    assert _timed_login(factory, clock, b"alice", b"secret")[0] == 0.0
    assert _timed_login(factory, clock, b"bob", b"guess")[0] == 1.0
    assert _timed_login(factory, clock, b"bob", b"guess2")[0] > 7.0
    # Another address is not slowed down at all.
    assert _timed_login(factory, clock, b"bob", b"hunter2", peer="198.51.100.7")[0] == 0.0


def test_the_same_wrong_password_retried_does_not_grow_the_penalty() -> None:
    from popgate.cred.penalty import LoginPenalty

    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=1.0, max_delay=8.0)
    factory = _penalised_factory(clock, penalty)
    for _ in range(5):
        _timed_login(factory, clock, b"alice", b"old password")
    assert penalty.penalty("192.0.2.1") == 1.0


def test_a_full_penalty_queue_refuses_with_sys_temp() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from popgate.cred.penalty import LoginPenalty

    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=10.0, max_delay=10.0, max_queue=2)
    factory = _penalised_factory(clock, penalty)
    _timed_login(factory, clock, b"alice", b"wrong")
    transports = []
    for _ in range(3):
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4321))
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(b"USER alice\r\nPASS x\r\n")
        transports.append((proto, transport))
    proto, transport = transports[-1]
    assert transport.value().endswith(b"-ERR [SYS/TEMP] Too many logins in progress from your address.\r\n")
    assert transport.disconnecting
    # Leaving the queue frees the place: the others are not stuck.
    for proto, _ in transports:
        proto.connectionLost()
    assert penalty.queued("192.0.2.1") == 0


# -- back-pressure on every reply (popgate.pop3.output)


def _many_messages(count: int) -> MemoryStore:
    store = MemoryStore()
    for i in range(count):
        store.add_message("alice", b"Subject: %d\n\nbody\n" % i)
    return store


def test_pipelined_uidl_from_a_client_that_never_reads_stays_bounded() -> None:
    """20,000 pipelined UIDL to a client that reads nothing: the server
    stops parsing and reading once the write buffer is full."""
    portal, _ = make_portal(_many_messages(2000))
    transport = PausingTransport(high=64 * 1024)
    session = connect(portal, transport=transport)
    session.login()
    transport.drain()
    session.protocol.dataReceived(b"UIDL\r\n" * 2000)
    assert transport.producer_paused
    one_reply = len(transport.value())
    assert one_reply < 2 * 64 * 1024 + 100_000
    # More input while paused is held, not parsed; past the read-ahead bound
    # reading from the socket stops.
    assert transport.producerState == "producing"
    session.protocol.dataReceived(b"UIDL\r\n" * 11000)
    assert len(transport.value()) == one_reply
    assert transport.producerState == "paused", "reading from the socket should stop"
    # The client reads: the answers come, in order, each after a drain.
    transport.clear()
    rounds = 0
    while transport.drain():
        rounds += 1
        transport.clear()
        assert rounds < 14000
    assert rounds > 1000
    assert transport.producerState == "producing"


def test_pipelined_capa_before_login_is_bounded_too(session: Session) -> None:
    transport = PausingTransport(high=4096)
    portal, _ = make_portal()
    s = connect(portal, transport=transport)
    s.protocol.dataReceived(b"CAPA\r\n" * 100_000)
    assert transport.producer_paused
    assert len(transport.value()) < 4096 + 1000
    assert len(s.protocol._buffer) <= 600_000
    assert transport.producerState == "paused"


def test_paused_output_resumes_in_order(store: MemoryStore) -> None:
    transport = PausingTransport(high=10)
    portal, _ = make_portal(store)
    s = connect(portal, transport=transport)
    transport.drain()
    s.login()
    transport.drain()
    transport.clear()
    s.protocol.dataReceived(b"STAT\r\nNOOP\r\nLIST 1\r\nQUIT\r\n")
    out = transport.value()
    while transport.drain():
        out = transport.value()
    assert out.startswith(b"+OK 3 ")
    assert out.endswith(b"+OK Logging out.\r\n")
    assert out.count(b"\r\n") == 4


# -- half-close (IHalfCloseableProtocol)


def test_half_close_answers_everything_and_quit_commits(logged_in: Session, store: MemoryStore) -> None:
    logged_in.transport.clear()
    logged_in.protocol.dataReceived(b"DELE 1\r\nQUIT\r\n")
    logged_in.protocol.readConnectionLost()
    out = logged_in.take()
    assert out == b"+OK Marked to be deleted.\r\n+OK Logging out, messages deleted.\r\n"
    logged_in.lose()
    assert store.messages("alice") == MESSAGES[1:]


def test_half_close_before_the_commands_are_parsed(store: MemoryStore) -> None:
    """EOF arrives while the login still runs: the rest is answered after it."""
    portal, _ = make_portal(store)
    session = connect(portal)
    session.take()
    session.protocol.dataReceived(b"USER alice\r\nPASS secret\r\nDELE 2\r\nQUIT\r\n")
    session.protocol.readConnectionLost()
    out = session.take()
    assert out.endswith(b"+OK Logging out, messages deleted.\r\n"), out
    session.lose()
    assert store.messages("alice") == [MESSAGES[0], MESSAGES[2]]


def test_half_close_without_quit_deletes_nothing(logged_in: Session, store: MemoryStore) -> None:
    logged_in.transport.clear()
    logged_in.protocol.dataReceived(b"DELE 1\r\nSTAT\r\n")
    logged_in.protocol.readConnectionLost()
    out = logged_in.take()
    assert out.startswith(b"+OK Marked to be deleted.\r\n+OK 2 ")
    assert logged_in.transport.disconnecting
    logged_in.lose()
    assert store.messages("alice") == MESSAGES


def test_half_close_ignores_an_unterminated_last_line(logged_in: Session, store: MemoryStore) -> None:
    logged_in.transport.clear()
    logged_in.protocol.dataReceived(b"DELE 1\r\nQUIT")
    logged_in.protocol.readConnectionLost()
    assert logged_in.take() == b"+OK Marked to be deleted.\r\n"
    assert logged_in.transport.disconnecting
    logged_in.lose()
    assert store.messages("alice") == MESSAGES
