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
from tests.popgate_server import PopgateProcess
from tests.pop3_oracle import RawClient

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
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its parent")
