"""
fail2ban over real popgate output: a real twistd popgate takes failed and
successful logins from poplib (directly, and through a PROXY header as
HAProxy sends it), and Debian's C{fail2ban-regex} with the shipped filter
must find every failed login, with the client's real address, and no
success.
"""

from __future__ import annotations

import ast
import json
import os
import poplib
import socket
import subprocess
import time
from typing import Any

import pytest

from popgate.cred.schemes import hash_password
from tests.popgate_server import REPO, PopgateProcess, free_port
from tests.services import need_program

pytestmark = pytest.mark.integration

FILTER = os.path.join(REPO, "etc", "fail2ban", "filter.d", "popgate.conf")
JAIL = os.path.join(REPO, "etc", "fail2ban", "jail.d", "popgate.conf")
# The address the PROXY header claims: loopback, so plaintext passwords are
# accepted, and not the 127.0.0.2 the connection comes from.
PROXIED_CLIENT = "127.0.0.9"


class ProxiedPOP3(poplib.POP3):
    """poplib from 127.0.0.2, saying it relays C{client} (PROXY v1)."""

    def __init__(self, port: int, client: str) -> None:
        self.client = client
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: Any) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=("127.0.0.2", 0))
        sock.sendall(f"PROXY TCP4 {self.client} 127.0.0.1 40000 110\r\n".encode())
        return sock


def failed_login(client: poplib.POP3, user: str, password: str) -> None:
    client.user(user)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_(password)
    client.quit()


