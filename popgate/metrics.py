"""
Prometheus metrics of one server process (C{--metrics}).

The counters are a log observer, L{Metrics}: every operational fact is an
event of L{popgate.events}, so counting those events counts the facts,
and no protocol or store knows about metrics.  What a count of events
cannot give (how many connections and sessions are open now) is read at
scrape time from the live objects, by L{LiveCollector}.  Each L{Metrics}
has its own C{CollectorRegistry}, never the global one, so tests (and
several servers in one process) keep their figures apart.

Labels take only values the server chooses (results, reasons,
mechanisms, stages), never a user name or an address: their number is
bounded whatever clients send.  The figures of a session (messages and
bytes retrieved, deletions) are counted when it ends, from its
C{pop3.logout} line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from popgate import __version__, events

__all__ = ["LiveCollector", "Metrics"]

#: Login and check durations: a local file answers in milliseconds, a
#: KDF in tens of them, LDAP or SQL in more; the login penalty waits up
#: to 15 s.
LOGIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
#: Delivery durations: a message written and synced, up to a slow disk.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# A login's method is the server's name for it (USER, APOP, a mechanism
# it implements); anything else is counted as "other", defensively.
_METHOD = re.compile(r"[A-Z0-9-]{1,20}")
_TLS_VERSION = re.compile(r"(TLS|SSL|DTLS)v[0-9.]{1,5}")
_DELIVERY_PROTOCOLS = {"lmtp.delivery": "lmtp", "deliver.delivery": "deliver"}


def _token(value: Any, allowed: Iterable[str]) -> str:
    """C{value} when it is one of C{allowed}, else C{other}: a label never
    takes a value the catalogue does not list."""
    return value if isinstance(value, str) and value in allowed else "other"


@functools.cache
def _values(event: str, name: str) -> tuple[str, ...]:
    """The values the catalogue allows for field C{name} of C{event}."""
    for f in events.CATALOGUE[event].fields:
        if f.name == name:
            return f.values
    raise KeyError(f"{event} has no field {name}")


class LiveCollector:
    """
    The gauges read when Prometheus scrapes: connections open (every
    listener of the process, as the connection limits count them),
    the limit, and POP3 sessions logged in now.

    @param connections: a L{popgate.limits.counts.ConnectionLimits}, or None.
    @param sessions: returns the number of logged-in sessions (a
        L{popgate.pop3.factory.POP3ServerFactory}'s C{logged_in_count}),
        or None.
    """

    def __init__(self, connections: Any = None,
                 sessions: Callable[[], int] | None = None) -> None:
        self.connections = connections
        self.sessions = sessions

    def _families(self) -> Iterator[tuple[GaugeMetricFamily, Callable[[], float] | None]]:
        connections = self.connections
        yield (GaugeMetricFamily(
            "popgate_connections_open", "Connections open now, POP3, POP3S and LMTP together "
            "(what --max-connections limits)."),
            None if connections is None else lambda: connections.total)
        yield (GaugeMetricFamily(
            "popgate_connections_max", "The connection limit of this process "
            "(--max-connections, or the one derived from the file descriptor limit)."),
            None if connections is None else lambda: connections.max_connections)
        yield (GaugeMetricFamily(
            "popgate_sessions_open", "POP3 sessions logged in now (each holds its maildrop)."),
            self.sessions)

    def describe(self) -> list[Metric]:
        return [family for family, _ in self._families()]

    def collect(self) -> list[Metric]:
        families: list[Metric] = []
        for family, read in self._families():
            if read is not None:
                family.add_metric([], float(read()))
                families.append(family)
        return families


class _Registry(CollectorRegistry):
    """
    A registry without the C{_created} series of counters and histograms:
    they would double what a scrape reads (the text format gives each its
    own gauge) and say only when the process started, which
    C{process_start_time_seconds} says once.
    """

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            if metric.type in ("counter", "histogram"):
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


@implementer(ILogObserver)
class Metrics:
    """
    The metrics of one process: a log observer counting L{popgate.events}
    into L{registry}, and the live gauges of L{LiveCollector}.  Add it to
    a log publisher to count (L{popgate.metrics_web.MetricsService} does
    while the server runs).

    @param process: also export the process's CPU, memory and file
        descriptors (C{process_*}, read from C{/proc}) and C{python_info}.
    """

    def __init__(self, connections: Any = None, sessions: Callable[[], int] | None = None,
                 process: bool = True, version: str | None = None) -> None:
        self.registry: CollectorRegistry = _Registry()
        r = self.registry
        self.live = LiveCollector(connections, sessions)
        r.register(self.live)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        Gauge("popgate_build_info", "popgate's version (always 1).", ["version"],
              registry=r).labels(version or __version__).set(1)

        self.connections = Counter(
            "popgate_pop3_connections", "POP3 connections accepted, by listener kind (pop3: "
            "plaintext or STLS, pop3s: implicit TLS); refused ones are not counted.",
            ["listener"], registry=r)
        self.refused = Counter(
            "popgate_connections_refused", "Connections refused by a connection limit "
            "(total: --max-connections, address: --max-connections-per-ip).",
            ["limit", "protocol"], registry=r)
        self.proxy_refused = Counter(
            "popgate_proxy_refused", "Connections to haproxy: listeners closed before any "
            "session, by reason (untrusted: not from --proxy-trusted; bad-header; timeout).",
            ["reason"], registry=r)
        self.logins = Counter(
            "popgate_logins", "Login attempts, by result (ok; failed: the client's fault; "
            "error: the server's), method (USER, APOP, the SASL mechanism) and reason.",
            ["result", "method", "reason"], registry=r)
        self.login_duration = Histogram(
            "popgate_login_duration_seconds", "Seconds from a login command to its result, "
            "the login penalty's wait included.", ["result"], buckets=LOGIN_BUCKETS,
            registry=r)
        self.login_check = Histogram(
            "popgate_login_check_seconds", "Seconds the user store and mail store took to "
            "answer a login (its duration less the penalty's wait).", ["result"],
            buckets=LOGIN_BUCKETS, registry=r)
        self.penalties = Counter(
            "popgate_auth_penalties", "Failed logins that made an address's next logins wait "
            "(repeated: the same wrong credentials again).", ["repeated"], registry=r)
        self.disconnects = Counter(
            "popgate_pop3_disconnects", "POP3 connections that ended without a login, by "
            "reason.", ["reason"], registry=r)
        self.sessions = Counter(
            "popgate_sessions", "POP3 sessions that ended after a login, by reason.",
            ["reason"], registry=r)
        self.retrieved = Counter(
            "popgate_messages_retrieved", "Messages sent, in full (retr) or in part (top); "
            "counted when the session ends.", ["command"], registry=r)
        self.retrieved_bytes = Counter(
            "popgate_retrieved_bytes", "Octets sent for them, as on the wire; counted when the "
            "session ends.", ["command"], registry=r)
        self.deleted = Counter(
            "popgate_messages_deleted", "Messages deleted (applied at QUIT).", registry=r)
        self.deleted_bytes = Counter(
            "popgate_deleted_bytes", "Octets of the messages deleted.", registry=r)
        self.deliveries = Counter(
            "popgate_deliveries", "Recipients delivered or not, by protocol (lmtp; deliver "
            "counts only in the process that delivers), result (ok, tempfail, failed) and "
            "reason.", ["protocol", "result", "reason"], registry=r)
        self.delivered_bytes = Counter(
            "popgate_delivered_bytes", "Octets of the messages delivered (as stored).",
            ["protocol"], registry=r)
        self.delivery_duration = Histogram(
            "popgate_delivery_duration_seconds", "Seconds a recipient's delivery took.",
            ["protocol"], buckets=DELIVERY_BUCKETS, registry=r)
        self.store_errors = Counter(
            "popgate_store_errors", "Mail store failures, by operation and kind (temporary, "
            "permanent, internal).", ["op", "kind"], registry=r)
        self.userstore_errors = Counter(
            "popgate_userstore_errors", "User store failures (down, misconfigured), by "
            "operation and kind.", ["op", "kind"], registry=r)
        self.tls_handshakes = Counter(
            "popgate_tls_handshakes", "TLS handshakes that succeeded, by stage and TLS "
            "version; counted at the first command over TLS.", ["stage", "version"], registry=r)
        self.tls_failures = Counter(
            "popgate_tls_handshake_failures", "TLS handshakes that failed, by stage (pop3s: "
            "implicit TLS, stls).", ["stage"], registry=r)
        self.reloads = Counter(
            "popgate_config_reloads", "Reloads (SIGHUP), by result (ok: the new configuration "
            "is in use; failed: the old one stays).", ["result"], registry=r)
        self.reload_ok = Gauge(
            "popgate_config_last_reload_successful", "1 when the last reload succeeded (or "
            "none was asked for), 0 when it failed and the old configuration is in use.",
            registry=r)
        self.reload_ok.set(1)
        self._initialise()
        self._handlers: dict[str, Callable[[LogEvent], None]] = {
            "pop3.connect": self._connect,
            "pop3.login": self._login,
            "pop3.disconnect": self._disconnect,
            "pop3.logout": self._logout,
            "lmtp.delivery": self._delivery,
            "deliver.delivery": self._delivery,
            "auth.penalty": self._penalty,
            "limit.refused": self._refused,
            "proxy.refused": self._proxy_refused,
            "tls.handshake": self._tls_handshake,
            "tls.handshake_failed": self._tls_failed,
            "store.error": self._store_error,
            "userstore.error": self._userstore_error,
            "config.reload": self._reload,
        }

    def _initialise(self) -> None:
        """Series whose label values are few start at 0, so a rate() sees
        their first increase."""
        for listener in ("pop3", "pop3s"):
            self.connections.labels(listener)
        for limit in _values("limit.refused", "limit"):
            for protocol in _values("limit.refused", "protocol"):
                self.refused.labels(limit, protocol)
        for reason in events.PROXY_REASONS:
            self.proxy_refused.labels(reason)
        for result in _values("pop3.login", "result"):
            self.login_duration.labels(result)
            self.login_check.labels(result)
        for command in ("retr", "top"):
            self.retrieved.labels(command)
            self.retrieved_bytes.labels(command)
        for stage in _values("tls.handshake_failed", "stage"):
            self.tls_failures.labels(stage)
        for result in _values("config.reload", "result"):
            self.reloads.labels(result)
        for repeated in ("yes", "no"):
            self.penalties.labels(repeated)
        for op in _values("store.error", "op"):
            for kind in _values("store.error", "kind"):
                self.store_errors.labels(op, kind)
        for op in _values("userstore.error", "op"):
            for kind in _values("userstore.error", "kind"):
                self.userstore_errors.labels(op, kind)

    def __call__(self, event: LogEvent) -> None:
        name = event.get("event")
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            return
        try:
            handler(event)
        except (KeyError, TypeError, ValueError):
            # An event without its fields (not emitted by events.emit):
            # not counted.  An observer that raised would be removed
            # from the publisher, and every later event lost.
            pass

    # -- one method per event

    def _connect(self, event: LogEvent) -> None:
        self.connections.labels("pop3s" if event["tls"] == "yes" else "pop3").inc()

    def _login(self, event: LogEvent) -> None:
        result = _token(event["result"], _values("pop3.login", "result"))
        method = event["method"]
        method = method if isinstance(method, str) and _METHOD.fullmatch(method) else "other"
        reason = _token(event["reason"], events.LOGIN_REASONS)
        duration, wait = float(event["duration"]), float(event["wait"])
        self.logins.labels(result, method, reason).inc()
        self.login_duration.labels(result).observe(duration)
        self.login_check.labels(result).observe(max(0.0, round(duration - wait, 3)))

    def _disconnect(self, event: LogEvent) -> None:
        self.disconnects.labels(_token(event["reason"], events.END_REASONS)).inc()

    def _logout(self, event: LogEvent) -> None:
        # Every field read first: an event is counted whole or not at all.
        figures = [int(event[key]) for key in
                   ("retr", "retr_bytes", "top", "top_bytes", "deleted", "deleted_bytes")]
        if min(figures) < 0:
            raise ValueError("a negative count")
        retr, retr_bytes, top, top_bytes, deleted, deleted_bytes = figures
        self.sessions.labels(_token(event["reason"], events.END_REASONS)).inc()
        self.retrieved.labels("retr").inc(retr)
        self.retrieved_bytes.labels("retr").inc(retr_bytes)
        self.retrieved.labels("top").inc(top)
        self.retrieved_bytes.labels("top").inc(top_bytes)
        self.deleted.inc(deleted)
        self.deleted_bytes.inc(deleted_bytes)

    def _delivery(self, event: LogEvent) -> None:
        protocol = _DELIVERY_PROTOCOLS[event["event"]]
        result = _token(event["result"], events.DELIVERY_RESULTS)
        reason = _token(event["reason"], events.DELIVERY_REASONS)
        size, duration = int(event["size"]), float(event["duration"])
        if size < 0:
            raise ValueError("a negative size")
        self.deliveries.labels(protocol, result, reason).inc()
        if result == "ok":
            self.delivered_bytes.labels(protocol).inc(size)
        self.delivery_duration.labels(protocol).observe(duration)

    def _penalty(self, event: LogEvent) -> None:
        self.penalties.labels(_token(event["repeated"], ("yes", "no"))).inc()

    def _refused(self, event: LogEvent) -> None:
        self.refused.labels(_token(event["limit"], _values("limit.refused", "limit")),
                            _token(event["protocol"], _values("limit.refused", "protocol"))).inc()

    def _proxy_refused(self, event: LogEvent) -> None:
        self.proxy_refused.labels(_token(event["reason"], events.PROXY_REASONS)).inc()

    def _tls_handshake(self, event: LogEvent) -> None:
        version = event["version"]
        if not (isinstance(version, str) and _TLS_VERSION.fullmatch(version)):
            version = "other"
        self.tls_handshakes.labels(
            _token(event["stage"], _values("tls.handshake", "stage")), version).inc()

    def _tls_failed(self, event: LogEvent) -> None:
        self.tls_failures.labels(
            _token(event["stage"], _values("tls.handshake_failed", "stage"))).inc()

    def _store_error(self, event: LogEvent) -> None:
        self.store_errors.labels(_token(event["op"], _values("store.error", "op")),
                                 _token(event["kind"], _values("store.error", "kind"))).inc()

    def _userstore_error(self, event: LogEvent) -> None:
        self.userstore_errors.labels(
            _token(event["op"], _values("userstore.error", "op")),
            _token(event["kind"], _values("userstore.error", "kind"))).inc()

    def _reload(self, event: LogEvent) -> None:
        result = _token(event["result"], _values("config.reload", "result"))
        self.reloads.labels(result).inc()
        self.reload_ok.set(1 if result == "ok" else 0)
