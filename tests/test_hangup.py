"""
SIGHUP never kills: one hook (popgate.hangup) handles it in every
configuration, reloads what can be reloaded and logs one line; real
twistd processes without TLS, with TLS and with --workers survive it and
go on serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from popgate.cred.schemes import hash_password
from popgate.build import hangup_hook
from popgate.hangup import HangupHook, ReloadFailed
from popgate.workers.child import ParentWatcher
from popgate.workers.pool import HANGUP_LINE, WorkerPool
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess
from tests.tlscerts import make_pki


class RecordingReactor:
    """callFromThread only records: the test decides when the reactor runs."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], Any]] = []

    def callFromThread(self, f: Callable[[], Any], *args: Any) -> None:
        self.calls.append(f)


@pytest.fixture
def restore_sighup() -> Any:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def hangup_lines(events: list[dict[str, Any]]) -> list[tuple[LogLevel, str]]:
    return [(e["log_level"], formatEvent(e)) for e in events
            if formatEvent(e).startswith("SIGHUP: ")]


# -- the hook, in memory


def test_the_signal_is_handed_to_the_reactor_and_runs_each_reload_once(restore_sighup: Any) -> None:
    seen: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    reactor = RecordingReactor()
    hook = HangupHook(reactor, why_idle="no TLS certificate configured")
    runs: list[str] = []
    hook.register(lambda: runs.append("tls") or "reloaded TLS certificate x", "TLS certificate x")
    hook.pass_on(lambda: runs.append("workers") or "passed on to 1 worker")
    hook.startService()
    assert signal.getsignal(signal.SIGHUP) == hook._on_signal
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGHUP)
    # Only handed over, once for both signals; nothing ran in the handler.
    assert reactor.calls == [hook.hangup] and runs == [] and seen == []
    with capturedLogs() as events:
        reactor.calls.pop()()
    assert runs == ["tls", "workers"]
    assert hangup_lines(list(events)) == [
        (LogLevel.info, "SIGHUP: reloaded TLS certificate x; passed on to 1 worker")]
    os.kill(os.getpid(), signal.SIGHUP)  # handled again after the reload ran
    assert reactor.calls == [hook.hangup]
    hook.stopService()
    os.kill(os.getpid(), signal.SIGHUP)  # the handler that was there is back
    assert seen == [signal.SIGHUP] and len(reactor.calls) == 1


def test_nothing_registered_still_handles_and_says_why(restore_sighup: Any) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    hook = hangup_hook(RecordingReactor(), tls=None)
    hook.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # would end the test run with SIG_DFL
        with capturedLogs() as events:
            assert hook.hangup() == "nothing to reload (no TLS certificate configured)"
        assert hangup_lines(list(events)) == [
            (LogLevel.info, "SIGHUP: nothing to reload (no TLS certificate configured)")]
    finally:
        hook.stopService()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_a_failed_reload_is_one_error_line_and_the_others_still_run() -> None:
    hook = HangupHook(RecordingReactor())

    def broken() -> str:
        raise ReloadFailed("TLS certificate not reloaded, keeping the old one: no key")

    def buggy() -> str:
        raise ZeroDivisionError()

    hook.register(broken, "TLS")
    hook.register(buggy, "bug")
    hook.pass_on(lambda: "passed on to 2 workers")
    with capturedLogs() as events:
        text = hook.hangup()
    assert text.startswith("TLS certificate not reloaded, keeping the old one: no key; ")
    assert text.endswith(" failed (see above); passed on to 2 workers")
    (line,) = hangup_lines(list(events))
    assert line == (LogLevel.error, "SIGHUP: " + text)
    # The bug (not the expected failure) is logged with its traceback.
    assert [e for e in events if e.get("log_failure") is not None]


