"""
The operational events (L{popgate.events}) in memory: each login result
and its reason, how sessions end and the logout figures, deliveries,
penalties, refusals and TLS failures, as a capturing observer sees them;
no password or SASL response in any of them; and the text and JSON lines
of L{popgate.logs}.
"""

from __future__ import annotations

import base64
import io
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.application import service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEventAsClassicLogText,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors, events, logs
from popgate.cred.penalty import LoginPenalty
from popgate.delivery import deliver
from popgate.delivery.lmtp_factory import LMTPFactory
from popgate.limits import process as limits_process
from popgate.limits.counts import ConnectionLimits
from popgate.limits.refusal import LimitedFactory
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.memory import MemoryStore
from tests.helpers import LOOPBACK_PEER, InlineReactor, Session, make_portal

PASSWORD = b"Sw0rdfish-in-no-log"
M1 = b"Subject: one\r\n\r\nbody one\r\n"
M2 = b"Subject: two\r\n\r\nbody two\r\nmore\r\n"
REMOTE_PEER = IPv4Address("TCP", "203.0.113.7", 40000)

# strcred loads every checker plugin, Twisted's unix one too, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")




def named(seen: list[LogEvent], name: str) -> list[LogEvent]:
    return [e for e in seen if e["event"] == name]


def only(seen: list[LogEvent], name: str) -> LogEvent:
    found = named(seen, name)
    assert len(found) == 1, [e["event"] for e in seen]
    return found[0]


@implementer(ICredentialsChecker)
class Checker:
    """alice's password is PASSWORD; nobody else exists; C{failure}
    replaces every answer."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.failure: Exception | None = None

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        if self.failure is not None:
            return defer.fail(self.failure)
        if credentials.username != b"alice":
            return defer.fail(errors.UnknownUser())
        if credentials.password != PASSWORD:
            return defer.fail(UnauthorizedLogin())
        return defer.succeed("alice")


class BrokenStore:
    """A mail store whose maildrops never open."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def open_maildrop(self, avatar_id: str) -> Any:
        raise self.failure


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.add_message("alice", M1)
    store.add_message("alice", M2)
    return store


@pytest.fixture
def checker() -> Checker:
    return Checker()


def session(store: Any, checker: Checker, peer: Any = LOOPBACK_PEER,
            settings: SessionSettings | None = None, penalty: Any = None) -> Session:
    portal = Portal(MaildropRealm(store, InlineReactor()), [checker])
    clock = Clock()
    factory = POP3ServerFactory(portal, settings or SessionSettings(auth_failure_delay=0),
                                clock, penalty=penalty)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return Session(protocol, transport, clock)


def login_with(s: Session, password: bytes, user: bytes = b"alice") -> bytes:
    reply = s.send(b"USER " + user + b"\r\nPASS " + password + b"\r\n")
    s.clock.advance(0)
    return reply + s.take()


# -- logins

def test_a_good_login_says_who_how_and_from_where(store: MemoryStore, checker: Checker,
                                                  captured: list[LogEvent]) -> None:
    s = session(store, checker)
    connect_event = only(captured, "pop3.connect")
    assert connect_event["log_level"] == LogLevel.debug
    assert login_with(s, PASSWORD).endswith(b"+OK Logged in.\r\n")
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["user"], login["account"],
            login["method"]) == ("ok", "", "alice", "alice", "USER")
    assert (login["rip"], login["lip"], login["tls"]) == ("127.0.0.1", "10.0.0.1", "no")
    assert login["session"] == connect_event["session"] and len(login["session"]) == 12
    assert login["log_level"] == LogLevel.info
    assert events.CATALOGUE["pop3.login"].format_for(login).startswith("pop3-login: Login: ")


@pytest.mark.parametrize(("user", "reason"), [(b"alice", "bad-password"),
                                              (b"mallory", "unknown-user")])
def test_a_failed_login_says_why(store: MemoryStore, checker: Checker, captured: list[LogEvent],
                                 user: bytes, reason: str) -> None:
    s = session(store, checker, peer=REMOTE_PEER,
                settings=SessionSettings(auth_failure_delay=0, allow_plaintext_auth=True))
    assert b"-ERR [AUTH]" in login_with(s, b"wrong", user)
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["user"], login["attempts"]) == (
        "failed", reason, user.decode(), 1)
    assert login["rip"] == "203.0.113.7"


