"""
LOGIN-DELAY and EXPIRE over real sockets with python's poplib: a server on
the reactor thread whose clock is a fake one the test moves, and the real
C{twistd popgate} restarted (and then run with C{--workers 2}): the last
login lives in the mail store, so neither a restart nor another process
forgets it.
"""

from __future__ import annotations

import poplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.portal import Portal
from twisted.internet.task import Clock

from popgate.cred.passwdfile import PasswdFileChecker
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.maildir import MaildirStore
from tests.pop3_policy_site import DAY, T0
from tests.popgate_server import PopgateProcess
from tests.reactor_thread import run, start_reactor

pytestmark = pytest.mark.integration

USERS = "alice:{PLAIN}secret::::::\nbob:{PLAIN}hunter2::::::login_delay=60 expire=never\n"


class Server:
    """A POP3 listener on 127.0.0.1 in the reactor thread, timed by C{clock}."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        reactor = start_reactor()
        self.clock = Clock()
        self.clock.advance(T0)
        (tmp / "users").write_text(USERS)
        self.store = MaildirStore(str(tmp / "mail" / "%n"), reactor=reactor)
        portal = Portal(MaildropRealm(self.store, reactor, self.clock),
                        [PasswdFileChecker(str(tmp / "users"), reactor)])
        factory = POP3ServerFactory(portal, SessionSettings(implementation="", **settings),
                                    self.clock)
        self.listener = run(reactor.listenTCP, 0, factory, interface="127.0.0.1")
        self.port = self.listener.getHost().port

    def advance(self, seconds: float) -> None:
        run(self.clock.advance, seconds)

    def deliver(self, user: str, message: bytes) -> None:
        run(self.store.deliver, user, message)

    def client(self) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", self.port, timeout=20)

    def stop(self) -> None:
        run(self.listener.stopListening)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, login_delay=900, expire=0.0)
    try:
        yield server
    finally:
        server.stop()


def log_in(server: Server, user: str = "alice", password: str = "secret") -> poplib.POP3:
    client = server.client()
    client.user(user)
    client.pass_(password)
    return client


def test_login_delay_over_a_socket(server: Server) -> None:
    server.deliver("alice", b"Subject: one\n\nbody\n")
    client = server.client()
    assert client.capa() == {
        "CAPA": [], "TOP": [], "UIDL": [], "RESP-CODES": [], "AUTH-RESP-CODE": [],
        "PIPELINING": [], "USER": [], "SASL": ["PLAIN", "LOGIN", "CRAM-MD5"], "UTF8": [],
        "LOGIN-DELAY": ["900", "USER"], "EXPIRE": ["0", "USER"]}
    client.user("alice")
    client.pass_("secret")
    assert client.capa()["LOGIN-DELAY"] == ["900"]
    client.quit()
    server.advance(600)
    with pytest.raises(poplib.error_proto) as refused:
        log_in(server)
    assert refused.value.args[0] == b"-ERR [LOGIN-DELAY] Logins must be at least 900 seconds apart."
    server.advance(300)
    log_in(server).quit()


def test_a_users_own_values_over_a_socket(server: Server) -> None:
    server.deliver("bob", b"Subject: one\n\nbody\n")
    client = log_in(server, "bob", "hunter2")
    capa = client.capa()
    assert (capa["LOGIN-DELAY"], capa["EXPIRE"]) == (["60"], ["NEVER"])
    client.retr(1)
    client.quit()
    server.advance(60)
    client = log_in(server, "bob", "hunter2")
    assert client.stat() == (1, 22)  # EXPIRE NEVER: kept
    client.quit()


def test_expire_0_over_a_socket(server: Server) -> None:
    for n in (1, 2):
        server.deliver("alice", b"Subject: %d\n\nbody\n" % n)
    client = log_in(server)
    client.top(1, 0)
    client.retr(2)
    assert client.quit() == b"+OK Logging out, messages deleted."
    server.advance(900)
    client = log_in(server)
    assert client.stat() == (1, 20)  # TOP did not count
    client.quit()


def test_expire_n_days_over_a_socket(tmp_path: Path) -> None:
    server = Server(tmp_path, expire=7.0)
    try:
        server.deliver("alice", b"Subject: 1\n\nbody\n")
        client = log_in(server)
        assert client.capa()["EXPIRE"] == ["7"]
        client.retr(1)
        client.quit()
        server.advance(7 * DAY - 1)
        log_in(server).quit()
        client = log_in(server)
        assert client.stat()[0] == 1
        client.quit()
        server.advance(1)
        log_in(server).quit()  # this QUIT removes it
        assert log_in(server).stat() == (0, 0)
    finally:
        server.stop()


def test_the_last_login_survives_a_restart_and_is_shared_by_workers(tmp_path: Path) -> None:
    (tmp_path / "users").write_text(USERS)
    args = ["--auth", f"passwd-file:{tmp_path / 'users'}", "--store",
            f"maildir:{tmp_path / 'mail'}/%n", "--login-delay", "3600", "--expire", "never"]
    with PopgateProcess(args, log_path=str(tmp_path / "first.log")) as first:
        client = poplib.POP3("127.0.0.1", first.port, timeout=20)
        capa = client.capa()
        assert (capa["LOGIN-DELAY"], capa["EXPIRE"]) == (["3600", "USER"], ["NEVER", "USER"])
        client.user("alice")
        client.pass_("secret")
        client.quit()
    assert (tmp_path / "mail" / "alice" / "popgate-lastlogin").exists()
    with PopgateProcess(args + ["--workers", "2"], log_path=str(tmp_path / "second.log")) as again:
        for _ in range(4):  # whichever process takes the connection
            client = poplib.POP3("127.0.0.1", again.port, timeout=20)
            client.user("alice")
            with pytest.raises(poplib.error_proto) as refused:
                client.pass_("secret")
            assert refused.value.args[0].startswith(b"-ERR [LOGIN-DELAY] ")
            client.quit()
    log = (tmp_path / "second.log").read_text()
    assert "reason=login-delay" in log
