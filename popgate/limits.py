"""
Connection limits and listener hardening, as a login process has them.

One L{ConnectionLimits} per process counts every connection of its POP3,
POP3S and LMTP listeners; each listener's factory is wrapped in a
L{LimitedFactory}.  Over the global limit, or over the per-address limit
(POP3 and POP3S; IPv6 grouped per /64; exempt networks not counted), the client
gets one C{-ERR [SYS/TEMP]} line (LMTP: C{421}) and is closed, instead of
an C{accept()} that fails with C{EMFILE} for everyone.

The default global limit comes from C{RLIMIT_NOFILE} (raised to the hard
limit at start-up), see L{derived_limit}.  Listeners get a backlog of 511
(or C{somaxconn}, if lower) unless their endpoint string says otherwise.
Should C{accept()} still fail (descriptors used up elsewhere), the
L{AcceptErrorWatch} turns Twisted's one-line-per-client recovery messages
into one line per interval, and pauses a listener that would otherwise be
retried in a busy loop; accepting resumes by itself.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ISSLTransport,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from popgate.events import emit
from popgate.proxy_protocol import ProxyHeaderFactory

log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Descriptors the process needs besides its sessions: standard streams,
#: log files, the epoll and waker descriptors, listening sockets, Twisted's
#: spare EMFILE descriptor, files the thread pool is reading, DB and LDAP
#: connections.
PROCESS_RESERVE = 64
#: Sockets accepted in one reactor turn only to be refused (each lives
#: until its refusal is written, at the next turn), and POP3S refusals
#: waiting for their TLS handshake (at most half of it).
ACCEPT_RESERVE = 128
#: What one session may hold at its peak: its socket, the maildrop lock,
#: and the message being sent.
FDS_PER_SESSION = 3
#: Raising the soft limit stops here, well above what one process serves.
NOFILE_CAP = 65536
#: Twisted's endpoints default to 50, which drops connections in a burst.
DEFAULT_BACKLOG = 511

POP3_REFUSALS = {
    "total": b"-ERR [SYS/TEMP] Too many connections\r\n",
    "address": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
}
LMTP_REFUSALS = {
    "total": b"421 4.3.2 Too many connections, try again later\r\n",
    "address": b"421 4.3.2 Too many connections from your address, try again later\r\n",
}


def address_key(host: str, ipv6_prefix: int = 64) -> str:
    """
    The per-client key of C{host}: IPv6 addresses by their C{/ipv6_prefix}
    network (one host usually owns a whole /64), IPv4-mapped IPv6 as the
    IPv4 address, as L{popgate.cred.penalty} groups them.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """
    C{specs} (CIDR strings, or comma-separated lists of them) as networks.

    @raise ValueError: naming the first one that is not a network.
    """
    networks = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network: {part!r}") from None
    return tuple(networks)


