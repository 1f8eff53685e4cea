"""
Using every core: C{--workers N} runs N popgate processes that each bind
the same TCP ports with C{SO_REUSEPORT}, so the kernel spreads incoming
connections over them.

The first process (the one twistd started) serves too, and supervises the
others: it starts them with its own command line, restarts one that dies,
and stops them when it stops.  A worker reads its standard input and exits
when it closes, so no worker outlives its parent even after a C{kill -9}.
The maildrop lock is an C{flock}, so it stays exclusive across workers.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Sequence

from twisted.application import service
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python import usage

log = Logger()

_RESTART_DELAY = 1.0
#: What the parent writes to a worker's standard input for a SIGHUP.
HANGUP_LINE = b"hangup\n"


def parse_tcp_endpoint(description: str) -> tuple[socket.AddressFamily, str, int, int]:
    """
    (family, interface, port, backlog) of a C{tcp:}/C{tcp6:} endpoint
    string, the only kinds that can be shared with C{SO_REUSEPORT}.

    @raise usage.UsageError: for any other kind of endpoint.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise usage.UsageError(f"--workers needs tcp: or tcp6: listeners, not {description!r}")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = "::" if kind == "tcp6" else "0.0.0.0"
    port: int | None = None
    backlog = 511
    # Endpoint strings escape colons with backslashes (tcp6 addresses).
    parts = rest.replace("\\:", "\0").split(":")
    for part in parts:
        part = part.replace("\0", ":")
        key, eq, value = part.partition("=")
        try:
            if not eq and port is None:
                port = int(key)
            elif key == "port":
                port = int(value)
            elif key == "interface":
                interface = value
            elif key == "backlog":
                backlog = int(value)
            else:
                raise ValueError(part)
        except ValueError:
            raise usage.UsageError(f"cannot share endpoint {description!r} between workers")
    if port is None:
        raise usage.UsageError(f"endpoint {description!r} has no port")
    return family, interface, port, backlog


def listen_reuseport(reactor: Any, description: str, factory: Any) -> Any:
    """Listen on C{description} with C{SO_REUSEPORT}; returns the port."""
    family, interface, port, backlog = parse_tcp_endpoint(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate


class ReusePortListener(service.Service):
    """One shared listener: fails start-up if the port cannot be bound."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        #: Called with the listening port (popgate.limits watches it).
        self.on_port: Callable[[Any], None] | None = None

    def _listen(self) -> Any:
        port = listen_reuseport(self.reactor, self.description, self.factory)
        if self.on_port is not None:
            self.on_port(port)
        return port

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges (port 110 needs root).
        self.port = self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.port = self._listen()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: "WorkerPool", number: int) -> None:
        self.pool = pool
        self.number = number

    def processEnded(self, reason: Any) -> None:
        self.pool.worker_ended(self, reason)


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
        argv = [sys.executable, "-m", "popgate.workers"] + self.argv
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


def worker_main(argv: Sequence[str]) -> None:
    """Run one worker: popgate's service, without a pool of its own."""
    from twisted.internet import reactor, stdio

    from popgate.tap import Options, makeService

    options = Options()
    options.parseOptions(list(argv) + ["--worker"])
    top = makeService(options, reactor)
    stdio.StandardIO(ParentWatcher(reactor, top.getServiceNamed("hangup").hangup), reactor=reactor)
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover - runs in worker processes
    worker_main(sys.argv[1:])
