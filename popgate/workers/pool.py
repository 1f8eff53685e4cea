"""
The supervisor, in the process twistd started: starts the other worker
processes with its own command line, restarts one that dies, tells them
of a SIGHUP, writes their log lines to its own log
(L{popgate.workers.log_relay}), and stops them when it stops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from popgate.cred.scram import SALT_SECRET_ENV, salt_secret
from popgate.logs import LineSink
from popgate.plural import plural
from popgate.tls_tickets import TicketKeys, tickets_line
from popgate.workers.log_relay import LineRelay, LoggedSink, relay_for

log = Logger()

_RESTART_DELAY = 1.0
#: How long stopping waits for the workers to end (and write their last lines).
_STOP_WAIT = 5.0
#: What the parent writes to a worker's standard input for a SIGHUP.
HANGUP_LINE = b"hangup\n"
#: The module a worker process runs (L{popgate.workers.child}).
CHILD_MODULE = "popgate.workers.child"
#: Its first argument: how it writes its log lines (L{popgate.logs.FORMS}).
LOG_FORM_OPTION = "--log-form="


class _Worker(protocol.ProcessProtocol):
    """One worker's pipes: its log lines (standard output) and its
    standard error go to the first process's log."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.log = relay_for(pool.log_sink, number)
        self.errors = LineRelay(LoggedSink(number, "warn"), number)

    def outReceived(self, data: bytes) -> None:
        self.log.data_received(data)

    def errReceived(self, data: bytes) -> None:
        self.errors.data_received(data)

    def processEnded(self, reason: Any) -> None:
        self.log.end()
        self.errors.end()
        self.pool.worker_ended(self, reason)


class WorkerPool(service.Service):
    """
    Starts and supervises the extra worker processes.

    @ivar log_sink: where the first process writes its log, so the
        workers' lines go there too (set by twistd's entry point); none:
        they are logged as the first process's own events.
    @ivar tickets: the TLS session ticket keys every worker shares
        (L{popgate.tls_tickets}); a worker started gets the current ones.
    """

    def __init__(self, reactor: Any, count: int, argv: Sequence[str],
                 log_sink: LineSink | None = None, tickets: TicketKeys | None = None) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.log_sink = log_sink
        self.tickets = tickets
        self.workers: dict[int, Any] = {}
        self._stopping = False
        self._all_ended: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count):
            self._spawn(number)

    def pass_on_hangup(self) -> str:
        """
        A L{popgate.hangup.HangupHook} forward: every worker reloads too.
        Told over its standard input, not with a signal: a worker still
        starting (no handler yet) would die of SIGHUP, but finds the line
        waiting in the pipe once it reads.
        """
        for transport in list(self.workers.values()):
            try:
                transport.write(HANGUP_LINE)
            except Exception:  # already gone
                pass
        count = len(self.workers)
        return f"passed on to {plural(count, 'worker')}"

    def pass_on_tickets(self, keys: bytes) -> None:
        """New TLS ticket keys for every worker (over its standard input,
        as a hangup; one that starts later has them in its environment)."""
        for transport in list(self.workers.values()):
            try:
                transport.write(tickets_line(keys))
            except Exception:  # already gone
                pass

    def _signal_all(self, name: str) -> None:
        for transport in list(self.workers.values()):
            try:
                transport.signalProcess(name)
            except Exception:  # already gone
                pass

    def _spawn(self, number: int) -> None:
        # The number gives a worker its own --metrics (and admin) endpoint,
        # and marks its log lines; the form is what this process's sink takes.
        form = self.log_sink.form if self.log_sink is not None else "lines"
        argv = [sys.executable, "-m", CHILD_MODULE, f"{LOG_FORM_OPTION}{form}", *self.argv,
                "--worker-number", str(number)]
        # The same SCRAM salt secret in every process: a made-up salt must
        # not change with the worker a connection lands on.
        # The TLS ticket keys likewise: a session resumes on any worker.
        env = {**os.environ, SALT_SECRET_ENV: salt_secret(),
               **(self.tickets.environment() if self.tickets is not None else {})}
        self.workers[number] = self.reactor.spawnProcess(
            _Worker(self, number), sys.executable, argv, env=env,
            childFDs={0: "w", 1: "r", 2: "r"})
        log.info("started worker {n}", n=number)

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        self.workers.pop(worker.number, None)
        if self._stopping:
            ended = self._all_ended
            if not self.workers and ended is not None and not ended.called:
                ended.callback(None)
            return
        log.warn("worker {n} ended ({why}); restarting", n=worker.number,
                 why=reason.getErrorMessage())
        self.reactor.callLater(_RESTART_DELAY, self._respawn, worker.number)

    def _respawn(self, number: int) -> None:
        if not self._stopping and number not in self.workers:
            self._spawn(number)

    def stopService(self) -> defer.Deferred[None] | None:
        """Stop every worker; fires once they have ended (their last log
        lines written), or after L{_STOP_WAIT} seconds."""
        self._stopping = True
        super().stopService()
        for transport in list(self.workers.values()):
            try:
                transport.closeStdin()
            except Exception:  # already gone
                pass
        self._signal_all("TERM")
        if not self.workers:
            return None
        ended: defer.Deferred[None] = defer.Deferred()
        self._all_ended = ended
        ended.addTimeout(_STOP_WAIT, self.reactor, onTimeoutCancel=lambda *_: None)
        return ended
