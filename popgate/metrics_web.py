"""
C{--metrics ENDPOINT}: the metrics of L{popgate.metrics} served as
C{/metrics}, in Prometheus's text format (OpenMetrics when the scraper
asks for it), by C{twisted.web}.

A scrape reads counters and the live gauges in memory, on the reactor
thread (where they change), and reads C{/proc} for the process figures:
nothing that blocks.  (C{prometheus_client.twisted.MetricsResource} is
not used: it runs the WSGI app in the global reactor's thread pool.)

With C{--workers N} every process counts only what it serves, so each
serves its own metrics: the first process on ENDPOINT, worker I on
ENDPOINT's port plus I (a UNIX socket: its path with C{.I} added).
Prometheus scrapes them all, and C{sum()} adds them up; a worker that
restarts starts its counters at zero, which Prometheus handles as the
reset of one target.  (One endpoint adding the workers' figures up would
lose exactly that: a restarted worker would make the sums go down.)
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.logger import LogPublisher, globalLogPublisher
from twisted.python import usage
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from popgate.metrics import Metrics

__all__ = ["MetricsResource", "MetricsService", "MetricsSite", "metrics_site", "worker_endpoint"]


class MetricsResource(Resource):
    """C{GET /metrics}: the registry's figures, now."""

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        body: bytes = encoder(self.registry)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return body


class _Root(Resource):
    """C{/metrics}, and a plain 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return pages.notFound("No Such Resource", "popgate serves /metrics only.")


class MetricsSite(Site):
    """No access log: a scrape every few seconds is no news."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(registry: Any, reactor: Any) -> Site:
    """The web site: C{/metrics}, and nothing else (404)."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    site = MetricsSite(root, reactor=reactor)
    site.displayTracebacks = False
    return site


def worker_endpoint(description: str, number: int) -> str:
    """
    The metrics endpoint of worker C{number} (0: the first process, which
    keeps C{description}): a C{tcp:}/C{tcp6:} port plus C{number} (port 0
    stays 0), a C{unix:} path with C{.number} added.

    @raise usage.UsageError: for another kind of endpoint, which workers
        could not each have their own of.
    """
    parts = re.split(r"(?<!\\):", description)  # colons escaped with backslashes stay
    kind = parts[0]
    if kind not in ("tcp", "tcp6", "unix"):
        raise usage.UsageError(f"--metrics with --workers needs a tcp:, tcp6: or unix: "
                               f"endpoint, not {description!r}")
    key = "address" if kind == "unix" else "port"
    for i, part in enumerate(parts[1:], 1):
        name, eq, value = part.partition("=")
        if eq and name != key:
            continue
        value = value if eq else part
        prefix = f"{key}=" if eq else ""
        if kind == "unix":
            parts[i] = f"{prefix}{value}.{number}" if number else part
        else:
            try:
                port = int(value)
            except ValueError:
                raise usage.UsageError(f"--metrics {description}: bad port {value!r}") from None
            parts[i] = f"{prefix}{port + number if port else 0}"
        return ":".join(parts)
    raise usage.UsageError(f"--metrics {description}: no {'path' if kind == 'unix' else 'port'}")


class MetricsService(service.MultiService):
    """
    While running: L{metrics} observes C{publisher} (the global one: every
    popgate logger's events), and its listener serves them.  Stopped, it
    no longer counts, so servers started and stopped in one process (the
    tests) never see each other's events.
    """

    def __init__(self, metrics: Metrics, listener: StreamServerEndpointService | None = None,
                 publisher: LogPublisher = globalLogPublisher) -> None:
        super().__init__()
        self.metrics = metrics
        self.publisher = publisher
        self.listener = listener
        if listener is not None:
            listener.setServiceParent(self)

    def startService(self) -> None:
        self.publisher.addObserver(self.metrics)
        super().startService()

    def stopService(self) -> Any:
        self.publisher.removeObserver(self.metrics)
        return super().stopService()
