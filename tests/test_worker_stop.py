"""
L{popgate.workers.child.WorkerStop}: a worker told to stop two or three
times (its parent's pipe closing, SIGTERM, SIGINT, in any order) stops
its reactor once, and never calls C{reactor.stop()} on a reactor already
stopping (Twisted's C{ReactorNotRunning} traceback).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.error import ReactorNotRunning

from popgate.workers.child import ParentWatcher, WorkerStop


class FakeReactor:
    """A reactor's stopping, as Twisted's: a second C{stop()} raises."""

    def __init__(self) -> None:
        self.running = True
        self.stopped = 0
        self._stopped = False
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.triggers: list[tuple[str, str, Callable[[], Any]]] = []
        self.when_running: list[Callable[[], Any]] = []

    def stop(self) -> None:
        if self._stopped:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self._stopped = True
        self.stopped += 1

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.queued.append((f, args))

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        self.triggers.append((phase, event, f))

    def callWhenRunning(self, f: Callable[[], Any]) -> None:
        self.when_running.append(f)

    def shut_down(self) -> None:
        """The "before shutdown" triggers, as the reactor fires them after a stop."""
        for phase, event, f in self.triggers:
            if (phase, event) == ("before", "shutdown"):
                f()


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_the_pipe_then_sigterm_stops_once() -> None:
    reactor = FakeReactor()
    stopper = WorkerStop(reactor)
    ParentWatcher(reactor, None, stopper).connectionLost()
    stopper._signalled(signal.SIGTERM, None)
    reactor.run_queued()
    assert reactor.stopped == 1


def test_sigterm_then_the_pipe_stops_once() -> None:
    reactor = FakeReactor()
    stopper = WorkerStop(reactor)
    stopper.install()
    stopper._signalled(signal.SIGTERM, None)
    stopper._signalled(signal.SIGINT, None)
    reactor.run_queued()
    reactor.shut_down()
    ParentWatcher(reactor, None, stopper).connectionLost()
    assert reactor.stopped == 1


def test_a_stop_from_elsewhere_is_not_repeated() -> None:
    reactor = FakeReactor()
    stopper = WorkerStop(reactor)
    stopper.install()
    reactor.stop()  # server code, before the shutdown has begun: the error is swallowed
    stopper.stop("parent process gone")
    assert reactor.stopped == 1
    later = WorkerStop(reactor)
    later.install()
    reactor.shut_down()  # ...and once it has begun, stop() is not even called
    later.stop("SIGTERM received")
    reactor.running = False
    WorkerStop(reactor).stop("after the end")
    assert reactor.stopped == 1


@pytest.mark.usefixtures("restored_signals")
def test_the_signals_are_taken_once_the_reactor_runs() -> None:
    reactor = FakeReactor()
    stopper = WorkerStop(reactor)
    stopper.install()
    assert signal.getsignal(signal.SIGTERM) != stopper._signalled
    for f in reactor.when_running:
        f()
    assert signal.getsignal(signal.SIGTERM) == stopper._signalled
    assert signal.getsignal(signal.SIGINT) == stopper._signalled
