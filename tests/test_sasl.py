"""
AUTH (RFC 5034) with PLAIN, LOGIN and CRAM-MD5, UTF8 (RFC 6856) and the
plaintext-password policy, in memory: a L{StringTransport} whose peer is
loopback (plaintext allowed) or a documentation address (TLS required).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import pytest
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from popgate.cred.penalty import LoginPenalty
from popgate.pop3 import sasl
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.protocol import peer_is_trusted
from popgate.pop3.settings import SessionSettings
from popgate.stores.memory import MemoryStore

from .helpers import LOOPBACK_PEER, Session, connect, make_portal

pytestmark = pytest.mark.usefixtures("log_events")

REMOTE = IPv4Address("TCP", "192.0.2.1", 40000)  # TEST-NET-1: never contacted
AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
PLAINTEXT_REFUSED = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                     b"(SSL/TLS) connections.\r\n")
LONG_PASSWORD = b"p" * 3000


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@implementer(ICredentialsChecker)
class PasswordOnlyChecker:
    """Checks USER/PASS-style credentials only (like htpasswd): no APOP,
    no CRAM-MD5.  Counts the requests it gets."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[bytes, bytes]) -> None:
        self.users = users
        self.requests: list[Any] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        self.requests.append(credentials)
        if self.users.get(credentials.username) == credentials.password:
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin())


USERS = {b"alice": b"secret", b"j\xc3\xb6rg": b"p\xc3\xa4ss", b"long": LONG_PASSWORD}


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.add_message("alice", b"Subject: one\n\nbody\n")
    return store


def open_session(store: MemoryStore, peer: Any = LOOPBACK_PEER, checker: Any = None,
                 settings: SessionSettings | None = None, penalty: Any = None,
                 clock: Any = None) -> Session:
    portal, _ = make_portal(store, checker=checker, users=USERS)
    if penalty is not None or clock is not None:
        from twisted.internet.task import Clock

        clock = clock or Clock()
        factory = POP3ServerFactory(portal, settings, clock, penalty=penalty)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        session = Session(protocol, transport, clock)
    else:
        session = connect(portal, settings=settings, transport=StringTransport(peerAddress=peer))
    session.take()
    return session


def failed_after_delay(session: Session, reply: bytes) -> bool:
    """C{reply} was empty and the failure came one second later."""
    if reply != b"":
        return False
    session.clock.advance(1)
    return session.take() == AUTH_FAILED


def capa(session: Session) -> list[bytes]:
    reply = session.send(b"CAPA\r\n")
    assert reply.startswith(b"+OK Capability list follows\r\n") and reply.endswith(b"\r\n.\r\n")
    return reply.split(b"\r\n")[1:-2]


# -- AUTH without a mechanism


@pytest.mark.parametrize("peer, checker, names", [
    (LOOPBACK_PEER, None, [b"PLAIN", b"LOGIN", b"CRAM-MD5"]),
    (REMOTE, None, [b"CRAM-MD5"]),
    (LOOPBACK_PEER, PasswordOnlyChecker(USERS), [b"PLAIN", b"LOGIN"]),
    (REMOTE, PasswordOnlyChecker(USERS), []),
])
def test_auth_without_argument_lists_the_usable_mechanisms(store: MemoryStore, peer: Any,
                                                            checker: Any, names: list[bytes]) -> None:
    session = open_session(store, peer, checker)
    expected = b"+OK\r\n" + b"".join(n + b"\r\n" for n in names) + b".\r\n"
    assert session.send(b"AUTH\r\n") == expected
    sasl_line = [c for c in capa(session) if c.startswith(b"SASL")]
    assert sasl_line == ([b"SASL " + b" ".join(names)] if names else [])


# -- PLAIN


