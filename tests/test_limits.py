"""Unit tests for popgate.limits and popgate.proxy_protocol: StringTransport
and a fake clock; the real-process tests are in test_connection_limits."""

from __future__ import annotations

import resource
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from zope.interface import alsoProvides

from popgate import tap
from popgate.addresses import address_key, parse_networks
from popgate.limits import budget as limits_budget
from popgate.limits import counts as limits_counts
from popgate.limits import process as limits_process
from popgate.limits import reports as limits_reports
from popgate.limits.accept_errors import AcceptErrorWatch
from popgate.limits.budget import derived_limit, raise_nofile_limit
from popgate.limits.counts import ConnectionLimits
from popgate.limits.listener import listen_backlog, prepare_listener, with_backlog
from popgate.limits.process import build_limits
from popgate.limits.refusal import LMTP_REFUSALS, LimitedFactory
from popgate.limits.reports import OncePerInterval
from popgate.pop3.factory import POP3ServerFactory
from popgate.proxy_protocol import ProxyHeaderFactory
from tests.helpers import make_portal

GREETING = b"+OK hello\r\n"


class Greeter(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(GREETING)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class RecordingFactory(Factory):
    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.built: list[Greeter] = []

    def buildProtocol(self, addr: Any) -> Greeter:
        self.addresses.append(addr)
        proto = Greeter()
        self.built.append(proto)
        return proto


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


def v6(host: str) -> IPv6Address:
    return IPv6Address("TCP", host, 40000)


class Client:
    """One connection through a factory, on a StringTransport."""

    def __init__(self, factory: Any, addr: Any, transport: StringTransport | None = None) -> None:
        self.transport = transport or StringTransport(peerAddress=addr)
        self.protocol = factory.buildProtocol(addr)
        self.protocol.makeConnection(self.transport)

    def written(self) -> bytes:
        return self.transport.value()

    def close(self) -> None:
        self.protocol.connectionLost(None)


def make(max_connections: int = 100, **kw: Any) -> tuple[Clock, ConnectionLimits,
                                                          RecordingFactory, LimitedFactory]:
    clock = Clock()
    counts = ConnectionLimits(clock, max_connections, **kw)
    inner = RecordingFactory()
    return clock, counts, inner, LimitedFactory(inner, counts)


# -- addresses and networks

@pytest.mark.parametrize("host, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("/run/popgate.sock", "/run/popgate.sock"),
])
def test_address_key_groups_ipv6_per_64(host: str, key: str) -> None:
    assert address_key(host) == key


