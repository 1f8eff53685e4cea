"""
The limits of one login process, built at start-up: the soft descriptor
limit raised, the connection limit derived from it, the accept watch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from popgate.addresses import Network
from popgate.limits.accept_errors import AcceptErrorWatch, watch_listener
from popgate.limits.budget import FDS_PER_SESSION, derived_limit, raise_nofile_limit
from popgate.limits.counts import ConnectionLimits

# The namespace operators' log lines have always shown, whichever module
# of the package logs.
log = Logger(namespace="popgate.limits")


class ProcessLimits:
    """What L{build_limits} returns: the counts and the accept watch."""

    def __init__(self, connections: ConnectionLimits, accept_errors: AcceptErrorWatch) -> None:
        self.connections = connections
        self.accept_errors = accept_errors

    def watch(self, listener: Any) -> None:
        watch_listener(listener, self.accept_errors)


def build_limits(clock: Any, max_connections: int = 0, max_per_ip: int = 20,
                 exempt: Sequence[Network] = (),
                 nofile: Callable[[], tuple[int, int]] | None = None) -> ProcessLimits:
    """
    The limits of one process (C{max_connections} 0 for the
    L{derived_limit}; C{max_per_ip} 0 for none; C{exempt} networks), after
    raising the soft descriptor limit; one line says what they are.
    """
    before, now = (raise_nofile_limit if nofile is None else nofile)()
    derived, reserve = derived_limit(now)
    wanted = max_connections
    ceiling = max(1, now - reserve)
    if wanted > ceiling:
        log.warn("--max-connections {wanted} is more than {nofile} file descriptors allow: "
                 "using {ceiling}", wanted=wanted, nofile=now, ceiling=ceiling)
        wanted = ceiling
    connections = ConnectionLimits(clock, wanted or derived, max_per_ip, exempt)
    log.info("file descriptors: {nofile}{raised}; connection limit {limit}{how}, {per_ip} per "
             "address{exempt}", nofile=now,
             raised=f" (soft limit raised from {before})" if now != before else "",
             limit=connections.max_connections,
             how="" if wanted else f" ({FDS_PER_SESSION} per session, {reserve} kept in reserve)",
             per_ip=max_per_ip or "no limit",
             exempt=f" (exempt: {', '.join(map(str, exempt))})" if exempt else "")
    return ProcessLimits(connections, AcceptErrorWatch(clock, connections.reports))
