"""
Hostile traffic against the real server (C{twistd -n popgate} on loopback):
a client that pipelines forever and never reads, a client that half-closes,
a client that keeps a connection open before login.  The measurements are
the server process's own (/proc/PID/status), each test bounded in time.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

USERS = ("hostile", "victim", "quitter", "dropper", "pipeliner")
BIG_MAILDIR = 2000
RSS_GROWTH_LIMIT = 16 * 1024 * 1024
LOGIN_LIMIT = 0.1   # seconds, connect to "+OK Logged in."
FLOOD_SECONDS = 3.0


def password(user: str) -> str:
    return f"{user}-pw"


def make_site(root) -> list[str]:
    """A passwd-file with {PLAIN} passwords (logins cost nothing), one
    2,000-message Maildir and a few small ones; the server's options."""
    with open(root / "passwd", "w") as f:
        f.writelines(f"{user}:{{PLAIN}}{password(user)}::::::\n" for user in USERS)
    for user in USERS:
        for sub in ("new", "cur", "tmp"):
            (root / "mail" / user / sub).mkdir(parents=True)
        count = BIG_MAILDIR if user == "hostile" else 3
        new = root / "mail" / user / "new"
        for i in range(count):
            (new / f"{1700000000 + i}.M{i}P1.hostile").write_bytes(b"Subject: %d\n\nhi\n" % i)
    return ["--auth", f"passwd-file:{root / 'passwd'}", "--store", f"maildir:{root / 'mail'}/%u"]


def start(tmp_path, *extra: str) -> PopgateProcess:
    server = PopgateProcess(make_site(tmp_path) + list(extra), log_path=str(tmp_path / "popgate.log"))
    server.mail = tmp_path / "mail"  # type: ignore[attr-defined]
    return server


@pytest.fixture
def server(tmp_path) -> Iterator[PopgateProcess]:
    """A server of its own for each flood: one test's wreck is not the next's."""
    with start(tmp_path) as server:
        yield server
        # A server still busy with a flood may not get to SIGTERM for a
        # while: give it 3 s, then SIGKILL (not the usual 10 s).
        server.stop(timeout=3)


def rss(server: PopgateProcess) -> int:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def timed_login(port: int, user: str = "victim", timeout: float = 1.0) -> float:
    """Seconds from connect to C{+OK} after PASS (inf if it never came)."""
    began = time.monotonic()
    try:
        with RawClient(port, timeout=timeout) as client:
            assert client.greeting is not None and client.greeting.startswith(b"+OK")
            client.send(b"USER %s\r\nPASS %s\r\n" % (user.encode(), password(user).encode()))
            assert client.line().startswith(b"+OK")
            reply = client.line()
            elapsed = time.monotonic() - began
            assert reply.startswith(b"+OK"), reply
            client.cmd(b"QUIT")
            return elapsed
    except (TimeoutError, OSError):
        return float("inf")


class Flood:
    """Write C{data} in one go from a thread, never reading: the kernel's
    buffers fill and C{sendall} blocks once the server stops reading."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock = sock
        sock.settimeout(FLOOD_SECONDS + 5)
        self.thread = threading.Thread(target=self._send, args=(data,), daemon=True)
        self.thread.start()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # closed under us, or timed out: the server stopped reading

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a sendall blocked in the thread
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)


def flood_and_measure(server: PopgateProcess, hostile: socket.socket, data: bytes) -> None:
    """While C{hostile} floods, another client's logins stay fast and the
    server's memory stays bounded; once it is gone the server still serves."""
    timed_login(server.port)  # warm: the victim's snapshot and the auth cache
    before = rss(server)
    flood = Flood(hostile, data)
    logins, peak = [], before
    end = time.monotonic() + FLOOD_SECONDS
    try:
        while time.monotonic() < end:
            time.sleep(0.3)
            logins.append(timed_login(server.port))
            peak = max(peak, rss(server))
        peak = max(peak, rss(server))
    finally:
        flood.stop()
    after = timed_login(server.port)
    figures = (f"logins during the flood {' '.join(f'{t * 1000:.0f}' for t in logins)} ms,"
               f" RSS +{(peak - before) / 2**20:.1f} MB, login after it {after * 1000:.0f} ms")
    print(figures)  # shown with -s
    assert max(logins) < LOGIN_LIMIT, figures
    assert peak - before <= RSS_GROWTH_LIMIT, figures
    assert after < 1.0, figures
    assert "Traceback" not in server.log()


