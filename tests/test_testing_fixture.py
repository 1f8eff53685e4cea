"""
popgate.testing: the in-process POP3 server for other people's client
tests, its faults, its pytest fixture, and its one shared reactor thread.
Clients are python's poplib and a raw socket that keeps every byte.
"""

from __future__ import annotations

import os
import poplib
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import unittest
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper

from popgate.testing import Faults, POP3TestServer, reactor_thread
from popgate.testing.pytest_plugin import pop3_server  # noqa: F401
from popgate.testing.shaping import ShapingFactory
from tests import reactor_thread as tests_reactor_thread
from tests.popgate_server import REPO

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: hello\r\n\r\n.starts with a dot\r\nbye\r\n"


class Raw:
    """A client that keeps every byte and every recv() separately."""

    def __init__(self, server: POP3TestServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.buf = b""
        self.chunks: list[bytes] = []

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.chunks.append(data)
        self.buf += data
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self.recv():
                raise EOFError(self.buf)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until_eof(self) -> bytes:
        while self.recv():
            pass
        data, self.buf = self.buf, b""
        return data

    def cmd(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    with POP3TestServer(users={"alice": "pw", b"bob": b"bobpw"},
                        mailboxes={"alice": [MESSAGE, b"second\n"]}) as running:
        yield running


def login(server: POP3TestServer, user: str = "alice", password: str = "pw") -> poplib.POP3:
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user(user)
    client.pass_(password)
    return client


# -- the server


def test_serves_users_and_mailboxes(server):
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.address == (server.host, server.port)
    client = login(server)
    assert client.stat() == (2, len(MESSAGE) + len(b"second\r\n"))
    assert client.retr(1)[1] == [b"Subject: hello", b"", b".starts with a dot", b"bye"]
    client.dele(2)
    assert client.quit() == b"+OK Logging out, messages deleted."
    assert server.messages("alice") == [MESSAGE]
    assert server.messages("bob") == []


def test_retr_bytes_are_exact(server):
    raw = Raw(server)
    assert raw.line().startswith(b"+OK")
    assert raw.cmd(b"USER alice") == b"+OK"
    assert raw.cmd(b"PASS pw") == b"+OK Logged in."
    assert raw.cmd(b"RETR 1") == b"+OK %d octets" % len(MESSAGE)
    while not raw.buf.endswith(b"\r\n.\r\n"):
        raw.recv()
    assert raw.buf == b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n.\r\n"
    raw.close()


def test_add_message_and_user_while_running(server):
    uid = server.add_message("alice", b"third\n")
    assert uid
    server.add_user("carol", "carolpw")
    server.add_message(b"carol", b"for carol\n")
    client = login(server)
    assert client.stat()[0] == 3
    assert client.uidl(3).split()[-1] == uid
    client.quit()
    carol = login(server, "carol", "carolpw")
    assert carol.retr(1)[1] == [b"for carol"]
    carol.quit()


def test_apop_is_offered_and_works(server):
    client = poplib.POP3(server.host, server.port, timeout=10)
    assert b"<" in client.getwelcome()
    assert client.apop("bob", "bobpw").startswith(b"+OK")
    client.quit()


def test_wrong_password_is_auth_at_once(server):
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    started = time.monotonic()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")
    assert time.monotonic() - started < 0.5
    client.quit()


def test_one_session_per_mailbox(server):
    first = login(server)
    second = poplib.POP3(server.host, server.port, timeout=10)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("pw")
    first.quit()
    second.user("alice")
    assert second.pass_("pw").startswith(b"+OK")
    second.quit()


def test_stop_drops_sessions_without_update():
    server = POP3TestServer(users={"alice": "pw"}, mailboxes={"alice": [MESSAGE]}).start()
    client = login(server)
    client.dele(1)
    server.stop()
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.quit()
    assert server.messages("alice") == [MESSAGE]
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2)


def test_a_custom_store_has_no_add_message():
    from popgate.stores.memory import MemoryStore

    class Store:
        def open_maildrop(self, avatar_id: str) -> Any:
            raise AssertionError

    with POP3TestServer(store=Store()) as custom:
        with pytest.raises(TypeError):
            custom.add_message("alice", b"x")
    store = MemoryStore()
    with POP3TestServer(store=store) as memory:
        memory.add_message("alice", b"x\n")
        assert store.messages("alice") == [b"x\n"]


def test_one_reactor_thread_for_everybody():
    assert tests_reactor_thread.run is reactor_thread.run
    reactor = reactor_thread.start_reactor()
    assert reactor is reactor_thread.start_reactor()
    assert reactor.running
    names = [t.name for t in threading.enumerate() if t.name == "twisted-reactor"]
    assert names == ["twisted-reactor"]
    assert reactor_thread.run(lambda: 42) == 42


# -- faults


@pytest.mark.parametrize("code", ["IN-USE", "SYS/TEMP", "SYS/PERM"])
def test_login_errors(server, code):
    server.faults.login_error = code
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[%s\]" % code):
        client.pass_("pw")
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")  # a wrong password is still a wrong password
    server.faults.login_error = None
    client.user("alice")
    assert client.pass_("pw").startswith(b"+OK")
    client.quit()


def test_login_error_for_a_number_of_logins(server):
    server.faults.login_error = "SYS/TEMP"
    server.faults.login_error_times = 2
    for _ in range(2):
        client = poplib.POP3(server.host, server.port, timeout=10)
        client.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            client.pass_("pw")
        client.quit()
    assert server.faults.login_error is None
    login(server).quit()


def test_connection_dropped_during_retr(server):
    server.faults.drop_during_retr = True
    raw = Raw(server)
    raw.line()
    raw.cmd(b"USER alice")
    raw.cmd(b"PASS pw")
    assert raw.cmd(b"RETR 1") == b"+OK %d octets" % len(MESSAGE)
    rest = raw.until_eof()
    assert 0 < len(rest) < len(MESSAGE)
    assert (b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n").startswith(rest)
    raw.close()
    client = login(server)
    with pytest.raises((poplib.error_proto, EOFError, OSError)):
        client.retr(1)
    server.faults.drop_during_retr = False
    client = login(server)  # the dropped session changed nothing
    assert client.retr(1)[1][0] == b"Subject: hello"
    client.quit()


def test_split_writes_arrive_in_pieces(server):
    server.faults.split_writes = (1, 7)
    raw = Raw(server)
    greeting = raw.line()
    assert greeting.startswith(b"+OK popgate test server ready.")
    assert len(raw.chunks) > 1
    raw.cmd(b"USER alice")
    raw.cmd(b"PASS pw")
    raw.cmd(b"RETR 1")
    while not raw.buf.endswith(b"\r\n.\r\n"):
        raw.recv()
    assert raw.buf == b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n.\r\n"
    raw.close()
    client = login(server)  # poplib copes
    assert client.retr(2)[1] == [b"second"]
    client.quit()


class _RecordingTransport(StringTransport):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), data))
        super().write(data)


