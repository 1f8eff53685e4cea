"""
Unit tests for haproxy: listeners: the PROXY header parser
(popgate.proxy_header), the trusted proxies and health checks
(popgate.proxy_protocol), and that the real client's address is what the
session log, the connection limits, the login penalty and the plaintext
policy see, with v1 and v2 headers.  StringTransport and a fake clock;
the real processes are in test_proxy_workers.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python import usage

from popgate import events, proxy_header
from popgate.addresses import parse_networks
from popgate.build import build_server
from popgate.cred.penalty import LoginPenalty
from popgate.limits import process as limits_process
from popgate.limits.counts import ConnectionLimits
from popgate.limits.refusal import LimitedFactory
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.proxy_protocol import HEALTH_REPLY, ProxyHeaderFactory, trusted_peer
from popgate.settings import Config
from popgate.workers.reuseport import ReusePortListener, check_shareable
from tests.helpers import make_portal
from tests.test_limits import GREETING, RecordingFactory, base_args, parse

PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
LISTENER = IPv4Address("TCP", "127.0.0.1", 110)


def v1(client: str, port: int = 40000, server: str | None = None) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = server or ("::1" if ":" in client else "127.0.0.1")
    return f"PROXY {family} {client} {server} {port} 110\r\n".encode()


def v2(client: str | None, port: int = 40000, server: str = "127.0.0.1",
       tlv: bytes = b"", command: int = 1, family: int | None = None) -> bytes:
    """A v2 header: PROXY (or LOCAL, command 0) for C{client}; a TLV block
    after the addresses as HAProxy adds (unique id, ALPN)."""
    if client is None:
        body, fam = b"", 0x00 if family is None else family
    elif ":" in client:
        body = (socket.inet_pton(socket.AF_INET6, client)
                + socket.inet_pton(socket.AF_INET6, server if ":" in server else "::1")
                + struct.pack("!HH", port, 110))
        fam = 0x21
    else:
        body = socket.inet_aton(client) + socket.inet_aton(server) + struct.pack("!HH", port, 110)
        fam = 0x11
    if family is not None:
        fam = family
    body += tlv
    return PROXY_V2 + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


HEADERS: dict[str, Callable[[str], bytes]] = {"v1": v1, "v2": v2}


@pytest.fixture
def captured() -> Iterator[list[LogEvent]]:
    """Every event logged during the test (catalogue events and others)."""
    seen: list[LogEvent] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def named(seen: list[LogEvent], name: str) -> list[LogEvent]:
    return [e for e in seen if e.get("event") == name]


class Connection:
    """One connection to a ProxyHeaderFactory, on a StringTransport."""

    def __init__(self, factory: ProxyHeaderFactory, peer: Any = LOOPBACK) -> None:
        self.greeting = b""
        self.transport = StringTransport(hostAddress=LISTENER, peerAddress=peer)
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.protocol.dataReceived(data)
        out: bytes = self.transport.value()
        self.transport.clear()
        return out

    def close(self) -> None:
        self.protocol.connectionLost(None)


# -- the parser


@pytest.mark.parametrize("header, command, source, length", [
    (v1("192.0.2.7"), "proxy", ("192.0.2.7", 40000), None),
    (v1("2001:db8::7"), "proxy", ("2001:db8::7", 40000), None),
    (b"PROXY UNKNOWN\r\n", "unknown", None, 15),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "unknown", None, None),
    (v2("192.0.2.7"), "proxy", ("192.0.2.7", 40000), None),
    # Short form, as every other part of popgate writes IPv6.
    (v2("2001:db8:0:0:0:0:0:7", server="::1"), "proxy", ("2001:db8::7", 40000), None),
    (v2("192.0.2.7", tlv=b"\x05\x00\x03abc"), "proxy", ("192.0.2.7", 40000), None),
    (v2(None, command=0), "local", None, None),
    (v2("192.0.2.7", command=0), "local", None, None),  # LOCAL: the addresses are ignored
    (v2(None, family=0x31) + b"/x" * 108, "unknown", None, None),  # UNIX: 216 bytes of paths
    (v2(None, family=0x00), "unknown", None, None),
])
def test_the_headers_haproxy_sends(header: bytes, command: str, source: Any,
                                   length: int | None) -> None:
    if command == "unknown" and header.startswith(PROXY_V2) and header[13] == 0x31:
        # Fix the UNIX header's length to cover its two paths.
        header = header[:14] + struct.pack("!H", 216) + header[16:16 + 216]
    parsed = proxy_header.parse(header + b"CAPA\r\n")
    assert parsed is not None and parsed.command == command
    assert parsed.length == (len(header) if length is None else length)
    if source is None:
        assert parsed.source is None
    else:
        assert parsed.source is not None
        assert (parsed.source.host, parsed.source.port) == source
        assert parsed.source.type == "TCP"


@pytest.mark.parametrize("header", [v1("192.0.2.7"), v2("2001:db8::7")])
def test_a_header_in_pieces_waits_for_its_end(header: bytes) -> None:
    for cut in range(len(header)):
        assert proxy_header.parse(header[:cut]) is None, cut
    assert proxy_header.parse(header) is not None


@pytest.mark.parametrize("data", [
    b"USER alice\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 forty 110\r\n",       # Twisted: ValueError
    b"PROXY TCP4 192.0.2.7 127.0.0.1 70000 110\r\n",
    b"PROXY TCP4 not-an-address 127.0.0.1 40000 110\r\n",  # Twisted: kept as the host
    b"PROXY TCP4 2001:db8::7 127.0.0.1 40000 110\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n",
    b"PROXY UDP4 192.0.2.7 127.0.0.1 40000 110\r\n",
    b"PROXY " + b"1" * 120,                                # no CRLF within 107 bytes
    PROXY_V2 + b"\x10\x11\x00\x00",                        # version 1 in a v2 signature
    PROXY_V2 + b"\x22\x11\x00\x00",                        # command 2
    PROXY_V2 + b"\x21\x11\x00\x04\x01\x02\x03\x04",        # too short for two addresses
])
def test_what_is_not_a_valid_header(data: bytes) -> None:
    with pytest.raises(proxy_header.BadHeader):
        proxy_header.parse(data)


# -- trusted proxies


def test_trusted_peers() -> None:
    loopback = parse_networks(["127.0.0.0/8", "::1/128"])
    assert trusted_peer(IPv4Address("TCP", "127.0.0.2", 1), loopback)
    assert trusted_peer(IPv6Address("TCP", "::1", 1), loopback)
    assert trusted_peer(IPv6Address("TCP", "::ffff:127.0.0.1", 1), loopback)  # tcp6 on ::
    assert trusted_peer(UNIXAddress(b"/run/haproxy.sock"), ())
    assert not trusted_peer(IPv4Address("TCP", "192.0.2.7", 1), loopback)
    assert not trusted_peer(IPv6Address("TCP", "2001:db8::1", 1), loopback)
    assert not trusted_peer(None, loopback)
    lan = parse_networks(["10.1.0.5", "2001:db8:1::/48"])
    assert trusted_peer(IPv4Address("TCP", "10.1.0.5", 1), lan)
    assert not trusted_peer(IPv4Address("TCP", "10.1.0.6", 1), lan)
    assert trusted_peer(IPv6Address("TCP", "2001:db8:1:2::9", 1), lan)


def test_an_untrusted_peer_is_closed_before_anything_is_read(
        captured: list[LogEvent]) -> None:
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(inner, Clock())
    c = Connection(factory, IPv4Address("TCP", "192.0.2.66", 5555))
    assert c.transport.disconnecting and c.transport.disconnected  # aborted
    assert c.transport.value() == b""
    # Whatever it sends then (a header claiming loopback) is never parsed.
    assert c.send(v1("127.0.0.1")) == b""
    assert inner.addresses == []
    (refused,) = named(captured, "proxy.refused")
    assert (refused["reason"], refused["rip"], refused["lip"]) == (
        "untrusted", "192.0.2.66", "127.0.0.1")
    assert refused["log_level"] == LogLevel.warn
    assert events.CATALOGUE["proxy.refused"].format_for(refused).format(**refused) == (
        "proxy: Refused: reason=untrusted, rip=192.0.2.66, lip=127.0.0.1")
    c.close()


def test_the_trusted_networks_are_the_factorys() -> None:
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(inner, Clock(), trusted=parse_networks(["10.1.0.5"]))
    assert Connection(factory, LOOPBACK).transport.disconnecting  # loopback is not, now
    proxy = Connection(factory, IPv4Address("TCP", "10.1.0.5", 1))
    assert proxy.send(v1("192.0.2.7")) == GREETING
    assert [a.host for a in inner.addresses] == ["192.0.2.7"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_trusted_proxys_client_gets_its_session_with_its_address(version: str) -> None:
    inner = RecordingFactory()
    clock = Clock()
    c = Connection(ProxyHeaderFactory(inner, clock))
    header = HEADERS[version]("192.0.2.7")
    # One byte at a time: a header split over reads is still a header.
    for byte in header[:-1]:
        assert c.send(bytes([byte])) == b""
    assert c.send(header[-1:] + b"CAPA\r\n") == GREETING
    assert [(a.host, a.port) for a in inner.addresses] == [("192.0.2.7", 40000)]
    assert inner.built[0].received == b"CAPA\r\n"
    assert c.protocol.getHost() == IPv4Address("TCP", "127.0.0.1", 110)
    assert not clock.getDelayedCalls()


def test_a_health_check_is_answered_and_counted_nowhere(captured: list[LogEvent]) -> None:
    """v2 LOCAL, what HAProxy's check-send-proxy sends with send-proxy-v2:
    no session, no connection counted, no line above debug."""
    clock = Clock()
    counts = ConnectionLimits(clock, 100, max_per_ip=1)
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(LimitedFactory(inner, counts), clock)
    for _ in range(3):  # more than the per-address limit: none counts
        check = Connection(factory)
        assert check.send(v2(None, command=0)) == HEALTH_REPLY
        assert check.transport.disconnecting and not check.transport.disconnected
        check.send(b"QUIT\r\n")  # ignored
        assert counts.total == 0
        check.close()
    assert inner.addresses == [] and not clock.getDelayedCalls()
    assert not [e for e in captured if e["log_level"] > LogLevel.debug]
    assert not named(captured, "pop3.connect")


def test_a_header_without_an_address_stands_for_the_proxy() -> None:
    """v1 UNKNOWN (a client of a frontend on a UNIX socket)
    and v2 UNIX: the session is the proxy's own, never a UNIX peer."""
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(inner, Clock())
    unix = v2(None, family=0x31)
    unix = unix[:14] + struct.pack("!H", 216) + b"\0" * 216
    for header in (b"PROXY UNKNOWN\r\n", unix):
        c = Connection(factory, IPv4Address("TCP", "127.0.0.9", 4444))
        assert c.send(header) == GREETING
        assert isinstance(c.protocol.getPeer(), IPv4Address)
    assert [(a.host, a.port) for a in inner.addresses] == [("127.0.0.9", 4444)] * 2