def test_the_last_allowed_failure_ends_the_session(store: MemoryStore, checker: Checker,
                                                   captured: list[LogEvent]) -> None:
    s = session(store, checker, settings=SessionSettings(auth_failure_delay=0,
                                                         max_auth_failures=2))
    login_with(s, b"one")
    login_with(s, b"two")
    assert [e["attempts"] for e in named(captured, "pop3.login")] == [1, 2]
    s.protocol.connectionLost(Failure(ConnectionDone()))
    end = only(captured, "pop3.disconnect")
    assert (end["reason"], end["attempts"], end["user"]) == ("too-many-failures", 2, "alice")
    assert end["log_level"] == LogLevel.info


@pytest.mark.parametrize(("failure", "reason", "level"), [
    (errors.TemporaryFailure("directory down"), "userstore", LogLevel.warn),
    (errors.PermanentFailure("bad scheme"), "userstore", LogLevel.error),
    (RuntimeError("bug"), "internal", LogLevel.warn),
])
def test_a_user_store_failure_is_an_error_not_a_failure(
        store: MemoryStore, checker: Checker, captured: list[LogEvent], failure: Exception,
        reason: str, level: Any) -> None:
    checker.failure = failure
    s = session(store, checker)
    assert b"-ERR [SYS/" in login_with(s, PASSWORD)
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["log_level"]) == ("error", reason, level)
    assert login["why"] == str(failure)
    assert login["attempts"] == 0
    counted = only(captured, "userstore.error")
    assert (counted["op"], counted["log_level"]) == ("login", LogLevel.debug)


@pytest.mark.parametrize(("failure", "reason"), [
    (errors.MaildropInUse("locked"), "in-use"),
    (errors.TemporaryFailure("disk gone"), "store"),
])
def test_a_mail_store_failure_names_the_account(checker: Checker, captured: list[LogEvent],
                                                failure: Exception, reason: str) -> None:
    s = session(BrokenStore(failure), checker)
    assert b"-ERR [" in login_with(s, PASSWORD)
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["account"]) == ("error", reason, "alice")
    if reason == "store":
        assert only(captured, "store.error")["op"] == "open"
    else:
        assert not named(captured, "store.error")


def test_sasl_logins_name_the_mechanism(store: MemoryStore, checker: Checker,
                                        captured: list[LogEvent]) -> None:
    s = session(store, checker)
    good = base64.b64encode(b"\0alice\0" + PASSWORD)
    assert s.send(b"AUTH PLAIN " + good + b"\r\n").startswith(b"+OK")
    login = only(captured, "pop3.login")
    assert (login["method"], login["result"], login["user"]) == ("PLAIN", "ok", "alice")


@pytest.mark.parametrize(("exchange", "reason"), [
    (b"AUTH PLAIN\r\n*\r\n", "aborted"),
    (b"AUTH PLAIN !!!!\r\n", "bad-sasl"),
    (b"AUTH PLAIN\r\n" + base64.b64encode(b"only-one-part") + b"\r\n", "bad-sasl"),
])
def test_broken_sasl_exchanges_are_failed_logins(store: MemoryStore, checker: Checker,
                                                 captured: list[LogEvent], exchange: bytes,
                                                 reason: str) -> None:
    s = session(store, checker)
    s.send(exchange)
    s.clock.advance(0)
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["method"]) == ("failed", reason, "PLAIN")


def test_a_password_in_clear_from_afar_is_a_failed_login(store: MemoryStore, checker: Checker,
                                                        captured: list[LogEvent]) -> None:
    s = session(store, checker, peer=REMOTE_PEER)
    assert b"-ERR [AUTH] Plaintext" in s.send(b"PASS " + PASSWORD + b"\r\n")
    login = only(captured, "pop3.login")
    assert (login["result"], login["reason"], login["tls"]) == (
        "failed", "plaintext-disallowed", "no")