def test_uidl_flood_after_login_is_bounded(server):
    hostile = RawClient(server.port)
    hostile.login(b"hostile", password("hostile").encode())
    assert hostile.cmd(b"STAT").startswith(b"+OK %d " % BIG_MAILDIR)
    # 20,000 UIDL listings of 2,000 lines: about 1.2 GB of replies.
    flood_and_measure(server, hostile.sock, b"UIDL\r\n" * 20_000)


def test_capa_flood_before_login_is_bounded(server):
    hostile = RawClient(server.port)
    flood_and_measure(server, hostile.sock, b"CAPA\r\n" * 100_000)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[PopgateProcess]:
    """One server for the half-close tests (each uses its own mailbox)."""
    with start(tmp_path_factory.mktemp("half-close")) as server:
        yield server


def messages(server: PopgateProcess, user: str) -> list[str]:
    root = server.mail / user  # type: ignore[attr-defined]
    return sorted(name.split(":")[0] for sub in ("new", "cur") for name in os.listdir(root / sub))


def half_closed(server: PopgateProcess, user: str, commands: bytes, wait_greeting: bool) -> list[bytes]:
    """Send C{commands} in one write, shut the write side, read to EOF."""
    with RawClient(server.port, timeout=10, read_greeting=wait_greeting) as client:
        client.send(commands)
        client.half_close()
        lines = client.until_eof(10.0).split(b"\r\n")
    if client.greeting is not None:
        lines.insert(0, client.greeting)
    return lines


@pytest.mark.parametrize("wait_greeting", [True, False], ids=["after-greeting", "at-once"])
def test_half_close_after_quit_commits(shared_server, wait_greeting):
    server = shared_server
    user = "quitter" if wait_greeting else "pipeliner"
    before = messages(server, user)
    lines = half_closed(server, user, b"USER %s\r\nPASS %s\r\nDELE 1\r\nQUIT\r\n" % (
        user.encode(), password(user).encode()), wait_greeting)
    assert [line[:3] for line in lines] == [b"+OK"] * 5 + [b""], lines  # greeting .. QUIT, EOF
    assert messages(server, user) == before[1:]


def test_half_close_without_quit_deletes_nothing(shared_server):
    server = shared_server
    before = messages(server, "dropper")
    lines = half_closed(server, "dropper", b"USER dropper\r\nPASS %s\r\nDELE 1\r\n" % (
        password("dropper").encode()), wait_greeting=True)
    assert [line[:3] for line in lines] == [b"+OK"] * 4 + [b""], lines  # greeting, USER, PASS, DELE
    assert messages(server, "dropper") == before
    # And the mailbox was given back: the next login is not [IN-USE].
    assert timed_login(server.port, "dropper") < 1.0
    assert messages(server, "dropper") == before


@pytest.fixture(scope="module")
def login_timeout_server(tmp_path_factory) -> Iterator[PopgateProcess]:
    with start(tmp_path_factory.mktemp("login-timeout"), "--login-timeout", "3") as server:
        yield server


def test_login_timeout_is_absolute(login_timeout_server):
    """CAPA every 0.5 s does not keep an unauthenticated client in."""
    client = RawClient(login_timeout_server.port)
    began = time.monotonic()
    lines: list[bytes] = []
    try:
        while time.monotonic() - began < 8:
            client.sock.sendall(b"CAPA\r\n")
            lines.append(client.line())
            if lines[-1].startswith(b"+OK"):
                client.multi()
            time.sleep(0.5)
        raise AssertionError("still connected after 8 s")
    except (EOFError, ConnectionError):
        elapsed = time.monotonic() - began
    finally:
        client.close()
    assert 2.5 <= elapsed <= 5.0, elapsed
    assert lines and lines[-1].startswith(b"-ERR"), lines[-3:]


def test_login_timeout_ends_at_login(login_timeout_server):
    """After login only the idle timer applies: NOOPs keep the session."""
    client = RawClient(login_timeout_server.port)
    client.login(b"victim", password("victim").encode())
    began = time.monotonic()
    while time.monotonic() - began < 4.0:  # past the 3 s limit
        assert client.cmd(b"NOOP") == b"+OK"
        time.sleep(0.5)
    assert client.cmd(b"QUIT").startswith(b"+OK")
    client.close()