def test_parse_networks_takes_lists_and_commas() -> None:
    nets = parse_networks(["10.0.0.0/8, 192.0.2.1", "2001:db8::/32"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
    with pytest.raises(ValueError, match="not a network: 'webmail'"):
        parse_networks(["10.0.0.0/8,webmail"])


# -- descriptors and backlog

@pytest.mark.parametrize("nofile, limit, reserve", [
    (1024, 277, 192), (65536, 21781, 192), (20000, 6602, 192), (40, 10, 10), (4, 1, 1)])
def test_derived_limit_keeps_the_reserve(nofile: int, limit: int, reserve: int) -> None:
    assert derived_limit(nofile) == (limit, reserve)
    assert limit * limits_budget.FDS_PER_SESSION + reserve <= max(nofile, 4)


class FakeRlimit:
    def __init__(self, soft: int, hard: int, fail: bool = False) -> None:
        self.value = (soft, hard)
        self.fail = fail

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.value

    def set(self, which: int, value: tuple[int, int]) -> None:
        if self.fail:
            raise ValueError("not allowed")
        self.value = value


@pytest.mark.parametrize("soft, hard, fail, result, now", [
    (1024, 524288, False, (1024, 65536), (65536, 524288)),
    (1024, 4096, False, (1024, 4096), (4096, 4096)),
    (1024, resource.RLIM_INFINITY, False, (1024, 65536), (65536, resource.RLIM_INFINITY)),
    (1024, 1024, False, (1024, 1024), (1024, 1024)),
    (100000, 200000, False, (100000, 100000), (100000, 200000)),  # never lowered
    (1024, 4096, True, (1024, 1024), (1024, 4096)),
])
def test_raise_nofile_limit(soft: int, hard: int, fail: bool, result: tuple[int, int],
                            now: tuple[int, int]) -> None:
    fake = FakeRlimit(soft, hard, fail)
    assert raise_nofile_limit(fake.get, fake.set) == result
    assert fake.value == now


@pytest.mark.parametrize("content, backlog", [("4096\n", 511), ("128\n", 128), ("x", 511)])
def test_listen_backlog_is_capped_by_somaxconn(tmp_path: Path, content: str, backlog: int) -> None:
    path = tmp_path / "somaxconn"
    path.write_text(content)
    assert listen_backlog(str(path)) == backlog
    assert listen_backlog(str(tmp_path / "missing")) == 511


@pytest.mark.parametrize("given, wanted", [
    ("tcp:110", "tcp:110:backlog=511"),
    ("tcp:port=110:interface=127.0.0.1", "tcp:port=110:interface=127.0.0.1:backlog=511"),
    ("tcp6:995:interface=\\:\\:1", "tcp6:995:interface=\\:\\:1:backlog=511"),
    ("haproxy:tcp:110", "haproxy:tcp:110:backlog=511"),
    ("tcp:110:backlog=20", "tcp:110:backlog=20"),
    ("tcp:110:interface=a\\:backlog=x", "tcp:110:interface=a\\:backlog=x:backlog=511"),
    ("unix:/run/popgate/lmtp", "unix:/run/popgate/lmtp"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
])
def test_with_backlog(given: str, wanted: str) -> None:
    assert with_backlog(given, 511) == wanted


def test_backlog_reaches_the_endpoint() -> None:
    description, _ = prepare_listener("tcp6:0:interface=\\:\\:1", object(), Clock())
    endpoint = endpoints.serverFromString(Clock(), description)
    assert endpoint._backlog == listen_backlog()  # type: ignore[attr-defined]
    assert endpoint._interface == "::1"  # type: ignore[attr-defined]


# -- the limits

def test_global_limit_refuses_and_frees_on_close() -> None:
    _, counts, inner, factory = make(max_connections=2)
    first, second = Client(factory, v4("192.0.2.1")), Client(factory, v4("192.0.2.2"))
    assert first.written() == second.written() == GREETING
    third = Client(factory, v4("192.0.2.3"))
    assert third.written() == b"-ERR [SYS/TEMP] Too many connections\r\n"
    assert third.transport.disconnecting
    assert len(inner.built) == 2  # no session was built for the refused client
    third.close()
    assert counts.total == 2
    first.close()
    assert inner.built[0].lost and counts.total == 1
    assert Client(factory, v4("192.0.2.3")).written() == GREETING


def test_per_address_limit_with_ipv6_per_64() -> None:
    _, counts, _, factory = make(max_per_ip=2)
    for _ in range(2):
        assert Client(factory, v4("192.0.2.1")).written() == GREETING
    refused = Client(factory, v4("192.0.2.1"))
    assert refused.written() == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
    assert Client(factory, v4("192.0.2.2")).written() == GREETING
    assert Client(factory, v6("::ffff:192.0.2.2")).written() == GREETING  # the same IPv4 host
    assert Client(factory, v6("::ffff:192.0.2.2")).written().startswith(b"-ERR")
    Client(factory, v6("2001:db8:0:1::1"))
    Client(factory, v6("2001:db8:0:1::2"))
    assert Client(factory, v6("2001:db8:0:1:ffff::3")).written().startswith(b"-ERR [SYS/TEMP]")
    assert Client(factory, v6("2001:db8:0:2::1")).written() == GREETING  # another /64
    assert counts.count_for("2001:db8:0:1::77") == 2


def test_exempt_networks_count_globally_only() -> None:
    _, counts, _, factory = make(max_connections=5, max_per_ip=1,
                                 exempt=parse_networks(["10.0.0.0/8", "2001:db8::/32"]))
    clients = [Client(factory, v4("10.1.2.3")) for _ in range(3)]
    clients.append(Client(factory, v6("::ffff:10.1.2.3")))
    assert all(c.written() == GREETING for c in clients)
    assert Client(factory, v4("192.0.2.1")).written() == GREETING
    assert counts.total == 5
    assert Client(factory, v4("10.1.2.3")).written() == b"-ERR [SYS/TEMP] Too many connections\r\n"


def test_no_per_address_limit_for_unix_sockets_lmtp_or_zero() -> None:
    _, counts, inner, _ = make(max_per_ip=1)
    unix = LimitedFactory(inner, counts)
    for _ in range(3):
        assert Client(unix, UNIXAddress("/run/x")).written() == GREETING
    lmtp = LimitedFactory(inner, counts, per_ip=False, refusals=LMTP_REFUSALS)
    for _ in range(3):
        assert Client(lmtp, v4("192.0.2.9")).written() == GREETING
    _, _, _, unlimited = make(max_per_ip=0)
    assert all(Client(unlimited, v4("192.0.2.9")).written() == GREETING for _ in range(30))


def test_lmtp_refusal_is_an_lmtp_reply() -> None:
    _, counts, inner, _ = make(max_connections=1)
    lmtp = LimitedFactory(inner, counts, per_ip=False, refusals=LMTP_REFUSALS)
    Client(lmtp, v4("127.0.0.1"))
    assert Client(lmtp, v4("127.0.0.1")).written() == (
        b"421 4.3.2 Too many connections, try again later\r\n")


def test_release_is_counted_once() -> None:
    _, counts, _, factory = make()
    client = Client(factory, v4("192.0.2.1"))
    ticket = client.protocol.ticket
    client.close()
    ticket.release()
    assert counts.total == 0 and counts.count_for("192.0.2.1") == 0


def tls_transport(addr: Any) -> StringTransport:
    transport = StringTransport(peerAddress=addr)
    alsoProvides(transport, ISSLTransport)
    return transport


def test_tls_refusals_are_bounded_in_number_and_time() -> None:
    clock, counts, _, factory = make(max_connections=1, max_tls_refusals=2, refusal_timeout=5)
    Client(factory, v4("192.0.2.1"))
    waiting = [Client(factory, v4("192.0.2.2"), tls_transport(v4("192.0.2.2"))) for _ in range(2)]
    assert all(w.written() == b"-ERR [SYS/TEMP] Too many connections\r\n" for w in waiting)
    assert counts.tls_refusals == 2
    reset = Client(factory, v4("192.0.2.2"), tls_transport(v4("192.0.2.2")))
    assert reset.written() == b"" and reset.transport.disconnecting
    waiting[0].close()
    assert counts.tls_refusals == 1
    clock.advance(5)
    assert waiting[1].transport.disconnecting
    waiting[1].close()
    assert counts.tls_refusals == 0
    assert not any(w.protocol._deadline.active() for w in waiting)


def test_the_wrapper_keeps_half_close_and_the_log_prefix() -> None:
    portal, _ = make_portal()
    clock = Clock()
    counts = ConnectionLimits(clock, 10)
    factory = LimitedFactory(POP3ServerFactory(portal, None, clock), counts)
    client = Client(factory, v4("127.0.0.1"))
    assert client.written().startswith(b"+OK")
    assert IHalfCloseableProtocol.providedBy(client.protocol)
    assert client.protocol.logPrefix() == "POP3ServerProtocol"
    assert factory.logPrefix() == "POP3ServerFactory"
    client.protocol.dataReceived(b"CAPA\r\n")
    assert client.written().endswith(b"\r\n.\r\n")
    assert not client.protocol.disconnecting
    client.protocol.readConnectionLost()  # forwarded: the session closes
    assert client.transport.disconnecting and client.protocol.disconnecting
    plain = Client(LimitedFactory(RecordingFactory(), counts), v4("127.0.0.1"))
    assert not IHalfCloseableProtocol.providedBy(plain.protocol)


# -- logging once per interval

class Captured:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


def test_once_per_interval() -> None:
    clock, captured = Clock(), Captured()
    reports = OncePerInterval(clock, 60, captured.log)
    for n in range(5):
        reports.event("a", "first {n}", "{count} more in {interval:.0f} s", n=n)
    reports.event("b", "other", "{count} more b")
    assert captured.texts() == ["first 0", "other"]
    assert captured.events[0]["log_level"] == LogLevel.warn
    clock.advance(60)
    assert captured.texts()[2:] == ["4 more in 60 s"]
    reports.event("a", "first again", "{count} more")  # still summarising
    clock.advance(60)
    assert captured.texts()[3:] == ["1 more in 60 s"]
    clock.advance(60)
    assert not clock.getDelayedCalls()
    reports.event("a", "new episode", "{count} more")
    assert captured.texts()[-1] == "new episode"


def test_refusals_log_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(limits_reports, "log", captured.log)
    clock = Clock()
    counts = ConnectionLimits(clock, 3, max_per_ip=1)
    factory = LimitedFactory(RecordingFactory(), counts)
    for _ in range(50):
        Client(factory, v4("192.0.2.1"))
    Client(factory, v4("192.0.2.2"))
    Client(factory, v4("192.0.2.3"))
    for _ in range(20):
        Client(factory, v4("192.0.2.4"))
    assert captured.texts() == ["too many connections from 192.0.2.1 (1): refusing",
                                "connection limit reached (3): refusing clients"]
    clock.advance(60)
    assert captured.texts()[2:] == [
        "too many connections from 192.0.2.1: refused 48 more in 60 s",
        "connection limit (3): refused 19 more clients in 60 s"]
    Client(factory, v4("192.0.2.5"))  # one more in the next interval
    clock.advance(60)
    assert captured.texts()[-1] == "connection limit (3): refused 1 more client in 60 s"


def test_per_address_reports_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(limits_reports, "log", captured.log)
    clock = Clock()
    factory = LimitedFactory(RecordingFactory(), ConnectionLimits(clock, 10**6, max_per_ip=1))
    for n in range(300):
        for _ in range(3):
            Client(factory, v6(f"2001:db8:{n:x}::1"))
    assert len(captured.texts()) == limits_counts._ADDRESSES_REPORTED + 1
    assert captured.texts()[-1] == "too many connections from many addresses (1 each): refusing"
    timers = [c for c in clock.getDelayedCalls() if c.func.__name__ == "_end"]
    assert len(timers) == limits_counts._ADDRESSES_REPORTED + 1


# -- accept errors

class FakePort:
    """The parts of tcp.Port the watch uses."""

    _logger = Logger(namespace="twisted.internet.tcp.Port")

    def __init__(self, downstream: list[Any]) -> None:
        self._logger = Logger(namespace="twisted.internet.tcp.Port", observer=downstream.append)
        self.reading = True

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 110)

    def accept_storm(self) -> None:
        # What tcp.Port logs through self._logger in its EMFILE recovery.
        log = self._logger
        log.info("EMFILE encountered; releasing reserved file descriptor.")
        for n in range(30):
            log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", n))
        log.info("Re-reserving EMFILE recovery file descriptor.")


def test_accept_errors_log_once_and_pause_only_a_spinning_port() -> None:
    captured = Captured()
    clock = Clock()
    downstream: list[Any] = []
    port = FakePort(downstream)
    watch = AcceptErrorWatch(clock, OncePerInterval(clock, 60, captured.log), pause=1.0)
    watch.watch(port)
    port._logger.info("POP3ServerFactory starting on {port}", port=110)
    assert len(downstream) == 1  # anything else passes through
    port.accept_storm()
    assert captured.texts() == [("cannot accept connections on 127.0.0.1:110 (EMFILE: out of "
                                "file descriptors); new clients are turned away until it passes")]
    assert port.reading  # Twisted's recovery drained the backlog: no need to pause
    # No recovery possible: the listener would be retried in a busy loop.
    port._logger.info("Could not accept new connection ({acceptError})", acceptError="ENFILE")
    assert not port.reading
    port._logger.info("Could not accept new connection ({acceptError})", acceptError="ENFILE")
    clock.advance(1)
    assert port.reading
    port._logger.info("Could not accept new connection ({acceptError})",
                      acceptError="ECONNABORTED")
    assert port.reading and len(downstream) == 2  # ECONNABORTED is no shortage
    clock.advance(59)
    assert captured.texts()[1:] == [("accept() still failing: 32 more failures or clients "
                                    "turned away in 60 s")]
    assert len(downstream) == 2


def test_the_watch_ignores_ports_without_a_logger() -> None:
    watch = AcceptErrorWatch(Clock(), OncePerInterval(Clock()))
    port = object()
    watch.watch(port)  # a UNIX port of another kind: nothing to do, no error


class EMFILESocket:
    """A listening socket whose accept() fails as when descriptors run out;
    with C{recovers}, the next accept() (Twisted's spare descriptor
    released) gets the waiting client."""

    def __init__(self, recovers: bool) -> None:
        self.recovers = recovers
        self.accepts = 0
        self.closed: list[Any] = []

    def accept(self) -> Any:
        import errno

        self.accepts += 1
        if self.recovers and self.accepts % 3 == 2:
            client = socket.socket()
            self.closed.append(client)
            return client, ("127.0.0.1", 40000 + self.accepts)
        if self.recovers and self.accepts % 3 == 0:
            raise BlockingIOError(errno.EAGAIN, "no more")
        raise OSError(errno.EMFILE, "Too many open files")

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 110)


@pytest.mark.parametrize("recovers", [True, False])
def test_the_real_tcp_port_accept_loop_goes_through_the_watch(recovers: bool) -> None:
    """tcp.Port's own accept loop with accept() failing: Twisted's recovery
    closes the waiting client (no pause), or it cannot (pause).  If Twisted
    renames what the watch relies on, this fails."""
    from twisted.internet import tcp

    captured = Captured()
    clock = Clock()
    port = tcp.Port(0, Factory(), reactor=clock)
    listener = EMFILESocket(recovers)
    port.socket = listener
    port.numberAccepts = 5
    paused: list[bool] = []
    port.pauseProducing = lambda: paused.append(True)  # type: ignore[method-assign]
    downstream: list[Any] = []
    port._logger = Logger(namespace="twisted.internet.tcp.Port", observer=downstream.append)
    watch = AcceptErrorWatch(clock, OncePerInterval(clock, 60, captured.log))
    watch.watch(port)
    tcp._reservedFD.reserve()  # as startListening does
    assert tcp._reservedFD.available()
    port.doRead()
    port.doRead()
    assert tcp._reservedFD.available()
    assert downstream == []
    assert paused == ([] if recovers else [True])
    assert len(listener.closed) == (2 if recovers else 0)
    assert all(c.fileno() == -1 for c in listener.closed)  # closed unanswered
    assert len(captured.texts()) == 1 and "(EMFILE: out of file descriptors)" in captured.texts()[0]


# -- options and building

def base_args(tmp_path: Path) -> list[str]:
    return ["--auth", "memory:alice:pw", "--store", f"maildir:{tmp_path}/%u"]


def parse(args: list[str]) -> tap.Options:
    options = tap.Options()
    options.parseOptions(args)
    return options


def test_options_and_their_toml_twins(tmp_path: Path) -> None:
    options = parse(base_args(tmp_path) + ["--max-connections", "500",
                                           "--max-connections-per-ip", "5",
                                           "--exempt-networks", "10.0.0.0/8,2001:db8::/32"])
    assert options.config.max_connections == 500 and options.config.max_connections_per_ip == 5
    assert options.config.exempt_networks == ("10.0.0.0/8", "2001:db8::/32")
    config = tmp_path / "popgate.toml"
    config.write_text('max_connections = 100\nmax_connections_per_ip = 0\n'
                      'exempt_networks = ["192.0.2.0/24"]\n')
    options = parse(base_args(tmp_path) + ["--config", str(config)])
    assert options.config.max_connections == 100 and options.config.max_connections_per_ip == 0
    assert options.config.exempt_networks == ("192.0.2.0/24",)
    options = parse(base_args(tmp_path))
    assert options.config.max_connections == 0 and options.config.exempt_networks == ()


@pytest.mark.parametrize("args, toml, message", [
    (["--exempt-networks", "10.0.0.0/8,nope"], None, "not a network: 'nope'"),
    ([], 'exempt_networks = ["10.0.0.0/33"]', "--exempt-networks: not a network"),
    ([], "max_connections = -1", "--max-connections must be at least 0"),
    ([], 'max_connections_per_ip = "20"', "max_connections_per_ip has the wrong type"),
])
def test_option_errors(tmp_path: Path, args: list[str], toml: str | None, message: str) -> None:
    extra = list(args)
    if toml is not None:
        config = tmp_path / "popgate.toml"
        config.write_text(toml + "\n")
        extra += ["--config", str(config)]
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        parse(base_args(tmp_path) + extra)


def test_build_limits_derives_clamps_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(limits_process, "log", captured.log)
    built = build_limits(Clock(), nofile=lambda: (1024, 1024))
    assert built.connections.max_connections == 277 and built.connections.max_per_ip == 20
    assert captured.texts() == [("file descriptors: 1024; connection limit 277 (3 per session, "
                                "192 kept in reserve), 20 per address")]
    built = build_limits(Clock(), 5000, 0, parse_networks(["10.0.0.0/8"]),
                         nofile=lambda: (1024, 4096))
    assert built.connections.max_connections == 4096 - 192
    assert captured.texts()[1:] == [
        "--max-connections 5000 is more than 4096 file descriptors allow: using 3904",
        ("file descriptors: 4096 (soft limit raised from 1024); connection limit 3904, "
        "no limit per address (exempt: 10.0.0.0/8)")]
    assert build_limits(Clock(), 50,
                        nofile=lambda: (1024, 1024)).connections.max_connections == 50


def test_build_server_wraps_every_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from popgate.build import build_server
    from popgate.eager_writes import EagerEndpoint

    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))
    options = parse(base_args(tmp_path) + ["--pop3", "tcp:0:interface=127.0.0.1",
                                           "--pop3", "haproxy:tcp:0:interface=127.0.0.1",
                                           "--lmtp", "tcp:0:interface=127.0.0.1:backlog=7"])
    top = build_server(options.config, MemoryReactorClock())
    listeners = {s.name: s for s in top if s.name.startswith(("pop3 ", "lmtp "))}
    plain = listeners["pop3 tcp:0:interface=127.0.0.1"]
    assert isinstance(plain.factory, LimitedFactory)
    assert plain.factory.limits.max_connections == 277  # from the 1024 descriptors given
    # (the accept-error watch, then the eager writes, then Twisted's)
    assert isinstance(plain.endpoint.endpoint, EagerEndpoint)
    assert plain.endpoint.endpoint.endpoint._backlog == listen_backlog()
    proxied = listeners["pop3 haproxy:tcp:0:interface=127.0.0.1"]
    assert isinstance(proxied.factory, ProxyHeaderFactory)
    assert proxied.factory.wrappedFactory is plain.factory  # one count for both
    lmtp = listeners["lmtp tcp:0:interface=127.0.0.1:backlog=7"]
    assert lmtp.endpoint.endpoint.endpoint._backlog == 7
    assert lmtp.factory.per_ip is False and lmtp.factory.limits is plain.factory.limits
    assert not isinstance(lmtp.factory, TLSMemoryBIOFactory)