def test_outside_the_main_thread_the_hook_leaves_the_signal_alone(restore_sighup: Any) -> None:
    import threading

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    hook = HangupHook(RecordingReactor())
    thread = threading.Thread(target=hook.startService)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    hook.stopService()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_the_pool_passes_it_on_over_stdin_and_the_worker_reloads() -> None:
    pool = WorkerPool(RecordingReactor(), 3, [])
    pipes = {1: StringTransport(), 2: StringTransport()}
    pool.workers = dict(pipes)
    assert pool.pass_on_hangup() == "passed on to 2 workers"
    assert [p.value() for p in pipes.values()] == [HANGUP_LINE, HANGUP_LINE]
    reloads: list[int] = []
    watcher = ParentWatcher(RecordingReactor(), lambda: reloads.append(1))
    watcher.dataReceived(HANGUP_LINE[:3])
    assert reloads == []
    watcher.dataReceived(HANGUP_LINE[3:])
    assert reloads == [1]
    watcher.dataReceived(HANGUP_LINE * 3)  # queued while busy: one reload
    assert reloads == [1, 1]
    watcher.dataReceived(b"x" * 100_000)  # the buffer stays bounded
    assert len(watcher._buffer) <= len(HANGUP_LINE)


# -- real twistd processes

PASSWORD = b"pw"


def site(tmp_path: Path) -> list[str]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password(PASSWORD.decode(), rounds=4, prefix=False)}\n")
    new = tmp_path / "mail" / "alice" / "new"
    new.mkdir(parents=True)
    (new / "1700000000.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    return ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n",
            "--auth-failure-delay", "0"]


def wait_for(server: PopgateProcess, text: str, count: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = Path(server.log_path or "").read_text(errors="replace")
        if log.count(text) >= count:
            return log
        assert server.process is not None and server.process.poll() is None, log[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} x{count} in: {log[-3000:]}"
        time.sleep(0.1)


def logs_in(port: int) -> None:
    client = RawClient(port)
    client.login(b"alice", PASSWORD)
    assert client.cmd(b"STAT").startswith(b"+OK 1 ")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    client.close()


def hang_up_and_check(server: PopgateProcess, line: str) -> None:
    assert server.process is not None
    for n in (1, 2):  # and once more: the handler stays installed
        server.process.send_signal(signal.SIGHUP)
        wait_for(server, line, n)
        assert server.process.poll() is None
        logs_in(server.port)


@pytest.mark.integration
def test_sighup_without_tls_is_logged_and_the_server_lives(tmp_path: Path) -> None:
    with PopgateProcess(site(tmp_path), log_path=str(tmp_path / "log")) as server:
        wait_for(server, "SIGHUP reloads nothing (no TLS certificate configured)")
        hang_up_and_check(server, "SIGHUP: nothing to reload (no TLS certificate configured)")


@pytest.mark.integration
def test_sighup_with_tls_reloads_the_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    args = site(tmp_path) + ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with PopgateProcess(args, log_path=str(tmp_path / "log")) as server:
        wait_for(server, f"SIGHUP reloads: TLS certificate {pki.cert} (expires ")
        hang_up_and_check(server, f"SIGHUP: reloaded TLS certificate {pki.cert} (expires ")


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.integration
def test_sighup_with_workers_kills_no_worker(tmp_path: Path) -> None:
    args = site(tmp_path) + ["--workers", "2"]
    with PopgateProcess(args, log_path=str(tmp_path / "log")) as server:
        assert server.process is not None
        # Each process logs its hook line once it is installed.
        wait_for(server, "SIGHUP reloads nothing", 2)
        workers = children_of(server.process.pid)
        assert len(workers) == 1
        server.process.send_signal(signal.SIGHUP)
        log = wait_for(server, "SIGHUP: nothing to reload (no TLS certificate configured)", 2)
        assert log.count("SIGHUP: nothing to reload (no TLS certificate configured); "
                         "passed on to 1 worker") == 1
        for pid in [server.process.pid, *workers]:
            os.kill(pid, 0)  # still there
        assert sorted(children_of(server.process.pid)) == sorted(workers)  # none restarted
        assert "ended" not in log
        for _ in range(6):  # the kernel spreads these over the processes
            logs_in(server.port)
