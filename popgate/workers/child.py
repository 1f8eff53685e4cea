"""
One of the C{--workers} processes: popgate's server, without a pool of its
own, started the way twistd starts one, and gone when its parent is.

Run as C{python -m popgate.workers.child --log-form=FORM ARGS} by
L{popgate.workers.pool}: ARGS is the first process's command line, FORM
how it takes this worker's log lines (L{popgate.workers.log_relay}),
written to standard output, a pipe to it.  Standard input is the other
pipe: the parent's SIGHUPs come that way, and its end is the parent's.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, Any, cast

from twisted.internet import process, protocol
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, globalLogBeginner

from popgate.build import build_server
from popgate.logs import worker_log
from popgate.reload import install as install_reload
from popgate.tap import Options, parse_config
from popgate.tls_tickets import parse_tickets_line
from popgate.workers.log_relay import PipeWriter
from popgate.workers.pool import HANGUP_LINE, LOG_FORM_OPTION

log = Logger()

#: The longest line the parent writes (a tickets line is 169 bytes).
MAX_PARENT_LINE = 256


class WorkerStop:
    """
    A worker's one way to stop, whatever asks first.

    A stopping parent closes the worker's pipe and sends it SIGTERM at
    once (L{popgate.workers.pool.WorkerPool.stopService}); a Ctrl-C in a
    terminal sends SIGINT to both processes as well.  Twisted's own signal
    handler queues a C{reactor.stop()} that fails, with a critical
    C{ReactorNotRunning} traceback, when the pipe's end stopped the
    reactor meanwhile.  So the worker's SIGTERM and SIGINT come here
    (L{install}) like the pipe's end: the first stops the reactor, the
    others (and any after a stop from elsewhere) do nothing.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def install(self) -> None:
        """Take SIGTERM and SIGINT over from Twisted's handlers (once the
        reactor runs: it installs its own while starting) and note a
        shutdown begun elsewhere."""
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        self.reactor.callWhenRunning(self._take_signals)

    def _take_signals(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._signalled)

    def _signalled(self, number: int, frame: FrameType | None) -> None:
        # A signal handler: only queue the stop, as Twisted's does.
        self.reactor.callFromThread(self.stop, f"{signal.Signals(number).name} received")

    def _shutting_down(self) -> None:
        self.stopping = True

    def stop(self, why: str) -> None:
        """Stop the reactor, unless it is already stopping (saying C{why}
        once)."""
        if self.stopping or not self.reactor.running:
            return
        self.stopping = True
        log.info("{why}: worker stopping", why=why)
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # stopped elsewhere, its shutdown not begun yet
            pass


class ParentWatcher(protocol.Protocol):
    """In a worker: stop the reactor when the parent's pipe closes; reload
    (C{hangup}) for each L{HANGUP_LINE} the parent sends; new TLS ticket
    keys (C{tickets}) for each L{popgate.tls_tickets.tickets_line}."""

    def __init__(self, reactor: Any, hangup: Callable[[], Any] | None = None,
                 stopper: WorkerStop | None = None,
                 tickets: Callable[[bytes], Any] | None = None) -> None:
        self.reactor = reactor
        self.hangup = hangup
        self.tickets = tickets
        self.stopper = stopper or WorkerStop(reactor)
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        # The parent writes nothing but whole lines (HANGUP_LINE, tickets);
        # the (bounded) buffer keeps one split across two reads.  Several
        # hangups make one reload.
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()[:MAX_PARENT_LINE]
        for line in lines:
            keys = parse_tickets_line(line)
            if keys is not None and self.tickets is not None:
                self.tickets(keys)
        if HANGUP_LINE.rstrip(b"\n") in lines and self.hangup is not None:
            self.hangup()

    def connectionLost(self, reason: Any = None) -> None:
        self.stopper.stop("parent process gone")


class _Stdin:
    """What reads standard input reports to (as to a process): the data
    and the end, for a L{ParentWatcher}."""

    def __init__(self, watcher: ParentWatcher) -> None:
        self.watcher = watcher

    def childDataReceived(self, name: str, data: bytes) -> None:
        self.watcher.dataReceived(data)

    def childConnectionLost(self, name: str, reason: Any) -> None:
        self.watcher.connectionLost(reason)


def watch_parent(watcher: ParentWatcher, reactor: Any, fd: int = 0) -> Any:
    """
    Read C{fd} (standard input) for C{watcher}.  Not C{StandardIO}: it
    would make standard output, the log's pipe, non-blocking, and a log
    line would fail when the pipe is full instead of waiting.
    """
    return process.ProcessReader(reactor, _Stdin(watcher), "stdin", fd)


def split_log_form(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The log form (C{lines} without C{--log-form=}) and the rest."""
    args = list(argv)
    if args and args[0].startswith(LOG_FORM_OPTION):
        return args[0][len(LOG_FORM_OPTION):], args[1:]
    return "lines", args


def worker_main(argv: Sequence[str], reactor: Any) -> None:
    """Run one worker on C{reactor} with the parent's command line (after
    C{--log-form=FORM})."""
    form, argv = split_log_form(argv)
    options = Options()
    options.parseOptions([*argv, "--worker"])
    config = options.config
    server = build_server(config, reactor)
    install_reload(server, parse_config, reactor)
    stopper = WorkerStop(reactor)
    stopper.install()
    watch_parent(ParentWatcher(reactor, server.hangup.hangup, stopper, server.tickets.replace),
                 reactor)
    # In the parent's format, at its level, marked with this worker's
    # number, for the parent to write where it writes its own lines.
    out = cast(IO[str], PipeWriter(1))  # write and flush: all a log observer calls
    server.log_observer = worker_log(form, out, config.log_format, config.log_level,
                                     config.worker_number)
    globalLogBeginner.beginLoggingTo([server.log_observer])
    server.privilegedStartService()
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover - runs in worker processes
    from twisted.internet import reactor as global_reactor  # the entry point: picked once

    worker_main(sys.argv[1:], global_reactor)