def derived_limit(nofile: int) -> tuple[int, int]:
    """
    (global connection limit, reserve) for a process allowed C{nofile}
    descriptors: the reserve (L{PROCESS_RESERVE} + L{ACCEPT_RESERVE}, at
    most a quarter of C{nofile}) stays free, and every session may hold
    L{FDS_PER_SESSION} descriptors, so neither C{accept()} nor a store's
    C{open()} runs out.
    """
    reserve = min(PROCESS_RESERVE + ACCEPT_RESERVE, nofile // 4)
    return max(1, (nofile - reserve) // FDS_PER_SESSION), reserve


def raise_nofile_limit(getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                       setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
                       cap: int = NOFILE_CAP) -> tuple[int, int]:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (at most C{cap}):
    systemd and most shells start services with a soft limit of 1024.
    Needs no privilege.  Returns (soft limit before, soft limit now).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    wanted = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft


def listen_backlog(somaxconn: str = "/proc/sys/net/core/somaxconn") -> int:
    """L{DEFAULT_BACKLOG}, or the kernel's C{somaxconn} when lower (the
    kernel caps the backlog there anyway)."""
    try:
        with open(somaxconn) as f:
            return max(1, min(DEFAULT_BACKLOG, int(f.read().strip())))
    except (OSError, ValueError):
        return DEFAULT_BACKLOG


def _split_endpoint(description: str) -> list[str]:
    """C{description} cut at its unescaped colons (escapes kept)."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def with_backlog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=} added when it is a C{tcp:}/C{tcp6:}
    endpoint (also behind C{haproxy:}) that gives none.
    """
    parts = _split_endpoint(description)
    kinds = parts[1:2] if parts[0] == "haproxy" else parts[:1]
    if kinds not in (["tcp"], ["tcp6"]) or description.endswith("\\"):
        return description
    if any(part.startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


class OncePerInterval:
    """
    One log line per kind of event and interval: the first event is logged
    at once, later ones are only counted, and the count is logged when the
    interval ends.  A flood of refusals or accept errors stays a few lines.
    """

    def __init__(self, clock: Any, interval: float = 60.0, logger: Logger | None = None) -> None:
        self.clock = clock
        self.interval = interval
        self.log = log if logger is None else logger
        self._counts: dict[str, int] = {}
        self._summaries: dict[str, tuple[str, dict[str, Any]]] = {}

    def __len__(self) -> int:
        """Kinds of event in their interval now."""
        return len(self._counts)

    def event(self, kind: str, first: str, summary: str, **fields: Any) -> None:
        """Log C{first} (a format with C{fields}) unless C{kind} was logged
        this interval; C{summary} (with C{{count}} and C{{interval}}, and
        C{{s}}: "s" unless the count is 1) then says how many followed."""
        if kind in self._counts:
            self._counts[kind] += 1
            return
        self.log.warn(first, **fields)
        self._counts[kind] = 0
        self._summaries[kind] = (summary, fields)
        self.clock.callLater(self.interval, self._end, kind)

    def _end(self, kind: str) -> None:
        count = self._counts.pop(kind, 0)
        summary, fields = self._summaries.pop(kind)
        if count:
            self.log.warn(summary, **fields, count=count, s="" if count == 1 else "s",
                          interval=self.interval)
            # Still happening: keep summarising rather than logging anew.
            self._counts[kind] = 0
            self._summaries[kind] = (summary, fields)
            self.clock.callLater(self.interval, self._end, kind)


_ADDRESSES_REPORTED = 100


class _Ticket:
    """One admitted connection's share of the counts; released once."""

    def __init__(self, limits: ConnectionLimits, key: str | None) -> None:
        self._limits = limits
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._release(self.key)


class ConnectionLimits:
    """
    The connection counts of one process, shared by all its listeners.

    @param max_connections: connections at once, over all listeners.
    @param max_per_ip: connections at once from one address (IPv6: one
        C{/ipv6_prefix}); 0 for no limit.
    @param exempt: networks whose clients have no per-address limit (a
        webmail, a proxy); they still count toward C{max_connections}.
    @param max_tls_refusals: POP3S refusals waiting for their TLS
        handshake at once (at most C{refusal_timeout} seconds each).
    """

    def __init__(self, clock: Any, max_connections: int, max_per_ip: int = 20,
                 exempt: Sequence[Network] = (), ipv6_prefix: int = 64,
                 max_tls_refusals: int = ACCEPT_RESERVE // 2,
                 refusal_timeout: float = 10.0) -> None:
        if max_connections < 1 or max_per_ip < 0:
            raise ValueError("connection limits must be positive")
        self.clock = clock
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.exempt = tuple(exempt)
        self.ipv6_prefix = ipv6_prefix
        self.max_tls_refusals = max_tls_refusals
        self.refusal_timeout = refusal_timeout
        self.total = 0
        self.tls_refusals = 0
        self._by_address: dict[str, int] = {}
        self.reports = OncePerInterval(clock)

    def count_for(self, host: str) -> int:
        """Open connections counted for C{host}'s key."""
        return self._by_address.get(address_key(host, self.ipv6_prefix), 0)

    def _key(self, addr: Any) -> str | None:
        """The per-address key of C{addr}, or None when it is not limited
        (a UNIX socket, an exempt network, no per-address limit)."""
        host = getattr(addr, "host", None)
        if not self.max_per_ip or not isinstance(host, str):
            return None
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.exempt):
            return None
        return address_key(str(address), self.ipv6_prefix)

    def admit(self, addr: Any, per_ip: bool = True) -> tuple[_Ticket | None, str | None]:
        """
        Count a new connection from C{addr}: (ticket, None) when admitted,
        (None, "total" or "address") when it is over a limit (nothing is
        counted then).
        """
        if self.total >= self.max_connections:
            self.reports.event("total", "connection limit reached ({limit}): refusing clients",
                               "connection limit ({limit}): refused {count} more client{s} "
                               "in {interval:.0f} s", limit=self.max_connections)
            return None, "total"
        key = self._key(addr) if per_ip else None
        if key is not None:
            count = self._by_address.get(key, 0)
            if count >= self.max_per_ip:
                # A line per address (for fail2ban), but not for an
                # unbounded number of them in one interval.
                if len(self.reports) < _ADDRESSES_REPORTED:
                    self.reports.event(f"address {key}",
                                       "too many connections from {address} ({limit}): refusing",
                                       "too many connections from {address}: refused {count} "
                                       "more in {interval:.0f} s", address=key,
                                       limit=self.max_per_ip)
                else:
                    self.reports.event("addresses", "too many connections from many addresses "
                                       "({limit} each): refusing", "too many connections from "
                                       "many addresses: refused {count} more in {interval:.0f} s",
                                       limit=self.max_per_ip)
                return None, "address"
            self._by_address[key] = count + 1
        self.total += 1
        return _Ticket(self, key), None

    def _release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            count = self._by_address.pop(key) - 1
            if count:
                self._by_address[key] = count


class _Refusal(Protocol):
    """
    Says why and closes.  Over plain TCP that takes one reactor turn; over
    TLS it waits for the client's handshake, so those refusals are bounded
    in number (past the bound the client is reset without a word) and in
    time (C{refusal_timeout}), and cannot eat the descriptors they protect.
    """

    def __init__(self, limits: ConnectionLimits, message: bytes) -> None:
        self.limits = limits
        self.message = message
        self._counted = False
        self._deadline: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport):
            if self.limits.tls_refusals >= self.limits.max_tls_refusals:
                transport.abortConnection()
                return
            self.limits.tls_refusals += 1
            self._counted = True
        transport.write(self.message)
        transport.loseConnection()
        self._deadline = self.limits.clock.callLater(self.limits.refusal_timeout,
                                                     transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self._counted:
            self.limits.tls_refusals -= 1
            self._counted = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()


class _LimitedProtocol(ProtocolWrapper):
    """The admitted protocol, unchanged on the wire; gives its place back
    when the connection ends."""

    # Set by makeConnection, before anything here runs.
    transport: ITransport

    def __init__(self, factory: LimitedFactory, wrapped: Any, ticket: _Ticket) -> None:
        super().__init__(factory, wrapped)
        self.ticket = ticket

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper's, but a half-closeable protocol stays one:
        # the wrapper would otherwise provide only its transport's
        # interfaces, and a client's shutdown(SHUT_WR) would close.
        directlyProvides(self, providedBy(transport))
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)
        Protocol.makeConnection(self, transport)
        # directlyProvides above gave the wrapper its transport's interfaces.
        self.wrappedProtocol.makeConnection(cast(ITransport, self))

    # ProtocolWrapper has a plain attribute (an int it sets itself in the
    # loseConnection overridden here); a read-only property cannot say so.
    @property
    def disconnecting(self) -> bool:  # type: ignore[override]
        # The transport's own: the session checks it after loseConnection,
        # whoever called that.
        return bool(getattr(self.transport, "disconnecting", False))

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    # Called only when this wrapper provides IHalfCloseableProtocol, which
    # makeConnection declares only when the wrapped protocol does.
    def readConnectionLost(self) -> None:
        cast(IHalfCloseableProtocol, self.wrappedProtocol).readConnectionLost()

    def writeConnectionLost(self) -> None:
        cast(IHalfCloseableProtocol, self.wrappedProtocol).writeConnectionLost()

    def logPrefix(self) -> str:
        # The log's "system" field stays the protocol's own name.
        wrapped = self.wrappedProtocol
        return wrapped.logPrefix() if hasattr(wrapped, "logPrefix") else type(wrapped).__name__

    def connectionLost(self, reason: Any = None) -> None:
        self.ticket.release()
        super().connectionLost(reason)


class LimitedFactory(WrappingFactory[_LimitedProtocol]):
    """
    Wraps a listener's factory: each connection is admitted by C{limits}
    (per address too, when C{per_ip}) or refused with C{refusals[kind]}.
    For POP3S wrap the POP3 factory I{inside} the TLS factory, so the
    refusal is sent over TLS.
    """

    protocol = _LimitedProtocol
    noisy = False  # the wrapped factory says "Starting factory" already

    _log = Logger()

    def __init__(self, wrapped: Any, limits: ConnectionLimits, per_ip: bool = True,
                 refusals: dict[str, bytes] = POP3_REFUSALS, protocol: str = "pop3") -> None:
        super().__init__(wrapped)
        self.limits = limits
        self.per_ip = per_ip
        self.refusals = refusals
        self.protocol_name = protocol

    def logPrefix(self) -> str:
        wrapped = self.wrappedFactory
        return wrapped.logPrefix() if hasattr(wrapped, "logPrefix") else type(wrapped).__name__

    def buildProtocol(self, addr: Any) -> Any:
        ticket, over = self.limits.admit(addr, self.per_ip)
        if ticket is None:
            limit = over or "total"
            # Every refusal, for the metrics; the limits' warning says so in
            # words, once per interval.
            emit(self._log, "limit.refused", limit=limit, rip=addr, protocol=self.protocol_name,
                 max=self.limits.max_connections if limit == "total" else self.limits.max_per_ip)
            return _Refusal(self.limits, self.refusals[limit])
        try:
            wrapped = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            ticket.release()
            raise
        if wrapped is None:
            ticket.release()
            return None
        return self.protocol(self, wrapped, ticket)

    def registerProtocol(self, p: Any) -> None:
        pass  # the counts live in the limits; no per-factory table

    def unregisterProtocol(self, p: Any) -> None:
        pass


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


def prepare_listener(description: str, factory: Any, clock: Any) -> tuple[str, Any]:
    """
    The endpoint string and factory to listen with: the backlog added
    (L{with_backlog}), and for C{haproxy:} the inner endpoint with a
    factory that builds the session once the PROXY header is read (see
    L{popgate.proxy_protocol}), so limits and greeting see the real client.
    """
    description = with_backlog(description, listen_backlog())
    if description.startswith("haproxy:"):
        return description[len("haproxy:"):], ProxyHeaderFactory(factory, clock)
    return description, factory


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
