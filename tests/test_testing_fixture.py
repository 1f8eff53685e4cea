"""
popgate.testing: the in-process POP3 server for other people's client
tests, its faults, its pytest fixture, and its one shared reactor thread.
Clients are python's poplib and L{RawClient}, which keeps every byte.  The
in-memory server and the shaping are tested in C{test_testing_memory.py}.
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
import unittest
from typing import Any

import pytest

from popgate.testing import POP3TestServer, reactor_thread
from popgate.testing.pytest_plugin import pop3_server  # noqa: F401
from tests import reactor_thread as tests_reactor_thread
from tests.pop3_oracle import RawClient
from tests.popgate_server import REPO

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: hello\r\n\r\n.starts with a dot\r\nbye\r\n"


def raw(server: POP3TestServer) -> RawClient:
    """The raw client, greeted: every byte and every recv() kept."""
    return RawClient(server.port, server.host, timeout=10)


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
    client = raw(server)
    assert client.greeting is not None and client.greeting.startswith(b"+OK")
    assert client.cmd(b"USER alice") == b"+OK"
    assert client.cmd(b"PASS pw") == b"+OK Logged in."
    assert client.cmd(b"RETR 1") == b"+OK %d octets" % len(MESSAGE)
    assert client.multi() == b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n.\r\n"
    client.close()


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
    with pytest.raises(poplib.error_proto, match=rf"\[{code}\]"):
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
    client = raw(server)
    client.cmd(b"USER alice")
    client.cmd(b"PASS pw")
    assert client.cmd(b"RETR 1") == b"+OK %d octets" % len(MESSAGE)
    rest = client.until_eof()
    assert 0 < len(rest) < len(MESSAGE)
    assert (b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n").startswith(rest)
    client.close()
    client = login(server)
    with pytest.raises((poplib.error_proto, EOFError, OSError)):
        client.retr(1)
    server.faults.drop_during_retr = False
    client = login(server)  # the dropped session changed nothing
    assert client.retr(1)[1][0] == b"Subject: hello"
    client.quit()


def test_split_writes_arrive_in_pieces(server):
    server.faults.split_writes = (1, 7)
    client = raw(server)
    assert client.greeting is not None
    assert client.greeting.startswith(b"+OK popgate test server ready.")
    assert len(client.chunks) > 1
    client.cmd(b"USER alice")
    client.cmd(b"PASS pw")
    client.cmd(b"RETR 1")
    assert client.multi() == b"Subject: hello\r\n\r\n..starts with a dot\r\nbye\r\n.\r\n"
    client.close()
    client = login(server)  # poplib copes
    assert client.retr(2)[1] == [b"second"]
    client.quit()


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


# -- pytest and unittest


@pytest.fixture
def pop3_server_config():  # overrides the plugin's, as users do
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

    (tmp_path / "test_my_client.py").write_text(documented_files("test-server.md")["test_my_client.py"])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "popgate.testing.pytest_plugin",
         "-p", "no:cacheprovider", "test_my_client.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


ENTRY_POINT = "popgate.testing.pytest_plugin"


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
