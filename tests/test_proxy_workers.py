"""
haproxy: listeners in real processes: popgate --workers 2 behind
hand-made PROXY v1 and v2 headers over real sockets, and behind a real
HAProxy with send-proxy-v2 and check-send-proxy health checks.
"""

from __future__ import annotations

import poplib
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from popgate.cred.schemes import hash_password
from popgate.proxy_protocol import HEALTH_REPLY
from tests import haproxy_server
from tests.popgate_server import PopgateProcess, twistd_command
from tests.services import need_program
from tests.test_proxy_protocol import v1, v2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
LOCAL_HEADER = v2(None, command=0)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def session(port: int, data: bytes, host: str = "127.0.0.1", source: str = "127.0.0.1") -> bytes:
    """Connect from C{source}, send C{data} at once, return the replies
    (none when the server resets the connection, even before C{connect}
    returns)."""
    try:
        with socket.create_connection((host, port), timeout=10,
                                      source_address=(source, 0)) as s:
            s.sendall(data)
            return read_all(s)
    except (ConnectionResetError, BrokenPipeError):
        return b""


class ProxiedPopgate(PopgateProcess):
    """popgate listening only on a haproxy: listener on C{host}; ready once
    it answers a health check (a v2 LOCAL header)."""

    def __init__(self, args: Sequence[str], host: str, log_path: Path) -> None:
        super().__init__(args, log_path=str(log_path))
        self.host = host

    def command_line(self) -> list[str]:
        return twistd_command() + ["-n", "--pidfile=", "popgate", "--pop3",
                                   f"haproxy:tcp:{self.port}:interface={self.host}", *self.args]

    def ready(self) -> bool:
        return session(self.port, LOCAL_HEADER, self.host) == HEALTH_REPLY

    def __enter__(self) -> ProxiedPopgate:
        self.start()
        return self

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        """Until C{count} processes listen on the port (SO_REUSEPORT)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = subprocess.run(["ss", "-tlnpH", f"sport = :{self.port}"],
                                       capture_output=True, text=True).stdout
            if len(set(re.findall(r"pid=(\d+),", listening))) >= count:
                return
            time.sleep(0.2)
        pytest.fail(f"not {count} processes listening on {self.port}: {listening}")


@pytest.fixture
def users(tmp_path: Path) -> list[str]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    (tmp_path / "mail" / "alice" / "new").mkdir(parents=True)
    (tmp_path / "mail" / "alice" / "new" / "1700000000.M1P1.host").write_bytes(
        b"Subject: x\n\nhi\n")
    return ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n"]


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def serving(lines: list[str]) -> list[str]:
    """The lines before the stop (a worker stopped by SIGTERM and its
    parent's pipe at once may log ReactorNotRunning, a known race of
    popgate.workers, not of what these tests are about)."""
    for number, line in enumerate(lines):
        if "Received SIGTERM" in line:
            return lines[:number]
    return lines


def by_worker(lines: list[str], text: str) -> set[str]:
    """Which processes (C{first}, C{worker=1}) logged a line containing C{text}."""
    found = set()
    for line in lines:
        if text in line:
            found.add("worker=1" if "[worker=1 " in line else "first")
    return found


LOGIN = b"USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n"


def test_two_workers_read_hand_made_v1_and_v2_headers(tmp_path: Path, users: list[str]) -> None:
    log = tmp_path / "popgate.log"
    args = users + ["--workers", "2", "--allow-plaintext-auth",
                    "--proxy-trusted", "127.0.0.1"]  # only this one: 127.0.0.9 is not
    with ProxiedPopgate(args, "127.0.0.1", log) as server:
        server.wait_for_workers(2)
        clients = {"v1": ("192.0.2.11", v1("192.0.2.11")),
                   "v2": ("2001:db8::22", v2("2001:db8::22"))}
        # Until both processes have served both kinds (the kernel picks;
        # bounded in count).
        for _ in range(60):
            for version, (_, header) in clients.items():
                # The header in two pieces, as a slow proxy might send it.
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                    s.sendall(header[:5])
                    time.sleep(0.01)
                    s.sendall(header[5:] + LOGIN)
                    reply = read_all(s)
                assert b"+OK Logged in.\r\n" in reply and b"\r\n+OK 1 " in reply, (
                    version, reply)
            lines = log_lines(log)
            if all(by_worker(lines, f"Login: user=<alice>, method=USER, rip={client},")
                   == {"first", "worker=1"} for client, _ in clients.values()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("not every process logged a login of each client:\n"
                        + "\n".join(log_lines(log)[-40:]))
        # Not a trusted proxy: closed before a byte is read, whatever it sends.
        for _ in range(6):
            assert session(server.port, v1("127.0.0.1") + LOGIN, source="127.0.0.9") == b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            refused = [line for line in log_lines(log) if "proxy: Refused:" in line]
            if len(refused) >= 6:
                break
            time.sleep(0.1)
    assert len(refused) == 6
    assert all("reason=untrusted, rip=127.0.0.9, lip=127.0.0.1" in line for line in refused)
    lines = log_lines(log)
    assert not any("rip=127.0.0.1," in line and "pop3-login:" in line for line in lines)
    assert not any("Traceback" in line for line in serving(lines))


HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket @STATS@ mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 11m
    timeout server 11m
    timeout check 2s

frontend pop3
    bind 127.0.0.1:@PORT@
    default_backend popgate

backend popgate
    balance leastconn
    server node1 127.0.0.2:{popgate} send-proxy-v2 check check-send-proxy inter 200ms rise 1 fall 2
"""


