"""
Stopping C{--workers 2} with SIGTERM: the parent closes each worker's pipe
and signals it at once, so the worker hears of its end twice (in either
order); it stops once, and its log has no traceback.  Repeated, since
which comes first varies from run to run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from popgate.cred.schemes import hash_password
from tests.harness import alive
from tests.popgate_server import PopgateProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Start-and-stop rounds.
ROUNDS = 5


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def one_round(tmp_path: Path, number: int) -> str:
    """Start the server with two processes, wait for the worker's reactor,
    stop the parent with SIGTERM; the whole log."""
    log_path = tmp_path / f"popgate-{number}.log"
    args = ["--auth", f"htpasswd:{tmp_path}/htpasswd", "--store", f"maildir:{tmp_path}/mail/%n",
            "--workers", "2"]
    with PopgateProcess(args, log_path=str(log_path)) as server:
        deadline = time.monotonic() + 30
        # The worker's reactor runs once it has logged through the parent.
        while "[worker=1 " not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        parent = server.pid()
        assert parent is not None
        workers = children_of(parent)
        assert len(workers) == 1, log_path.read_text()
        server.stop(signal.SIGTERM)
        while alive(workers[0]) and time.monotonic() < deadline + 20:
            time.sleep(0.1)
        assert not alive(workers[0]), "the worker outlived its parent"
    return log_path.read_text()


def test_sigterm_stops_the_workers_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    (tmp_path / "mail").mkdir()
    for number in range(ROUNDS):
        log = one_round(tmp_path, number)
        bad = [line for line in log.splitlines()
               if "Traceback" in line or "ReactorNotRunning" in line or "#critical]" in line]
        assert not bad, log
        # The worker stopped (and said so) before the parent did.
        assert "[worker=1 twisted.internet.base#info] Main loop terminated." in log, log
