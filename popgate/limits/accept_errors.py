"""
Failed C{accept()}s (descriptors used up elsewhere): Twisted's
one-line-per-client recovery messages become one line per interval, and a
listener that would be retried in a busy loop is paused; accepting resumes
by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

from popgate.limits.reports import OncePerInterval

# What Twisted's tcp.Port logs from its accept loop: one line per failed
# accept(), and in its EMFILE recovery one per client it closes unanswered.
_ACCEPT_FORMATS = frozenset({
    "EMFILE encountered; releasing reserved file descriptor.",
    "EMFILE recovery: Closed socket from {address}",
    "Re-reserving EMFILE recovery file descriptor.",
    "Could not accept new connection ({acceptError})",
})
_RESERVING = "Re-reserving EMFILE recovery file descriptor."
_NOT_ACCEPTED = "Could not accept new connection ({acceptError})"


_SHORTAGES = {"EMFILE": "out of file descriptors", "ENFILE": "the system's file table is full",
              "ENOBUFS": "out of socket buffers", "ENOMEM": "out of memory"}


class AcceptErrorWatch:
    """
    Watches listening ports for failed C{accept()}s (C{EMFILE}, C{ENFILE},
    C{ENOBUFS}, C{ENOMEM}) and logs one line per interval for them instead
    of Twisted's line per failure and per client.

    On C{EMFILE} Twisted closes a spare descriptor, accepts the waiting
    clients and closes them (they see the connection close) and takes the
    spare back: the backlog drains, the reactor does not spin, and the
    next accept() succeeds once descriptors are free.  Without a spare
    (lost in a race) or for the other errors it can only log and return,
    and the listener, still readable, would be retried at once in a loop:
    then the port is paused for C{pause} seconds and tried again.
    """

    def __init__(self, clock: Any, reports: OncePerInterval, pause: float = 1.0) -> None:
        self.clock = clock
        self.reports = reports
        self.pause = pause
        self._paused: set[int] = set()

    def watch(self, port: Any) -> None:
        """Route C{port}'s accept-loop log events through this watch."""
        logger = getattr(port, "_logger", None)
        if not isinstance(logger, Logger):  # not a tcp.Port: nothing to watch
            return
        downstream = logger.observer

        def observe(event: dict[str, Any]) -> None:
            self.observe(port, downstream, event)

        port._logger = Logger(namespace=logger.namespace, observer=cast(ILogObserver, observe))

    def observe(self, port: Any, downstream: Callable[[Any], None], event: dict[str, Any]) -> None:
        log_format = event.get("log_format")
        error = event.get("acceptError", "EMFILE")
        if log_format not in _ACCEPT_FORMATS or error not in _SHORTAGES:
            downstream(event)  # ECONNABORTED and the like are no shortage
            return
        if log_format == _RESERVING:
            return  # the end of a recovery already counted
        where = port.getHost()
        self.reports.event(
            "accept", "cannot accept connections on {where} ({error}: {why}); new clients are "
            "turned away until it passes", "accept() still failing: {count} more failure{s} or "
            "client{s} turned away in {interval:.0f} s",
            where=f"{getattr(where, 'host', where)}:{getattr(where, 'port', '')}",
            error=error, why=_SHORTAGES[error])
        if log_format == _NOT_ACCEPTED and id(port) not in self._paused:
            self._paused.add(id(port))
            port.pauseProducing()
            self.clock.callLater(self.pause, self._resume, port)

    def _resume(self, port: Any) -> None:
        self._paused.discard(id(port))
        port.resumeProducing()  # a no-op once the port stopped listening


@implementer(IStreamServerEndpoint)
class _WatchedEndpoint:
    """An endpoint whose listening port is handed to C{on_port}."""

    def __init__(self, endpoint: Any, on_port: Callable[[Any], None]) -> None:
        self.endpoint = endpoint
        self.on_port = on_port

    def listen(self, factory: Any) -> Any:
        def watch(port: Any) -> Any:
            self.on_port(port)
            return port

        return self.endpoint.listen(factory).addCallback(watch)


def watch_listener(listener: Any, watch: AcceptErrorWatch) -> None:
    """Have C{watch} see the port of C{listener}: a
    C{StreamServerEndpointService} or a
    L{popgate.workers.reuseport.ReusePortListener}."""
    if hasattr(listener, "on_port"):
        listener.on_port = watch.watch
    elif getattr(listener, "endpoint", None) is not None:
        listener.endpoint = _WatchedEndpoint(listener.endpoint, watch.watch)
