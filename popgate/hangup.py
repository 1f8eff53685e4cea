"""
SIGHUP, handled once for the whole process: C{systemctl reload} and
certbot's deploy hook send it, and its default action kills the process.

L{HangupHook} is the only code that touches the SIGHUP disposition.  It
installs one handler (in the main thread, where C{signal.signal} works),
which only hands the signal to the reactor with C{callFromThread}; there
the registered reload callbacks run, and one line says what each did.
What can be reloaded (the configuration, L{popgate.reload}) and what
passes the signal on (the worker pool) register callbacks instead of
chaining raw signal handlers, and the hook is always installed, so no
configuration leaves SIGHUP at its default.  A callback may return a
Deferred (a reload that reads files in a thread); the line waits for it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: A reload callback: runs in the reactor thread, returns what it did (a
#: short phrase for the log line; None when it logs its own line), or a
#: Deferred of that, or raises (or fails with) L{ReloadFailed}.
Reload = Callable[[], "str | None | defer.Deferred[str | None]"]


class ReloadFailed(Exception):
    """A reload that did not happen; the text says why, in one line.  The
    old state stays in use."""


class HangupHook(service.Service):
    """
    The process's SIGHUP handler and the list of what it reloads.

    @ivar why_idle: why there is nothing to reload, for the log line when
        no reload is registered.
    """

    def __init__(self, reactor: Any, why_idle: str = "none configured") -> None:
        self.setName("hangup")
        self.reactor = reactor
        self.why_idle = why_idle
        self._reloads: list[tuple[Reload, str]] = []
        self._forwards: list[Reload] = []
        self._previous: Any = None
        self._installed = False
        self._pending = False

    def register(self, reload: Reload, description: str) -> None:
        """Call C{reload} on every SIGHUP; C{description} (what it reloads)
        goes into the start-up line."""
        self._reloads.append((reload, description))

    def pass_on(self, forward: Reload) -> None:
        """Call C{forward} after the reloads on every SIGHUP (the worker
        pool telling its workers): not a reload of its own."""
        self._forwards.append(forward)

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is not threading.main_thread():
            # In-process test servers run the reactor in another thread;
            # there, call hangup() directly.
            log.info("not in the main thread: SIGHUP is not handled here")
            return
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self._installed = True
        if self._reloads:
            log.info("SIGHUP reloads: {what}", what="; ".join(d for _, d in self._reloads))
        else:
            log.info("SIGHUP reloads nothing ({why})", why=self.why_idle)

    def stopService(self) -> Any:
        if self._installed:
            # None: the old disposition was not set from Python.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGHUP, previous)
            self._installed = False
        return super().stopService()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler does nothing but hand over: the reload runs in
        # the reactor, between events, never in the middle of one.  Several
        # signals before it runs make one reload.
        if not self._pending:
            self._pending = True
            self.reactor.callFromThread(self.hangup)

    def hangup(self) -> defer.Deferred[str]:
        """Run every reload, then every forward (reactor thread), and once
        all have answered log one line of what they said (none when each
        logged its own).

        @return: a Deferred firing with the text of that line, after
            C{"SIGHUP: "} (empty when there was no line).
        """
        self._pending = False
        runs = [self._run(callback) for callback, _ in self._reloads]
        runs += [self._run(forward) for forward in self._forwards]
        gathered = defer.gatherResults(runs)

        def log_line(answers: list[tuple[str | None, bool]]) -> str:
            done = [text for text, _ in answers if text]
            if not self._reloads:
                done.insert(0, f"nothing to reload ({self.why_idle})")
            text = "; ".join(done)
            if any(failed for _, failed in answers):
                log.error("SIGHUP: {done}", done=text)
            elif text:
                log.info("SIGHUP: {done}", done=text)
            return text

        return gathered.addCallback(log_line)

    @staticmethod
    def _run(callback: Reload) -> defer.Deferred[tuple[str | None, bool]]:
        """Run one callback: (what it says, whether it failed), never a failure."""

        def failed(failure: Failure) -> tuple[str | None, bool]:
            if failure.check(ReloadFailed):
                return str(failure.value), True
            # A bug, not a condition: the traceback, and the other
            # callbacks still run.
            log.failure("bug in the SIGHUP callback {callback!r}", failure, callback=callback)
            return f"{getattr(callback, '__qualname__', callback)} failed (see above)", True

        return defer.maybeDeferred(callback).addCallbacks(lambda text: (text, False), failed)