def test_no_header_in_time_and_a_bad_header_are_logged(captured: list[LogEvent]) -> None:
    clock = Clock()
    inner = RecordingFactory()
    factory = ProxyHeaderFactory(inner, clock, header_timeout=10)
    silent = Connection(factory)
    assert silent.send(b"PROXY TCP4 192.0.2") == b""  # a header begun, never ended
    clock.advance(10)
    assert silent.transport.disconnected
    silent.close()
    garbage = Connection(factory)
    assert garbage.send(b"USER alice\r\n") == b""
    assert garbage.transport.disconnecting
    garbage.close()
    assert inner.addresses == [] and not clock.getDelayedCalls()
    assert [(e["reason"], e["rip"]) for e in named(captured, "proxy.refused")] == [
        ("timeout", "127.0.0.1"), ("bad-header", "127.0.0.1")]


# -- the real client is what the session sees


class Stack:
    """popgate's stack for one haproxy: listener, as build_server makes it:
    PROXY header, connection limits, the POP3 factory with a login
    penalty."""

    def __init__(self, max_per_ip: int = 20, plaintext: bool = False) -> None:
        self.clock = Clock()
        portal, _ = make_portal()
        self.penalty = LoginPenalty(self.clock, base_delay=2.0, max_delay=15.0)
        settings = SessionSettings(auth_failure_delay=0, allow_plaintext_auth=plaintext)
        pop3 = POP3ServerFactory(portal, settings, self.clock, penalty=self.penalty)
        self.counts = ConnectionLimits(self.clock, 100, max_per_ip=max_per_ip)
        self.factory = ProxyHeaderFactory(LimitedFactory(pop3, self.counts), self.clock)

    def connect(self, header: bytes) -> Connection:
        c = Connection(self.factory)
        c.greeting = c.send(header)
        return c