# -- PROXY protocol listeners

def test_proxy_header_first_the_session_sees_the_real_client() -> None:
    clock = Clock()
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(inner, clock)
    transport = StringTransport(peerAddress=v4("127.0.0.1"))
    proto = factory.buildProtocol(v4("127.0.0.1"))
    proto.makeConnection(transport)
    assert inner.addresses == [] and transport.value() == b""  # no greeting before the header
    proto.dataReceived(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r")
    assert inner.addresses == []
    proto.dataReceived(b"\nCAPA\r\n")
    assert [a.host for a in inner.addresses] == ["192.0.2.7"]
    assert transport.value() == GREETING
    assert inner.built[0].received == b"CAPA\r\n"
    proto.dataReceived(b"QUIT\r\n")
    assert inner.built[0].received == b"CAPA\r\nQUIT\r\n"
    assert not clock.getDelayedCalls()
    proto.connectionLost(None)
    assert inner.built[0].lost


def test_proxy_header_timeout_and_garbage() -> None:
    clock = Clock()
    factory = ProxyHeaderFactory(RecordingFactory(), clock, header_timeout=10)
    silent = Client(factory, v4("127.0.0.1"))
    clock.advance(10)
    assert silent.transport.disconnecting
    silent.close()
    garbage = Client(factory, v4("127.0.0.1"))
    garbage.protocol.dataReceived(b"USER alice\r\n")
    assert garbage.transport.disconnecting and garbage.written() == b""
    garbage.close()
    assert not clock.getDelayedCalls()


def test_proxied_clients_are_limited_by_their_own_address() -> None:
    clock = Clock()
    counts = ConnectionLimits(clock, 100, max_per_ip=2)
    factory = ProxyHeaderFactory(LimitedFactory(RecordingFactory(), counts), clock)

    def via_proxy(client: str) -> bytes:
        c = Client(factory, v4("127.0.0.1"))
        c.protocol.dataReceived(b"PROXY TCP4 %s 127.0.0.1 40000 110\r\n" % client.encode())
        return c.written()

    assert via_proxy("192.0.2.1") == via_proxy("192.0.2.1") == GREETING
    assert via_proxy("192.0.2.1") == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
    assert via_proxy("192.0.2.2") == GREETING  # the proxy's own address is not what counts
    assert counts.count_for("127.0.0.1") == 0