def wait_for_lines(path: str, text: str, count: int, timeout: float = 20) -> list[str]:
    """The lines of C{path} containing C{text}, once there are C{count}."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if text in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def fail2ban_rows(log_path: str) -> list[tuple[str, dict[str, Any]]]:
    """(address, fields) of every line C{fail2ban-regex} matches."""
    program = need_program("fail2ban-regex", "fail2ban")
    result = subprocess.run([program, "--out", "row", log_path, FILTER], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = []
    for line in result.stdout.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("["):
            address, _, fields = ast.literal_eval(line)
            rows.append((address, fields))
    return rows


@pytest.fixture(params=["text", "json"])
def server(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    need_program("fail2ban-regex", "fail2ban")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('right', rounds=4, prefix=False)}\n")
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "mail" / "alice" / sub).mkdir(parents=True)
    (tmp_path / "mail" / "alice" / "new" / "1.M1P1.test").write_bytes(b"Subject: x\n\nhi\n")
    proxied_port = free_port()
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n",
            "--pop3", f"haproxy:tcp:{proxied_port}:interface=127.0.0.1",
            # No penalty for loopback: the failures are not slowed down.
            "--exempt-networks", "127.0.0.0/8", "--auth-failure-delay", "0",
            "--log-format", request.param]
    log_path = str(tmp_path / "popgate.log")
    with PopgateProcess(args, log_path=log_path) as process:
        process.proxied_port = proxied_port  # type: ignore[attr-defined]
        process.log_format = request.param  # type: ignore[attr-defined]
        yield process


def test_fail2ban_finds_every_failed_login_and_no_success(server: Any) -> None:
    failed_login(poplib.POP3("127.0.0.1", server.port, timeout=20), "alice", "wrong")
    failed_login(poplib.POP3("127.0.0.1", server.port, timeout=20), "nobody", "guess")
    # Two failures in one session, then a success in the same session.
    client = poplib.POP3("127.0.0.1", server.port, timeout=20)
    for password in ("guess1", "guess2"):
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_(password)
    client.user("alice")
    assert client.pass_("right").startswith(b"+OK")
    assert client.retr(1)[0].startswith(b"+OK")
    client.quit()
    failed_login(ProxiedPOP3(server.proxied_port, PROXIED_CLIENT), "alice", "wrong")
    proxied = ProxiedPOP3(server.proxied_port, PROXIED_CLIENT)
    proxied.user("alice")
    proxied.pass_("right")
    proxied.quit()

    logins = wait_for_lines(server.log_path, "pop3-login: Login", 7)
    failures = [line for line in logins if "Login failed:" in line]
    assert len(logins) == 7 and len(failures) == 5, logins
    if server.log_format == "json":
        for line in logins:
            assert json.loads(line)["event"] == "pop3.login"
    rows = fail2ban_rows(server.log_path)
    assert [address for address, _ in rows] == ["127.0.0.1"] * 4 + [PROXIED_CLIENT]
    assert [fields["user"] for _, fields in rows] == ["alice", "nobody", "alice", "alice",
                                                     "alice"]
    # The real client, not the proxy the connection came from.
    assert "127.0.0.2" not in open(server.log_path).read()


def test_the_jail_names_the_filter() -> None:
    with open(JAIL) as f:
        jail = f.read()
    assert "[popgate]" in jail and "filter   = popgate" in jail
    assert os.path.basename(FILTER) == "popgate.conf"


def test_the_filter_reads_syslog_and_journal_lines_and_resists_forged_addresses(
        tmp_path: Any) -> None:
    """Lines as syslog and the journal pass them on (twistd --syslog, the
    shipped unit's standard output), and a user name that tries to forge a
    second rip= (popgate escapes its >)."""
    log = tmp_path / "syslog"
    fields = ("method=PLAIN, rip={ip}, lip=::1, tls=yes, attempts=1, wait=0.0, "
              "duration=0.01, session=<a>")
    log.write_text(
        "Mar 10 12:00:00 mail twistd[12]: 2025-03-10T12:00:00+0000 [popgate.pop3.protocol."
        "POP3ServerProtocol#info] pop3-login: Login failed: reason=unknown-user, user=<x>, "
        + fields.format(ip="2001:db8::7") + "\n"
        "Mar 10 12:00:01 mail popgate[12]: [-] pop3-login: Login failed: reason=bad-password, "
        "user=<x\\x3e, rip=198.51.100.1>, " + fields.format(ip="192.0.2.9") + "\n"
        "Mar 10 12:00:02 mail popgate[12]: [-] pop3-login: Login failed: reason=aborted, "
        "user=<x>, " + fields.format(ip="192.0.2.10") + "\n"
        "Mar 10 12:00:03 mail popgate[12]: [-] pop3-login: Login: user=<x>, "
        + fields.format(ip="192.0.2.11") + "\n"
        # --syslog --log-format json, from the first process and a worker.
        + "".join(
            f'Mar 10 12:00:0{4 + n} mail popgate[12]: {system} {{"time": "2025-03-10T12:00:0'
            f'{4 + n}.0Z", "level": "info", "event": "pop3.login", "text": "pop3-login: Login '
            f'failed: reason=bad-password, user=<x>, ' + fields.format(ip=ip) + '"}\n'
            for n, (system, ip) in enumerate([("[-]", "192.0.2.12"),
                                              ("[worker=1]", "192.0.2.13")])))
    assert [address for address, _ in fail2ban_rows(str(log))] == [
        "2001:db8::7", "192.0.2.9", "192.0.2.12", "192.0.2.13"]


class LogFileProcess(PopgateProcess):
    """twistd writing its log to a file it rotates (C{--logfile}), not to
    standard output."""

    def __init__(self, args: list[str], logfile: str, **kw: Any) -> None:
        super().__init__(args, **kw)
        self.logfile = logfile

    def command_line(self) -> list[str]:
        cmd = super().command_line()
        at = cmd.index("-n")
        return [*cmd[:at + 1], "--logfile", self.logfile, *cmd[at + 1:]]


def worker_listens(parent: int, port: int) -> bool:
    """Whether a child of C{parent} listens on C{port} too."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True,
                              text=True).stdout.split()
    listening = subprocess.run(["ss", "-tlnpH", f"sport = :{port}"], capture_output=True,
                               text=True).stdout
    return any(f"pid={child}," in listening for child in children)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_fail2ban_finds_the_failed_logins_the_workers_served(tmp_path: Any,
                                                              log_format: str) -> None:
    """twistd --logfile with --workers 2: the worker's logins are in the
    file too (not on twistd's standard output), and the filter finds every
    failure, whichever process served it."""
    need_program("fail2ban-regex", "fail2ban")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('right', rounds=4, prefix=False)}\n")
    (tmp_path / "mail").mkdir()
    logfile = str(tmp_path / "twistd.log")
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n",
            "--exempt-networks", "127.0.0.0/8", "--auth-failure-delay", "0",
            "--workers", "2", "--log-format", log_format]
    stdout = str(tmp_path / "stdout")
    with LogFileProcess(args, logfile, log_path=stdout) as server:
        deadline = time.monotonic() + 30
        while not worker_listens(server.process.pid, server.port):
            assert time.monotonic() < deadline, "the worker never listened"
            time.sleep(0.2)
        # The kernel spreads connections over both processes: fail in
        # batches until each served some (2^-8 odds of a batch to one).
        failures = 0
        for _ in range(5):
            for _ in range(8):
                failed_login(poplib.POP3("127.0.0.1", server.port, timeout=20), "alice",
                             "wrong")
                failures += 1
            lines = wait_for_lines(logfile, "pop3-login: Login failed:", failures)
            assert len(lines) == failures, lines
            by_worker = ["worker=1" in line if log_format == "text"
                         else json.loads(line).get("worker") == 1 for line in lines]
            if any(by_worker) and not all(by_worker):
                break
        else:
            pytest.fail("every login went to one process")
        with open(stdout) as f:
            assert "pop3-login" not in f.read()  # all in the file
    rows = fail2ban_rows(logfile)
    assert [address for address, _ in rows] == ["127.0.0.1"] * failures
    assert {fields["user"] for _, fields in rows} == {"alice"}
