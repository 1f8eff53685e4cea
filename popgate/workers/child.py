"""
One of the C{--workers} processes: popgate's server, without a pool of its
own, started the way twistd starts one, and gone when its parent is.

Run as C{python -m popgate.workers.child ARGS} by L{popgate.workers.pool}.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from twisted.internet import protocol, stdio
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from popgate.build import build_server
from popgate.tap import Options
from popgate.workers.pool import HANGUP_LINE

log = Logger()


class ParentWatcher(protocol.Protocol):
    """In a worker: stop the reactor when the parent's pipe closes; reload
    (C{hangup}) for each L{HANGUP_LINE} the parent sends."""

    def __init__(self, reactor: Any, hangup: Callable[[], Any] | None = None) -> None:
        self.reactor = reactor
        self.hangup = hangup
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        # The parent writes nothing but whole HANGUP_LINEs; the (bounded)
        # buffer keeps one split across two reads.  Several make one reload.
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()[:len(HANGUP_LINE)]
        if HANGUP_LINE.rstrip(b"\n") in lines and self.hangup is not None:
            self.hangup()

    def connectionLost(self, reason: Any = None) -> None:
        log.info("parent process gone: worker stopping")
        if self.reactor.running:
            self.reactor.stop()


def worker_main(argv: Sequence[str], reactor: Any) -> None:
    """Run one worker on C{reactor} with the parent's command line."""
    options = Options()
    options.parseOptions([*argv, "--worker"])
    server = build_server(options.config, reactor)
    stdio.StandardIO(ParentWatcher(reactor, server.hangup.hangup), reactor=reactor)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    server.privilegedStartService()
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover - runs in worker processes
    from twisted.internet import reactor as global_reactor  # the entry point: picked once

    worker_main(sys.argv[1:], global_reactor)