class FromAddress(poplib.POP3):
    """poplib from a chosen loopback address: the client address HAProxy
    puts in its header is then not the proxy's own."""

    source = "127.0.0.7"

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


def test_behind_a_real_haproxy_with_health_checks(tmp_path: Path, users: list[str]) -> None:
    need_program("haproxy", "haproxy")
    log = tmp_path / "popgate.log"
    args = users + ["--workers", "2", "--log-level", "debug"]
    with ProxiedPopgate(args, "127.0.0.2", log) as server:
        server.wait_for_workers(2)
        proxy, port = haproxy_server.start(HAPROXY_CONFIG.format(popgate=server.port), tmp_path)
        try:
            assert proxy.wait_until_up() == {"popgate/node1": "UP"}
            for _ in range(8):  # the kernel spreads them over both processes
                client = FromAddress("127.0.0.1", port, timeout=10)
                assert client.getwelcome().startswith(b"+OK")
                client.user("alice")
                client.pass_("pw")
                assert client.stat()[0] == 1
                client.quit()
            time.sleep(1.0)  # a few more health checks
            states = proxy.server_states()
        finally:
            proxy.stop()
        assert states == {"popgate/node1": "UP"}, proxy.log()
    lines = log_lines(log)
    logins = [line for line in lines if "pop3-login: Login: user=<alice>" in line]
    assert len(logins) == 8 and all("rip=127.0.0.7," in line for line in logins), logins
    # Health checks: answered (HAProxy says UP), each a debug line, no
    # session and no line above debug.
    checks = [line for line in lines if "PROXY v2 LOCAL (a health check)" in line]
    assert len(checks) >= 5, lines[-30:]
    connects = [line for line in lines if "pop3-login: Connect:" in line]
    assert len(connects) == 8 and all("rip=127.0.0.7," in line for line in connects)
    assert not [line for line in serving(lines) if re.search(r"#(warn|error|critical)\]", line)
                or "Traceback" in line or "proxy: Refused:" in line]


def test_the_example_haproxy_config_is_valid(tmp_path: Path) -> None:
    program = need_program("haproxy", "haproxy")
    checked = subprocess.run([program, "-c", "-f", str(REPO / "etc" / "haproxy" / "popgate.cfg")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