def _shaped(faults: Faults) -> tuple[ProtocolWrapper, _RecordingTransport, Clock, Any]:
    from twisted.internet.protocol import Factory, Protocol

    clock = Clock()
    received: list[bytes] = []

    class Inner(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    factory = ShapingFactory(Factory.forProtocol(Inner), faults, clock, seed=1)
    wrapper = factory.buildProtocol(None)
    transport = _RecordingTransport(clock)
    wrapper.makeConnection(transport)
    return wrapper, transport, clock, factory


def test_split_writes_one_piece_per_timer():
    wrapper, transport, clock, _ = _shaped(Faults(split_writes=(1, 7), split_interval=0.5))
    wrapper.write(b"+OK " + b"x" * 100 + b"\r\n")
    wrapper.loseConnection()
    assert transport.writes == []
    while clock.getDelayedCalls():
        clock.advance(0.5)
    pieces = [data for _, data in transport.writes]
    assert b"".join(pieces) == b"+OK " + b"x" * 100 + b"\r\n"
    assert all(1 <= len(p) <= 7 for p in pieces)
    assert len({len(p) for p in pieces}) > 1
    times = [t for t, _ in transport.writes]
    assert times == sorted(set(times))  # never two pieces at once
    assert transport.disconnecting  # closed only after the last piece


def test_response_delay_holds_every_write():
    wrapper, transport, clock, _ = _shaped(Faults(response_delay=2.0))
    wrapper.write(b"+OK one\r\n")
    clock.advance(1.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert transport.value() == b"+OK one\r\n"
    wrapper.write(b"+OK two\r\n")
    clock.advance(2.0)
    assert transport.value() == b"+OK one\r\n+OK two\r\n"


def test_a_failed_send_closes_after_what_was_sent():
    wrapper, transport, clock, _ = _shaped(Faults())
    wrapper.write(b"+OK 10 octets\r\npart")
    wrapper.abortConnection()
    assert transport.value() == b"+OK 10 octets\r\npart"
    assert transport.disconnecting


def test_shaping_pauses_a_producer_with_a_full_queue():
    wrapper, transport, clock, _ = _shaped(Faults(response_delay=0.5))
    events: list[str] = []

    class Producer:
        def pauseProducing(self) -> None:
            events.append("pause")

        def resumeProducing(self) -> None:
            events.append("resume")

        def stopProducing(self) -> None:
            events.append("stop")

    wrapper.registerProducer(Producer(), True)
    wrapper.write(b"x" * 70000)
    assert events == ["pause"]
    clock.advance(0.5)
    assert events == ["pause", "resume"]
    wrapper.unregisterProducer()


def test_slow_server(server):
    server.faults.response_delay = 0.3
    started = time.monotonic()
    client = poplib.POP3(server.host, server.port, timeout=10)
    assert time.monotonic() - started >= 0.3
    client.user("alice")
    assert time.monotonic() - started >= 0.6
    client.quit()


def test_capa_without_uidl_and_top(server):
    server.faults.hide_uidl_top = True
    client = poplib.POP3(server.host, server.port, timeout=10)
    assert "UIDL" not in client.capa() and "TOP" not in client.capa()
    client.user("alice")
    client.pass_("pw")
    assert "UIDL" not in client.capa() and "TOP" not in client.capa()
    with pytest.raises(poplib.error_proto, match="-ERR"):
        client.uidl()
    with pytest.raises(poplib.error_proto, match="-ERR"):
        client.top(1, 0)
    assert client.retr(1)[1][0] == b"Subject: hello"
    client.quit()


def test_faults_are_checked_and_reset():
    faults = Faults()
    with pytest.raises(ValueError):
        faults.login_error = "BUSY"
    with pytest.raises(ValueError):
        faults.split_writes = (0, 3)
    with pytest.raises(ValueError):
        Faults(response_delay=-1)
    with pytest.raises(ValueError):
        Faults(split_interval=-1)
    faults.login_error = "IN-USE"
    faults.hide_uidl_top = True
    faults.reset()
    assert faults == Faults()


# -- pytest and unittest


@pytest.fixture
def pop3_server_config():  # noqa: F811 - overrides the plugin's, as users do
    return {"users": {"alice": "pw"}, "mailboxes": {"alice": [MESSAGE]}}


def test_pop3_server_fixture(pop3_server):  # noqa: F811
    client = login(pop3_server)
    assert client.stat()[0] == 1
    client.dele(1)
    client.quit()
    assert pop3_server.messages("alice") == []


class UnittestStyle(unittest.TestCase):
    """How a unittest suite uses the context manager."""

    def setUp(self) -> None:
        self.server = POP3TestServer(users={"alice": "pw"})
        self.server.start()
        self.addCleanup(self.server.stop)

    def test_fetch(self) -> None:
        self.server.add_message("alice", b"Subject: u\r\n\r\nunit\r\n")
        client = login(self.server)
        self.assertEqual(client.retr(1)[1][-1], b"unit")
        client.quit()


def test_pytest_plugin_in_a_users_project(tmp_path):
    """A separate project's test suite loads the plugin and uses the fixture."""
    (tmp_path / "test_client.py").write_text(textwrap.dedent('''
        import poplib
        import pytest

        @pytest.fixture
        def pop3_server_config():
            return {"users": {"alice": "pw"}}

        def test_my_client(pop3_server):
            pop3_server.add_message("alice", b"Subject: a\\r\\n\\r\\nhi\\r\\n")
            pop3_server.faults.hide_uidl_top = True
            client = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
            client.user("alice")
            client.pass_("pw")
            assert client.retr(1)[1] == [b"Subject: a", b"", b"hi"]
            client.quit()
    '''))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "popgate.testing.pytest_plugin",
         "-p", "no:cacheprovider", "test_client.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_documented_example_test_passes(tmp_path):
    from tests.test_third_party_plugin import documented_files

    (tmp_path / "test_my_client.py").write_text(documented_files()["test_my_client.py"])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "popgate.testing.pytest_plugin",
         "-p", "no:cacheprovider", "test_my_client.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


ENTRY_POINT = "popgate.testing.pytest_plugin"


def test_the_plugin_is_a_pytest11_entry_point():
    """
    Installing popgate makes pop3_server available to every test suite.
    The entry point is named like its module, so C{-p
    popgate.testing.pytest_plugin} or C{pytest_plugins = [...]} on top of
    it finds it registered instead of registering the module twice.
    """
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project.get("entry-points", {}).get("pytest11") == {ENTRY_POINT: ENTRY_POINT}


@pytest.mark.parametrize("also", [[], ["-p", ENTRY_POINT]])
def test_the_entry_point_loads_the_fixture(tmp_path, also):
    """An installed pytest11 entry point (a dist-info of its own on the
    path, so the dev venv stays as it is) gives pop3_server to a suite that
    asks for nothing, and coexists with an explicit -p."""
    site = tmp_path / "site"
    info = site / "popgate_entry_point_probe-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: popgate-entry-point-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\n{ENTRY_POINT} = {ENTRY_POINT}\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_it.py").write_text(textwrap.dedent('''
        import poplib

        def test_fixture_from_the_entry_point(pop3_server):
            pop3_server.add_user("alice", "pw")
            client = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
            client.user("alice")
            assert client.pass_("pw").startswith(b"+OK")
            client.quit()
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *also,
                             "test_it.py"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
