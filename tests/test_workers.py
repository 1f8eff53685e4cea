"""
--workers N: several processes share the listening port (SO_REUSEPORT);
the maildrop lock stays exclusive across them; workers die with the parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from twisted.python import usage

from popgate.cred.schemes import hash_password
from popgate.workers.reuseport import parse_tcp_endpoint
from tests.harness import alive, free_port, greets
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess, run_twistd

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_endpoint_parsing():
    assert parse_tcp_endpoint("tcp:1110:interface=127.0.0.1")[1:] == ("127.0.0.1", 1110, 511)
    assert parse_tcp_endpoint("tcp6:port=995:interface=\\:\\:1:backlog=50")[1:] == ("::1", 995, 50)
    with pytest.raises(usage.UsageError):
        parse_tcp_endpoint("unix:/tmp/sock")
    with pytest.raises(usage.UsageError):
        parse_tcp_endpoint("tcp:interface=127.0.0.1")


def test_two_workers_share_the_port_and_the_lock(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    (tmp_path / "mail" / "alice" / "new").mkdir(parents=True)
    (tmp_path / "mail" / "alice" / "new" / "1700000000.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n",
            "--workers", "2"]
    with PopgateProcess(args, log_path=str(tmp_path / "log")) as server:
        deadline = time.monotonic() + 30
        while len(children_of(server.process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        (worker,) = children_of(server.process.pid)
        while time.monotonic() < deadline:  # the worker listens once its reactor runs
            listening = subprocess.run(["ss", "-tlnpH", f"sport = :{server.port}"],
                                       capture_output=True, text=True).stdout
            if f"pid={worker}," in listening:
                break
            time.sleep(0.2)
        holder = RawClient(server.port)
        holder.login(b"alice", b"pw")
        refused = 0
        for _ in range(20):
            other = RawClient(server.port)
            other.cmd(b"USER alice")
            reply = other.cmd(b"PASS pw")
            assert reply.startswith(b"-ERR [IN-USE]"), reply
            refused += 1
            other.close()
        assert refused == 20
        # Both processes accept connections: hold several open and ask the
        # kernel which process owns each.
        clients = [RawClient(server.port) for _ in range(30)]
        owners = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{server.port}"],
                                capture_output=True, text=True).stdout
        assert f"pid={worker}," in owners and f"pid={server.process.pid}," in owners, owners
        for c in clients:
            c.close()
        assert holder.cmd(b"QUIT").startswith(b"+OK")
        client = RawClient(server.port)
        client.login(b"alice", b"pw")
        client.cmd(b"QUIT")
        # The parent dies hard: the worker notices its pipe close and exits.
        server.stop(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not alive(worker):
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its parent")


def test_a_daemon_writes_its_workers_lines_to_its_log_file(tmp_path):
    """twistd without -n: the daemon's standard output is /dev/null, yet
    the worker's lines (its logins, its start and its stop) are in the
    --logfile, marked with its number."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    (tmp_path / "mail" / "alice" / "new").mkdir(parents=True)
    port, logfile, pidfile = free_port(), tmp_path / "twistd.log", tmp_path / "twistd.pid"
    started = run_twistd([f"--logfile={logfile}", f"--pidfile={pidfile}", "popgate",
                          "--pop3", f"tcp:{port}:interface=127.0.0.1",
                          "--auth", f"htpasswd:{htpasswd}", "--store",
                          f"maildir:{tmp_path}/mail/%n", "--workers", "2"])
    assert started.returncode == 0, started.stdout + started.stderr
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    daemon = int(pidfile.read_text())
    try:
        while not greets(port, b"+OK") and time.monotonic() < deadline:
            time.sleep(0.2)
        while "[worker=1 " not in logfile.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        (worker,) = children_of(daemon)
        # Until the worker has served a login (bounded: the kernel spreads
        # connections over both processes).
        for _ in range(40):
            client = RawClient(port)
            client.login(b"alice", b"pw")
            client.cmd(b"QUIT")
            client.close()
            time.sleep(0.05)
            if "[worker=1 popgate.pop3.protocol.POP3ServerProtocol#info] pop3-login: Login:" in (
                    logfile.read_text()):
                break
        else:
            pytest.fail("no login served by the worker reached the log file:\n"
                        + logfile.read_text())
    finally:
        os.kill(daemon, signal.SIGTERM)
    while (alive(daemon) or alive(worker)) and time.monotonic() < deadline + 30:
        time.sleep(0.2)
    assert not alive(daemon) and not alive(worker)
    lines = logfile.read_text().splitlines()
    # The worker's last lines too: the first process waited for them.
    assert any(line.endswith("[worker=1 twisted.internet.base#info] Main loop terminated.")
               for line in lines), lines[-10:]
