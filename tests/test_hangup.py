"""
SIGHUP never kills: one hook (popgate.hangup) handles it in every
configuration, runs what registered (waiting for a reload that returns a
Deferred) and logs one line.  Real twistd processes without TLS, with TLS
and with --workers surviving it and reloading: L{tests.test_reload}.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from popgate.build import hangup_hook
from popgate.hangup import HangupHook, ReloadFailed
from popgate.workers.child import MAX_PARENT_LINE, ParentWatcher
from popgate.workers.pool import HANGUP_LINE, WorkerPool


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
    hook = hangup_hook(RecordingReactor())
    hook.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # would end the test run with SIG_DFL
        with capturedLogs() as events:
            assert hook.hangup().result == "nothing to reload (no reload installed)"
        assert hangup_lines(list(events)) == [
            (LogLevel.info, "SIGHUP: nothing to reload (no reload installed)")]
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
        text = hook.hangup().result
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
    assert len(watcher._buffer) <= MAX_PARENT_LINE
    watcher.dataReceived(HANGUP_LINE)  # a line cut by the bound is not one
    assert reloads == [1, 1]
    watcher.dataReceived(HANGUP_LINE)
    assert reloads == [1, 1, 1]


def test_the_line_waits_for_a_reload_that_runs_elsewhere_and_one_that_logs_its_own() -> None:
    hook = HangupHook(RecordingReactor())
    later: defer.Deferred[str | None] = defer.Deferred()
    hook.register(lambda: later, "a reload in a thread")
    hook.register(lambda: defer.succeed(None), "one that logs its own line")
    hook.pass_on(lambda: "passed on to 1 worker")
    with capturedLogs() as events:
        done = hook.hangup()
        assert not done.called and hangup_lines(list(events)) == []
        later.callback("reloaded x")
    assert done.result == "reloaded x; passed on to 1 worker"
    assert hangup_lines(list(events)) == [
        (LogLevel.info, "SIGHUP: reloaded x; passed on to 1 worker")]
    # A reload that logs its own line, alone: no SIGHUP line at all.
    quiet = HangupHook(RecordingReactor())
    quiet.register(lambda: None, "the configuration")
    with capturedLogs() as events:
        assert quiet.hangup().result == ""
    assert hangup_lines(list(events)) == []
    # A failing Deferred is a failed reload, in the same one line.
    failing = HangupHook(RecordingReactor())
    failing.register(lambda: defer.fail(ReloadFailed("not reloaded: why")), "x")
    with capturedLogs() as events:
        assert failing.hangup().result == "not reloaded: why"
    assert hangup_lines(list(events)) == [(LogLevel.error, "SIGHUP: not reloaded: why")]