CLIENTS = ["192.0.2.7", "2001:db8:1:2::7"]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("client", CLIENTS)
def test_the_session_log_gives_the_real_client(version: str, client: str,
                                               captured: list[LogEvent]) -> None:
    stack = Stack()
    c = stack.connect(HEADERS[version](client))
    assert c.greeting.startswith(b"+OK")
    c.send(b"QUIT\r\n")
    c.close()
    expected = str(ipaddress.ip_address(client))
    (connect,) = named(captured, "pop3.connect")
    (disconnect,) = named(captured, "pop3.disconnect")
    assert connect["rip"] == disconnect["rip"] == expected
    assert connect["lip"] in ("127.0.0.1", "::1")  # the header's destination


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("client", CLIENTS)
def test_the_per_address_limit_counts_the_real_client(version: str, client: str) -> None:
    stack = Stack(max_per_ip=2)
    header = HEADERS[version]
    held = [stack.connect(header(client)) for _ in range(2)]
    assert all(c.greeting.startswith(b"+OK") for c in held)
    over = stack.connect(header(client))
    assert over.greeting == (
        b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
    # Another client behind the same proxy is not held back by this one.
    other = "192.0.2.8" if "." in client else "2001:db8:9::7"
    assert stack.connect(header(other)).greeting.startswith(b"+OK")
    assert stack.counts.count_for("127.0.0.1") == 0
    assert stack.counts.count_for(client) == 2


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_login_penalty_is_the_real_clients(version: str, captured: list[LogEvent]) -> None:
    stack = Stack(plaintext=True)
    c = stack.connect(HEADERS[version]("2001:db8:1:2::7"))
    c.send(b"USER alice\r\nPASS wrong\r\n")
    stack.clock.advance(0)
    assert stack.penalty.penalty("2001:db8:1:2::7") == 2.0
    assert stack.penalty.penalty("2001:db8:1:2::99") == 2.0  # its /64
    assert stack.penalty.penalty("127.0.0.1") == 0.0  # not the proxy's address
    (penalty,) = named(captured, "auth.penalty")
    assert penalty["rip"] == "2001:db8:1:2::/64"
    (failed,) = [e for e in named(captured, "pop3.login") if e["result"] == "failed"]
    assert failed["rip"] == "2001:db8:1:2::7"
    # Another client of the same proxy logs in at once.
    other = stack.connect(HEADERS[version]("192.0.2.8"))
    assert other.send(b"USER alice\r\nPASS secret\r\n").endswith(b"+OK Logged in.\r\n")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_remote_client_behind_a_loopback_proxy_may_not_send_plaintext(
        version: str, captured: list[LogEvent]) -> None:
    """The proxy is on loopback, where passwords in clear are allowed; its
    client is not, and is treated as the remote client it is."""
    stack = Stack()
    remote = stack.connect(HEADERS[version]("192.0.2.7"))
    capa = remote.send(b"CAPA\r\n")
    assert b"\r\nUSER\r\n" not in capa and b"PLAIN" not in capa and b"STLS" not in capa
    refusal = b"-ERR [AUTH] Plaintext authentication disallowed"
    assert remote.send(b"USER alice\r\n").startswith(refusal)
    assert remote.send(b"PASS secret\r\n").startswith(refusal)
    (refused,) = named(captured, "pop3.login")
    assert (refused["reason"], refused["rip"]) == ("plaintext-disallowed", "192.0.2.7")
    # A loopback client behind the same proxy may, as without the proxy.
    local = stack.connect(HEADERS[version]("127.0.0.5"))
    assert b"\r\nUSER\r\n" in local.send(b"CAPA\r\n")
    assert local.send(b"USER alice\r\nPASS secret\r\n").endswith(b"+OK Logged in.\r\n")


# -- the settings, and --workers with haproxy: listeners


def test_workers_share_haproxy_tcp_listeners_and_refuse_the_others() -> None:
    check_shareable("haproxy:tcp:110:interface=127.0.0.1")
    check_shareable("haproxy:tcp6:995:interface=\\:\\:1")
    check_shareable("tcp:110")
    for description in ("haproxy:unix:/run/popgate.sock", "unix:/run/popgate.sock",
                        "haproxy:systemd:domain=INET:name=pop3", "haproxy:tcp:interface=::1"):
        with pytest.raises(usage.UsageError):
            check_shareable(description)


def test_proxy_trusted_on_the_command_line_and_in_toml(tmp_path: Path) -> None:
    assert Config().proxy_trusted == ("127.0.0.0/8", "::1/128")
    options = parse(base_args(tmp_path) + ["--proxy-trusted", "10.1.0.5, 2001:db8::/32"])
    assert options.config.proxy_trusted == ("10.1.0.5/32", "2001:db8::/32")
    toml = tmp_path / "popgate.toml"
    toml.write_text('[popgate]\nproxy_trusted = ["10.1.0.0/24"]\n')
    assert parse(base_args(tmp_path) + ["--config", str(toml)]).config.proxy_trusted == (
        "10.1.0.0/24",)
    with pytest.raises(usage.UsageError, match="proxy-trusted.*not a network: 'haproxy'"):
        parse(base_args(tmp_path) + ["--proxy-trusted", "haproxy"])


def test_build_server_gives_each_workers_proxy_listener_the_trusted_proxies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers, a haproxy: listener is a SO_REUSEPORT socket of its
    own in each process, with the PROXY wrapper and --proxy-trusted."""
    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))
    options = parse(base_args(tmp_path) + ["--workers", "2", "--proxy-trusted", "10.1.0.5",
                                           "--pop3", "haproxy:tcp:0:interface=127.0.0.1"])
    top = build_server(options.config, MemoryReactorClock())
    (listener,) = [s for s in top if s.name == "pop3 haproxy:tcp:0:interface=127.0.0.1"]
    assert isinstance(listener, ReusePortListener)
    assert listener.description.startswith("tcp:0:interface=127.0.0.1:backlog=")
    assert isinstance(listener.factory, ProxyHeaderFactory)
    assert listener.factory.trusted == parse_networks(["10.1.0.5"])
