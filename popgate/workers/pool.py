"""
The supervisor, in the process twistd started: starts the other worker
processes with its own command line, restarts one that dies, tells them
of a SIGHUP, and stops them when it stops.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from twisted.application import service
from twisted.internet import protocol
from twisted.logger import Logger

log = Logger()

_RESTART_DELAY = 1.0
#: What the parent writes to a worker's standard input for a SIGHUP.
HANGUP_LINE = b"hangup\n"
#: The module a worker process runs (L{popgate.workers.child}).
CHILD_MODULE = "popgate.workers.child"


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number

    def processEnded(self, reason: Any) -> None:
        self.pool.worker_ended(self, reason)


class WorkerPool(service.Service):
    """Starts and supervises the extra worker processes."""

    def __init__(self, reactor: Any, count: int, argv: Sequence[str]) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.workers: dict[int, Any] = {}
        self._stopping = False

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
        return f"passed on to {count} worker{'s' if count != 1 else ''}"

    def _signal_all(self, name: str) -> None:
        for transport in list(self.workers.values()):
            try:
                transport.signalProcess(name)
            except Exception:  # already gone
                pass

    def _spawn(self, number: int) -> None:
        argv = [sys.executable, "-m", CHILD_MODULE] + self.argv
        self.workers[number] = self.reactor.spawnProcess(
            _Worker(self, number), sys.executable, argv, env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2})
        log.info("started worker {n}", n=number)

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        self.workers.pop(worker.number, None)
        if self._stopping:
            return
        log.warn("worker {n} ended ({why}); restarting", n=worker.number,
                 why=reason.getErrorMessage())
        self.reactor.callLater(_RESTART_DELAY, self._respawn, worker.number)

    def _respawn(self, number: int) -> None:
        if not self._stopping and number not in self.workers:
            self._spawn(number)

    def stopService(self) -> None:
        self._stopping = True
        super().stopService()
        for transport in list(self.workers.values()):
            try:
                transport.closeStdin()
            except Exception:  # already gone
                pass
        self._signal_all("TERM")