def test_the_penalty_queue_refusal_and_the_penalty_itself(store: MemoryStore, checker: Checker,
                                                          captured: list[LogEvent]) -> None:
    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=2, max_delay=8, max_queue=1)
    first = session(store, checker, peer=REMOTE_PEER, penalty=penalty,
                    settings=SessionSettings(auth_failure_delay=0, allow_plaintext_auth=True))
    login_with(first, b"wrong")
    assert only(captured, "auth.penalty")["delay"] == 2.0
    login_with(first, b"wrong2")  # waits for the penalty (on the penalty's clock)
    second = session(store, checker, peer=REMOTE_PEER, penalty=penalty,
                     settings=SessionSettings(auth_failure_delay=0, allow_plaintext_auth=True))
    assert b"Too many logins" in login_with(second, PASSWORD)
    refused = named(captured, "pop3.login")[-1]
    assert (refused["result"], refused["reason"]) == ("failed", "penalty")
    second.protocol.connectionLost(Failure(ConnectionDone()))
    assert named(captured, "pop3.disconnect")[-1]["reason"] == "penalty"
    clock.advance(2)
    first.clock.advance(0)
    waited = named(captured, "pop3.login")[-1]
    assert waited["reason"] == "bad-password" and waited["session"] == first.protocol.report.session
    assert [(e["delay"], e["repeated"]) for e in named(captured, "auth.penalty")] == [
        (2.0, "no"), (4.0, "no")]


def test_leaving_during_the_check_is_an_aborted_login(store: MemoryStore,
                                                      captured: list[LogEvent]) -> None:
    pending: defer.Deferred[Any] = defer.Deferred()

    @implementer(ICredentialsChecker)
    class Slow:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
            return pending

    s = session(store, Slow())  # type: ignore[arg-type]
    s.send(b"USER alice\r\nPASS " + PASSWORD + b"\r\n")
    s.protocol.connectionLost(Failure(ConnectionDone()))
    pending.callback("alice")
    assert [(e["result"], e["reason"]) for e in named(captured, "pop3.login")] == [
        ("failed", "aborted")]


# -- the end of a session

def test_the_logout_line_has_dovecots_figures(store: MemoryStore, checker: Checker,
                                              captured: list[LogEvent]) -> None:
    s = session(store, checker)
    login_with(s, PASSWORD)
    retr = s.send(b"RETR 2\r\n")
    top = s.send(b"TOP 1 0\r\n")
    s.send(b"DELE 2\r\nQUIT\r\n")
    s.protocol.connectionLost(Failure(ConnectionDone()))
    logout = only(captured, "pop3.logout")
    size = len(M1) + len(M2)
    assert {k: logout[k] for k in ("user", "reason", "retr", "retr_bytes", "top", "top_bytes",
                                   "deleted", "deleted_bytes", "left", "left_bytes",
                                   "messages", "size")} == {
        "user": "alice", "reason": "quit", "retr": 1, "retr_bytes": len(retr), "top": 1,
        "top_bytes": len(top), "deleted": 1, "deleted_bytes": len(M2), "left": 1,
        "left_bytes": len(M1), "messages": 2, "size": size}
    text = events.CATALOGUE["pop3.logout"].format_for(logout).format(**logout)
    assert text.startswith(f"pop3(alice): Logout: reason=quit, rip=127.0.0.1, "
                           f"retr=1/{len(retr)}, top=1/{len(top)}, del=1/{len(M2)}, ")
    assert not named(captured, "pop3.disconnect")


def test_without_quit_nothing_is_deleted_and_the_line_says_how_it_ended(
        store: MemoryStore, checker: Checker, captured: list[LogEvent]) -> None:
    s = session(store, checker, settings=SessionSettings(auth_failure_delay=0, idle_timeout=60))
    login_with(s, PASSWORD)
    s.send(b"DELE 1\r\n")
    s.clock.advance(61)
    s.protocol.connectionLost(Failure(ConnectionDone()))
    logout = only(captured, "pop3.logout")
    assert (logout["reason"], logout["deleted"], logout["left"]) == ("idle-timeout", 0, 2)


@pytest.mark.parametrize(("script", "reason", "level"), [
    (b"", "disconnect", LogLevel.debug),
    (b"QUIT\r\n", "quit", LogLevel.debug),
    (b"NOOP\r\nNOOP\r\nNOOP\r\n", "too-many-bad-commands", LogLevel.info),
    (b"X" * 5000, "line-too-long", LogLevel.info),
])
def test_a_session_that_never_logged_in(store: MemoryStore, checker: Checker,
                                        captured: list[LogEvent], script: bytes, reason: str,
                                        level: Any) -> None:
    s = session(store, checker)
    s.send(script)
    s.protocol.connectionLost(Failure(ConnectionDone()))
    end = only(captured, "pop3.disconnect")
    assert (end["reason"], end["log_level"], end["attempts"]) == (reason, level, 0)