def test_plain_with_initial_response(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n") == b"+OK Logged in.\r\n"
    assert session.send(b"STAT\r\n").startswith(b"+OK 1 ")


def test_plain_mechanism_name_is_case_insensitive(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"auth plain " + b64(b"\0alice\0secret") + b"\r\n") == b"+OK Logged in.\r\n"


def test_plain_in_two_steps_after_an_empty_challenge(store: MemoryStore) -> None:
    """K-9 and curl (without --sasl-ir) send AUTH PLAIN, wait for "+ "."""
    session = open_session(store)
    assert session.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert session.send(b64(b"\0alice\0secret") + b"\r\n") == b"+OK Logged in.\r\n"


def test_plain_with_matching_authzid(store: MemoryStore) -> None:
    session = open_session(store)
    reply = session.send(b"AUTH PLAIN " + b64(b"alice\0alice\0secret") + b"\r\n")
    assert reply == b"+OK Logged in.\r\n"


@pytest.mark.parametrize("message", [
    b"bob\0alice\0secret",  # acting as another user: refused
    b"alice\0secret",  # one NUL
    b"\0alice\0secret\0",  # three
    b"\0\0secret",  # no user
    b"\0alice\0",  # no password
    b"",  # "=" : empty
])
def test_plain_bad_messages_fail_like_a_wrong_password(store: MemoryStore, message: bytes) -> None:
    checker = PasswordOnlyChecker(USERS)
    session = open_session(store, checker=checker)
    argument = b64(message) if message else b"="
    assert failed_after_delay(session, session.send(b"AUTH PLAIN " + argument + b"\r\n"))
    assert checker.requests == []  # refused before any user store is asked
    session.login()


def test_plain_wrong_password(store: MemoryStore) -> None:
    session = open_session(store)
    assert failed_after_delay(session, session.send(b"AUTH PLAIN " + b64(b"\0alice\0nope") + b"\r\n"))
    assert session.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n") == b"+OK Logged in.\r\n"


def test_plain_with_utf8_credentials(store: MemoryStore) -> None:
    store.add_message("jörg", b"Subject: x\n\ny\n")
    session = open_session(store)
    assert session.send(b"UTF8\r\n") == b"+OK UTF8 enabled.\r\n"
    reply = session.send(b"AUTH PLAIN " + b64("\0jörg\0päss".encode()) + b"\r\n")
    assert reply == b"+OK Logged in.\r\n"


# -- LOGIN


def test_login_mechanism(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert session.send(b64(b"alice") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert session.send(b64(b"secret") + b"\r\n") == b"+OK Logged in.\r\n"


def test_login_with_the_user_name_as_initial_response(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert session.send(b64(b"secret") + b"\r\n") == b"+OK Logged in.\r\n"


def test_login_wrong_password_and_empty_user(store: MemoryStore) -> None:
    session = open_session(store)
    session.send(b"AUTH LOGIN\r\n")
    session.send(b64(b"alice") + b"\r\n")
    assert failed_after_delay(session, session.send(b64(b"wrong") + b"\r\n"))
    assert session.send(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert failed_after_delay(session, session.send(b"\r\n"))
    assert not session.transport.disconnecting


# -- CRAM-MD5


def cram_challenge(reply: bytes) -> bytes:
    assert reply.startswith(b"+ ") and reply.endswith(b"\r\n")
    return base64.b64decode(reply[2:-2])


def cram_response(challenge: bytes, user: bytes, password: bytes) -> bytes:
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest().encode()
    return b64(user + b" " + digest) + b"\r\n"


def test_cram_md5(store: MemoryStore) -> None:
    session = open_session(store, REMOTE)  # no TLS needed: no password on the wire
    challenge = cram_challenge(session.send(b"AUTH CRAM-MD5\r\n"))
    assert re.fullmatch(rb"<\d+\.\d+@localhost>", challenge)
    assert session.send(cram_response(challenge, b"alice", b"secret")) == b"+OK Logged in.\r\n"


def test_cram_md5_digest_in_upper_case(store: MemoryStore) -> None:
    session = open_session(store)
    challenge = cram_challenge(session.send(b"AUTH CRAM-MD5\r\n"))
    digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().upper().encode()
    assert session.send(b64(b"alice " + digest) + b"\r\n") == b"+OK Logged in.\r\n"


def test_cram_md5_challenges_are_unique(store: MemoryStore) -> None:
    challenges = {cram_challenge(open_session(store).send(b"AUTH CRAM-MD5\r\n")) for _ in range(20)}
    assert len(challenges) == 20


@pytest.mark.parametrize("response", [
    lambda c: cram_response(c, b"alice", b"wrong"),
    lambda c: cram_response(c, b"nobody", b"secret"),
    lambda c: b64(b"alice") + b"\r\n",
    lambda c: b64(b"alice " + b"z" * 32) + b"\r\n",
    lambda c: b64(b" " + b"0" * 32) + b"\r\n",
])
def test_cram_md5_failures(store: MemoryStore, response: Any) -> None:
    session = open_session(store)
    challenge = cram_challenge(session.send(b"AUTH CRAM-MD5\r\n"))
    assert failed_after_delay(session, session.send(response(challenge)))


def test_cram_md5_refuses_an_initial_response(store: MemoryStore) -> None:
    session = open_session(store)
    assert failed_after_delay(session, session.send(b"AUTH CRAM-MD5 " + b64(b"alice x") + b"\r\n"))


def test_cram_md5_not_offered_without_a_secret_checker(store: MemoryStore) -> None:
    checker = PasswordOnlyChecker(USERS)
    session = open_session(store, checker=checker)
    assert session.send(b"AUTH CRAM-MD5\r\n") == b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
    assert b"SASL PLAIN LOGIN" in capa(session)
    assert checker.requests == []


def test_cram_md5_credentials_accept_str_secrets() -> None:
    credentials = sasl.CramMD5Credentials(b"<1.2@h>", b"u", hmac.new(
        "pässword".encode(), b"<1.2@h>", hashlib.md5).hexdigest().encode())
    assert credentials.checkPassword("pässword")
    assert credentials.checkPassword("pässword".encode())
    assert not credentials.checkPassword("password")


# -- the exchange itself


def test_cancel_with_a_star(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert session.send(b"*\r\n") == b"-ERR Authentication aborted by client.\r\n"
    assert session.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert session.send(b"*\r\n") == b"-ERR Authentication aborted by client.\r\n"
    session.login()


# Dovecot: these errors carry [AUTH], and do not count as bad commands.
@pytest.mark.parametrize("command, reply", [
    (b"AUTH PLAIN !!!!", b"-ERR [AUTH] Invalid base64 data in initial response.\r\n"),
    (b"AUTH PLAIN AGFsaWNl=", b"-ERR [AUTH] Invalid base64 data in initial response.\r\n"),
    (b"AUTH XOAUTH9", b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"),
    (b"AUTH PLAIN a b", b"-ERR [AUTH] Invalid parameters.\r\n"),
])
def test_bad_auth_commands(store: MemoryStore, command: bytes, reply: bytes) -> None:
    session = open_session(store)
    for _ in range(4):
        assert session.send(command + b"\r\n") == reply
    session.login()


def test_malformed_base64_in_a_continuation(store: MemoryStore) -> None:
    session = open_session(store)
    session.send(b"AUTH LOGIN\r\n")
    assert session.send(b"not base64!\r\n") == b"-ERR [AUTH] Invalid base64 data in continued response.\r\n"
    session.login()


def test_responses_longer_than_255_octets(store: MemoryStore) -> None:
    """RFC 5034 limits the AUTH command line, not the responses."""
    session = open_session(store)
    store.add_message("long", b"x\n")
    response = b64(b"\0long\0" + LONG_PASSWORD)
    assert len(response) > 4000
    assert session.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert session.send(response + b"\r\n") == b"+OK Logged in.\r\n"


def test_long_initial_response_is_accepted(store: MemoryStore) -> None:
    session = open_session(store)
    line = b"AUTH PLAIN " + b64(b"\0long\0" + LONG_PASSWORD) + b"\r\n"
    assert len(line) > 255
    assert session.send(line) == b"+OK Logged in.\r\n"


def test_only_auth_lines_may_be_long(store: MemoryStore) -> None:
    session = open_session(store)
    assert session.send(b"USER " + b"x" * 1100 + b"\r\n") == b"-ERR Input line too long.\r\n"
    assert session.transport.disconnecting


def test_a_response_over_the_sasl_limit_closes_the_connection(store: MemoryStore) -> None:
    # Dovecot closes too (silently).
    session = open_session(store)
    session.send(b"AUTH PLAIN\r\n")
    assert session.send(b"A" * 9000 + b"\r\n") == b"-ERR Input line too long.\r\n"
    assert session.transport.disconnecting


def test_pipelined_auth_and_commands(store: MemoryStore) -> None:
    session = open_session(store)
    reply = session.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\nSTAT\r\nQUIT\r\n")
    assert reply.startswith(b"+OK Logged in.\r\n+OK 1 ")
    assert reply.endswith(b"+OK Logging out.\r\n")


def test_commands_wait_for_a_pending_sasl_login(store: MemoryStore) -> None:
    class Pending(PasswordOnlyChecker):
        def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
            self.requests.append(credentials)
            self.d: defer.Deferred[Any] = defer.Deferred()
            return self.d

    checker = Pending(USERS)
    session = open_session(store, checker=checker)
    assert session.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert session.send(b64(b"\0alice\0secret") + b"\r\nSTAT\r\n") == b""
    assert (checker.requests[0].username, checker.requests[0].password) == (b"alice", b"secret")
    checker.d.callback(b"alice")
    assert session.take().startswith(b"+OK Logged in.\r\n+OK 1 ")


def test_sasl_failures_count_toward_the_limit(store: MemoryStore) -> None:
    session = open_session(store)
    session.send(b"USER alice\r\nPASS wrong\r\n")
    session.clock.advance(1)
    session.send(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n")
    session.clock.advance(1)
    assert not session.transport.disconnecting
    challenge = cram_challenge(session.send(b"AUTH CRAM-MD5\r\n"))
    session.send(cram_response(challenge, b"alice", b"wrong"))
    session.clock.advance(1)
    assert session.take() == AUTH_FAILED
    assert session.transport.disconnecting


def test_sasl_failures_feed_the_per_ip_penalty(store: MemoryStore) -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=1.0, max_delay=8.0)
    waits = []
    for i in range(3):
        session = open_session(store, penalty=penalty, clock=clock)
        session.send(b"AUTH PLAIN " + b64(b"\0alice\0wrong%d" % i) + b"\r\n")
        waited = 0.0
        while session.take() != AUTH_FAILED:
            clock.advance(0.5)
            waited += 0.5
            assert waited < 30
        waits.append(waited)
        session.lose()
    # The failure delay, plus the penalty left when the attempt came.
    assert waits == [1.0, 1.0, 2.0]
    assert penalty.penalty("127.0.0.1") == 4.0
    session = open_session(store, penalty=penalty, clock=clock)
    session.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    clock.advance(3)
    assert session.take() == b"+OK Logged in.\r\n"


def test_broken_sasl_exchanges_count_against_the_address(store: MemoryStore) -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=1.0, max_delay=8.0)
    session = open_session(store, penalty=penalty, clock=clock)
    session.send(b"AUTH PLAIN " + b64(b"no nul bytes") + b"\r\n")
    clock.advance(1)
    assert session.take() == AUTH_FAILED
    assert penalty.penalty("127.0.0.1") == 1.0


def test_connection_lost_in_an_exchange(store: MemoryStore) -> None:
    session = open_session(store)
    session.send(b"AUTH LOGIN\r\n")
    session.lose()
    assert session.clock.getDelayedCalls() == []


def test_idle_timeout_in_an_exchange(store: MemoryStore) -> None:
    session = open_session(store, settings=SessionSettings(login_timeout=0))
    session.send(b"AUTH LOGIN\r\n")
    session.clock.advance(600)
    assert session.take() == b"-ERR Disconnected for inactivity.\r\n"


def test_login_timeout_in_an_exchange(store: MemoryStore) -> None:
    session = open_session(store)
    session.send(b"AUTH LOGIN\r\n")
    session.clock.advance(180)
    assert session.take() == b"-ERR Disconnected: no login in time.\r\n"


def test_auth_payloads_and_passwords_are_never_logged(store: MemoryStore,
                                                      log_events: list[dict[str, Any]]) -> None:
    session = open_session(store)
    session.send(b"AUTH PLAIN " + b64(b"\0alice\0hunter2xyz") + b"\r\n")
    session.clock.advance(1)
    session.send(b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"hunter2xyz") + b"\r\n")
    session.clock.advance(1)
    session.send(b"USER alice\r\nPASS hunter2xyz\r\n")
    session.clock.advance(1)
    text = repr(log_events)
    assert "hunter2xyz" not in text and "aHVudGVyMnh5eg" not in text


# -- the plaintext policy


@pytest.mark.parametrize("commands", [
    [b"USER alice"],
    [b"PASS secret"],
    [b"AUTH PLAIN " + b64(b"\0alice\0secret")],
    [b"AUTH PLAIN"],
    [b"AUTH LOGIN"],
])
def test_plaintext_passwords_refused_from_a_remote_client(store: MemoryStore,
                                                          commands: list[bytes]) -> None:
    checker = PasswordOnlyChecker(USERS)
    session = open_session(store, REMOTE, checker=checker)
    for command in commands:
        assert session.send(command + b"\r\n") == PLAINTEXT_REFUSED
    assert session.send(b"PASS secret\r\n") == PLAINTEXT_REFUSED
    assert checker.requests == []
    assert not session.transport.disconnecting


def test_capa_for_a_remote_client_hides_plaintext_logins(store: MemoryStore) -> None:
    session = open_session(store, REMOTE)
    assert capa(session) == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE",
                             b"PIPELINING", b"SASL CRAM-MD5", b"UTF8", b"IMPLEMENTATION popgate"]


def test_apop_works_from_a_remote_client(store: MemoryStore) -> None:
    portal, _ = make_portal(store, users=USERS)
    session = connect(portal, transport=StringTransport(peerAddress=REMOTE))
    challenge = re.search(rb"<[^>]+>", session.take()).group(0)  # type: ignore[union-attr]
    digest = hashlib.md5(challenge + b"secret").hexdigest().encode()
    assert session.send(b"APOP alice " + digest + b"\r\n") == b"+OK Logged in.\r\n"


def test_allow_plaintext_auth(store: MemoryStore) -> None:
    session = open_session(store, REMOTE, settings=SessionSettings(allow_plaintext_auth=True))
    assert b"USER" in capa(session)
    assert b"SASL PLAIN LOGIN CRAM-MD5" in capa(session)
    session.login()


def test_loopback_is_insecure_without_trusted_networks(store: MemoryStore) -> None:
    session = open_session(store, settings=SessionSettings(trusted_networks=()))
    assert session.send(b"USER alice\r\n") == PLAINTEXT_REFUSED
    assert b"USER" not in capa(session)


@pytest.mark.parametrize("peer, networks, trusted", [
    (IPv4Address("TCP", "127.0.0.1", 1), ("127.0.0.0/8", "::1/128"), True),
    (IPv4Address("TCP", "127.8.9.10", 1), ("127.0.0.0/8", "::1/128"), True),
    (IPv6Address("TCP", "::1", 1), ("127.0.0.0/8", "::1/128"), True),
    (IPv6Address("TCP", "::ffff:127.0.0.1", 1), ("127.0.0.0/8", "::1/128"), True),
    (IPv6Address("TCP", "fe80::1%eth0", 1), ("127.0.0.0/8", "::1/128"), False),
    (IPv4Address("TCP", "192.0.2.1", 1), ("127.0.0.0/8", "::1/128"), False),
    (IPv6Address("TCP", "2001:db8::1", 1), ("127.0.0.0/8", "::1/128"), False),
    (IPv4Address("TCP", "10.1.2.3", 1), ("10.0.0.0/8",), True),
    (IPv4Address("TCP", "127.0.0.1", 1), (), False),
    (UNIXAddress("/run/popgate.sock"), (), True),
    (object(), ("127.0.0.0/8",), False),
])
def test_peer_is_trusted(peer: Any, networks: tuple[str, ...], trusted: bool) -> None:
    assert peer_is_trusted(peer, networks) is trusted


# -- UTF8 (RFC 6856) and CAPA


def test_utf8_command(store: MemoryStore) -> None:
    store.add_message("jörg", b"Subject: x\n\ny\n")
    session = open_session(store)
    assert b"UTF8" in capa(session)
    assert session.send(b"UTF8\r\n") == b"+OK UTF8 enabled.\r\n"
    assert session.protocol.utf8
    assert session.send("USER jörg\r\nPASS päss\r\n".encode()) == b"+OK\r\n+OK Logged in.\r\n"
    assert session.send(b"UTF8\r\n") == b"-ERR Unknown command.\r\n"
    assert b"UTF8" not in capa(session)


@pytest.mark.parametrize("peer", [LOOPBACK_PEER, REMOTE])
def test_capa_keeps_implementation_last(store: MemoryStore, peer: Any) -> None:
    session = open_session(store, peer)
    assert capa(session)[-1] == b"IMPLEMENTATION popgate"
    session = open_session(store, peer, settings=SessionSettings(implementation=""))
    assert capa(session)[-1] == b"UTF8"


def test_capa_after_login_has_no_sasl(store: MemoryStore) -> None:
    session = open_session(store)
    session.login()
    assert not [c for c in capa(session) if c.split(b" ")[0] in (b"SASL", b"STLS", b"USER", b"UTF8")]


# -- the mechanisms on their own


def test_decode() -> None:
    assert sasl.decode(b"=") == b""
    assert sasl.decode(b"") == b""
    assert sasl.decode(b"AGEAYg==") == b"\0a\0b"
    for bad in (b"AGEAYg", b"AG EAYg==", b"====", b"\xff"):
        with pytest.raises(sasl.MalformedResponse):
            sasl.decode(bad)


def test_usable() -> None:
    assert [m.name for m in sasl.usable(True, True)] == [b"PLAIN", b"LOGIN", b"CRAM-MD5"]
    assert [m.name for m in sasl.usable(False, True)] == [b"CRAM-MD5"]
    assert [m.name for m in sasl.usable(True, False)] == [b"PLAIN", b"LOGIN"]
    assert sasl.usable(False, False) == []
    assert sasl.find(b"cram-md5") is not None and sasl.find(b"GSSAPI") is None


def test_checker_with_in_memory_database_verifies_cram_md5() -> None:
    """Twisted's in-memory checker (as in popgate.testing) checks it too."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    credentials = sasl.CramMD5Credentials(b"<1.2@h>", b"alice",
                                          hmac.new(b"secret", b"<1.2@h>", hashlib.md5).hexdigest().encode())
    assert checker.requestAvatarId(credentials).result == b"alice"  # type: ignore[attr-defined]


def test_cram_md5_credentials_provide_the_interface() -> None:
    from twisted.cred.credentials import IUsernameHashedPassword
    from zope.interface.verify import verifyObject

    assert verifyObject(IUsernameHashedPassword, sasl.CramMD5Credentials(b"<1.2@h>", b"u", b"0" * 32))