def test_no_login_in_time(store: MemoryStore, checker: Checker,
                          captured: list[LogEvent]) -> None:
    s = session(store, checker, settings=SessionSettings(login_timeout=30))
    s.clock.advance(31)
    s.protocol.connectionLost(Failure(ConnectionDone()))
    end = only(captured, "pop3.disconnect")
    assert (end["reason"], end["duration"]) == ("login-timeout", 31.0)


def test_a_failed_update_is_a_store_error_and_deletes_nothing(
        store: MemoryStore, checker: Checker, captured: list[LogEvent],
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = session(store, checker)
    login_with(s, PASSWORD)
    monkeypatch.setattr(s.protocol.maildrop, "commit",
                        lambda deleted: defer.fail(OSError(28, "No space left on device")))
    s.send(b"DELE 1\r\nQUIT\r\n")
    s.protocol.connectionLost(Failure(ConnectionDone()))
    error = only(captured, "store.error")
    assert (error["op"], error["kind"], error["user"], error["log_level"]) == (
        "commit", "temporary", "alice", LogLevel.error)
    assert "No space left" in error["why"]
    logout = only(captured, "pop3.logout")
    assert (logout["reason"], logout["deleted"]) == ("update-failed", 0)


def test_a_vanished_message_is_a_store_error(store: MemoryStore, checker: Checker,
                                             captured: list[LogEvent],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s = session(store, checker)
    login_with(s, PASSWORD)
    monkeypatch.setattr(s.protocol.maildrop, "open_message",
                        lambda index: defer.fail(FileNotFoundError(2, "No such file")))
    assert s.send(b"RETR 1\r\n").startswith(b"-ERR [SYS/PERM]")
    error = only(captured, "store.error")
    assert (error["op"], error["kind"], error["log_level"]) == ("open", "permanent",
                                                                 LogLevel.warn)


def test_a_failed_tls_handshake(store: MemoryStore, checker: Checker,
                                captured: list[LogEvent], tmp_path: Any) -> None:
    from popgate.tls import ServerTLS
    from tests.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    tls = ServerTLS(str(pki.cert), str(pki.key))
    portal = Portal(MaildropRealm(store, InlineReactor()), [checker])
    clock = Clock()
    pop3s = TLSMemoryBIOFactory(tls, False, POP3ServerFactory(portal, None, clock), clock=clock)
    protocol = pop3s.buildProtocol(LOOPBACK_PEER)
    protocol.makeConnection(StringTransport(peerAddress=REMOTE_PEER))
    protocol.dataReceived(b"USER alice\r\n")  # plaintext on a TLS port
    protocol.connectionLost(Failure(ConnectionDone()))
    failed = only(captured, "tls.handshake_failed")
    assert (failed["stage"], failed["rip"]) == ("pop3s", "203.0.113.7")
    assert only(captured, "pop3.disconnect")["reason"] == "tls-failed"


# -- delivery, refusals

def test_lmtp_deliveries_and_refusals(captured: list[LogEvent]) -> None:
    store = MemoryStore()
    store.add_message("alice", b"x")  # alice exists
    clock = Clock()
    factory = LMTPFactory(store, None, "mx.example", clock)
    from tests.test_lmtp import Users

    factory.resolver = LMTPFactory(store, Users("alice"), "mx", clock).resolver
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=REMOTE_PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"LHLO mx\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<nobody>\r\n"
                          b"RCPT TO:<alice>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
    unknown, delivered = named(captured, "lmtp.delivery")
    assert (unknown["result"], unknown["reason"], unknown["code"], unknown["status"],
            unknown["log_level"]) == ("failed", "unknown-user", 550, "5.1.1", LogLevel.info)
    assert (delivered["result"], delivered["recipient"], delivered["user"],
            delivered["sender"], delivered["code"], delivered["rip"]) == (
        "ok", "alice", "alice", "s@example.org", 250, "203.0.113.7")
    assert delivered["size"] > len(b"Subject: hi\r\n\r\nhello\r\n")  # trace headers added


def test_deliver_reports_each_outcome(captured: list[LogEvent],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = MemoryStore()

    @implementer(ICredentialsChecker)
    class Lookup:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials: Any) -> Any:
            raise NotImplementedError

        def lookup_user(self, name: str) -> Any:
            from popgate.cred.userinfo import UserInfo

            return defer.succeed(UserInfo(name) if name == "alice" else None)

    from zope.interface import alsoProvides

    from popgate.interfaces import IUserLookup

    lookup = Lookup()
    alsoProvides(lookup, IUserLookup)
    for user in ("alice", "carol"):
        d = defer.Deferred.fromCoroutine(deliver.deliver_message(
            store, [lookup], user, "s@example.org", b"Subject: x\n\nhi\n"))
        d.addErrback(lambda f: f.printTraceback())
    ok, unknown = named(captured, "deliver.delivery")
    assert (ok["result"], ok["exit"], ok["user"]) == ("ok", 0, "alice") and ok["size"] > 0
    assert (unknown["result"], unknown["reason"], unknown["exit"]) == (
        "failed", "unknown-user", deliver.EX_NOUSER)
    assert "no such user: carol" in capsys.readouterr().err


def test_every_limit_refusal_is_an_event(captured: list[LogEvent]) -> None:
    counts = ConnectionLimits(Clock(), max_connections=5, max_per_ip=1)
    factory = LimitedFactory(POP3ServerFactory(make_portal()[0], None, Clock()), counts)
    assert factory.buildProtocol(REMOTE_PEER) is not None
    factory.buildProtocol(REMOTE_PEER)
    factory.buildProtocol(REMOTE_PEER)
    refusals = named(captured, "limit.refused")
    assert [(e["limit"], e["max"], e["rip"], e["protocol"], e["log_level"])
            for e in refusals] == [("address", 1, "203.0.113.7", "pop3", LogLevel.debug)] * 2


# -- no secrets

def test_no_password_or_sasl_response_in_any_event(store: MemoryStore, checker: Checker,
                                                   captured: list[LogEvent]) -> None:
    plain = base64.b64encode(b"\0alice\0" + PASSWORD)
    wrong = base64.b64encode(b"\0alice\0" + PASSWORD + b"x")
    for script in (b"USER alice\r\nPASS " + PASSWORD + b"\r\nQUIT\r\n",
                   b"USER alice\r\nPASS " + PASSWORD + b"x\r\n",
                   b"AUTH PLAIN " + plain + b"\r\nQUIT\r\n",
                   b"AUTH PLAIN\r\n" + wrong + b"\r\n",
                   b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n"
                   + base64.b64encode(PASSWORD) + b"\r\n"):
        s = session(store, checker)
        s.send(script)
        s.clock.advance(1)
        s.protocol.connectionLost(Failure(ConnectionDone()))
    assert len(named(captured, "pop3.login")) == 5
    secrets = [PASSWORD.decode(), plain.decode(), wrong.decode(),
               base64.b64encode(PASSWORD).decode()]
    for event in captured:
        lines = logs.json_line(event) + (logs.text_line(event) or "")
        assert not any(secret in lines for secret in secrets), lines
        assert not any(secret in repr(value) for value in event.values() for secret in secrets)


# -- the catalogue and the lines

def test_emit_keeps_to_the_catalogue() -> None:
    seen: list[LogEvent] = []
    log = Logger(observer=seen.append)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing fields"):
        events.emit(log, "auth.penalty", rip="192.0.2.1", delay=2)
    with pytest.raises(TypeError, match="unknown fields"):
        events.emit(log, "auth.penalty", rip="192.0.2.1", delay=2, repeated="no", password="x")
    with pytest.raises(ValueError, match="repeated"):
        events.emit(log, "auth.penalty", rip="192.0.2.1", delay=2, repeated="maybe")
    events.emit(log, "auth.penalty", rip="192.0.2.1", delay=2.00049, repeated="no")
    assert seen[0]["delay"] == 2.0 and seen[0]["event"] == "auth.penalty"


def test_what_a_client_sends_cannot_forge_a_field() -> None:
    assert events.free_text(b"x>, rip=6.6.6.6, <y") == "x\\x3e, rip=6.6.6.6, \\x3cy"
    assert events.free_text("a\r\nb\\(c)\u2028") == "a\\x0d\\x0ab\\x5c\\x28c\\x29\\u2028"
    assert events.free_text(b"\xff") == "\ufffd"
    assert events.free_text("x" * 300) == "x" * 256 + "..."
    assert events.address_text(IPv4Address("TCP", "10.0.0.1", 1)) == "10.0.0.1"
    from twisted.internet.address import IPv6Address, UNIXAddress

    assert events.address_text(IPv6Address("TCP", "::ffff:192.0.2.1", 1)) == "192.0.2.1"
    assert events.address_text(UNIXAddress(None)) == "unix"


def test_every_field_name_is_free_for_the_json_keys() -> None:
    for spec in events.CATALOGUE.values():
        names = [f.name for f in spec.fields]
        assert not set(names) & set(events.JSON_KEYS)
        for text in spec.formats.values():
            # Every {field} of the text is a field of the event.
            import string

            used = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            assert used <= set(names), (spec.name, used - set(names))


def test_json_lines_parse_and_have_the_documented_keys(store: MemoryStore, checker: Checker,
                                                       captured: list[LogEvent]) -> None:
    s = session(store, checker)
    login_with(s, b"wrong")
    login_with(s, PASSWORD)
    s.send(b"RETR 1\r\nQUIT\r\n")
    s.protocol.connectionLost(Failure(ConnectionDone()))
    assert {e["event"] for e in captured} >= {"pop3.connect", "pop3.login", "pop3.logout"}
    for event in captured:
        line = logs.json_line(event)
        assert line.endswith("\n") and line.count("\n") == 1
        record = json.loads(line)
        spec = events.CATALOGUE[event["event"]]
        assert list(record) == list(events.JSON_KEYS) + [f.name for f in spec.fields]
        assert record["event"] == event["event"] and record["level"] == event["log_level"].name
        assert record["time"].endswith("Z") and record["text"] == logs.formatEvent(event)
        # The text rendered once by emit is what Twisted's formatter makes.
        assert logs.text_line(event) == formatEventAsClassicLogText(event)
        for f in spec.fields:
            assert isinstance(record[f.name], int if f.type == "int" else
                              float if f.type == "float" else str), (spec.name, f.name)


def test_other_lines_are_json_too_with_their_traceback() -> None:
    seen: list[LogEvent] = []
    log = Logger(namespace="x.y", observer=seen.append)  # type: ignore[arg-type]
    log.info("hello {who}", who=object())
    try:
        raise ZeroDivisionError("no")
    except ZeroDivisionError:
        log.failure("it broke")
    first, second = (json.loads(logs.json_line(e)) for e in seen)
    assert (first["event"], first["namespace"], list(first)) == (
        "log", "x.y", list(events.JSON_KEYS))
    assert second["level"] == "critical" and "ZeroDivisionError" in second["traceback"]


def test_the_level_filter_and_its_change() -> None:
    out = io.StringIO()
    observer = logs.file_log(out, "text", "warn")
    log = Logger(namespace="t", observer=observer)
    log.info("not shown")
    log.warn("shown")
    observer.set_level("debug")
    log.debug("now shown")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["shown", "now shown"]
    assert "[t#warn]" in lines[0]
    with pytest.raises(ValueError):
        logs.file_log(out, "xml")


@pytest.fixture
def restore_sigusr1() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_twistd_log_follows_twistds_options(tmp_path: Any, restore_sigusr1: None) -> None:
    reactor = MemoryReactorClock()
    assert logs.twistd_log({"logger": "x.y"}, "json", "info", reactor) is None
    to_stdout = logs.twistd_log({"nodaemon": True, "logfile": None}, "json", "info", reactor)
    assert isinstance(to_stdout, logs.ServerLog)
    with pytest.raises(usage.UsageError, match="daemons cannot log to stdout"):
        logs.twistd_log({"nodaemon": False, "logfile": "-"}, "text", "info", reactor)
    path = tmp_path / "popgate.log"
    to_file = logs.twistd_log({"nodaemon": False, "logfile": str(path)}, "json", "info", reactor)
    assert to_file is not None
    to_file({"log_format": "x", "log_level": LogLevel.info, "log_namespace": "n",
             "log_time": 0.0})
    assert json.loads(path.read_text())["text"] == "x"
    # As twistd's own log file: SIGUSR1 rotates it.
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)


def test_twistd_gets_the_observer_from_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """makeService cannot reach twistd's application; the server puts its
    observer there when twistd hands it the application."""
    from twisted.scripts.twistd import ServerOptions

    from popgate import tap

    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))
    options = ServerOptions()
    options.parseOptions(["-n", "--pidfile=", "popgate", "--store", "memory:",
                          "--auth", "memory:alice:secret", "--pop3", "tcp:0:interface=127.0.0.1",
                          "--log-format", "json", "--log-level", "warn"])
    server = tap.makeService(options.subOptions, MemoryReactorClock())
    application = service.Application("popgate")
    server.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert observer is server.log_observer and observer.level == "warn"
    assert observer is not None and ILogObserver.providedBy(observer)
