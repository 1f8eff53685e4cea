"""
C{haproxy:} listeners: connections only from trusted proxies, whose
sessions start once the PROXY header is read.

Twisted's PROXY wrapper connects the wrapped protocol at once, while the
peer is still the proxy: a POP3 server greets before the header arrives,
and anything that decides at connect time (the per-address connection
limit) would count every client behind HAProxy as one.  Here the wrapped
factory's C{buildProtocol} is called with the real client's address when
the header has been parsed (L{popgate.proxy_header}), and the session
greets then.

Closed before any session, with one C{proxy.refused} line each:

- a peer not in the trusted networks (C{--proxy-trusted}; a UNIX socket
  always is), at once, before a byte is read: anyone else could claim
  any address, skip the per-address limits and the login penalty, and
  pass for a loopback client that may send a password in clear;
- a connection whose first bytes are not a valid header, and one that
  sends no complete header within C{header_timeout} seconds.

A v2 C{LOCAL} header is the proxy's own health check: it gets one
C{+OK} line and is closed, counted nowhere (no session, no connection
limit, no line above debug).  A header with no client address (v1
C{UNKNOWN}, v2 UNIX or unspecified family) makes a session from the
proxy's own address.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from zope.interface import directlyProvides, providedBy

from popgate import proxy_header
from popgate.addresses import Network, client_address, parse_networks
from popgate.events import emit

#: Loopback: HAProxy on the same host.
DEFAULT_TRUSTED = parse_networks(["127.0.0.0/8", "::1/128"])
#: What a health check (v2 LOCAL) is answered before it is closed, so a
#: C{tcp-check expect string +OK} passes as a plain connect check does.
HEALTH_REPLY = b"+OK health check\r\n"


def trusted_peer(peer: Any, networks: Sequence[Network]) -> bool:
    """Whether C{peer} (a connection's TCP peer) may send a PROXY header:
    a UNIX socket, or an address in C{networks} (IPv4-mapped IPv6 as
    IPv4)."""
    if isinstance(peer, UNIXAddress):
        return True
    if not isinstance(peer, IPv4Address | IPv6Address):
        return False
    address = client_address(peer.host)
    return address is not None and any(address in network for network in networks)


class _BeforeHeader(Protocol):
    """Stands in for the session until the header is read (and for a
    health check's whole connection): whatever it is given is dropped."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        pass


class _HeaderFirst(HAProxyProtocolWrapper):
    factory: ProxyHeaderFactory
    log = Logger()

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper's, without connecting the session yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._buffer = b""
        self._deadline: Any = None
        if not trusted_peer(transport.getPeer(), self.factory.trusted):
            self._refuse("untrusted", abort=True)
            return
        self._deadline = self.factory.clock.callLater(self.factory.header_timeout,
                                                      self._refuse, "timeout", True)

    def _refuse(self, reason: str, abort: bool = False) -> None:
        transport: Any = self.transport  # a TCP (or UNIX) transport: it can abort
        emit(self.log, "proxy.refused", reason=reason, rip=transport.getPeer(),
             lip=transport.getHost())
        self._cancel_deadline()
        if abort:
            self.disconnecting = True
            transport.abortConnection()
        else:
            self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.disconnecting:
            return
        self._buffer += data
        try:
            header = proxy_header.parse(self._buffer)
        except proxy_header.BadHeader:
            self._refuse("bad-header")
            return
        if header is None:
            return
        self._cancel_deadline()
        assert self.transport is not None
        raw, rest = self._buffer[:header.length], self._buffer[header.length:]
        self._buffer = b""
        if header.command == proxy_header.LOCAL:
            self._proxyInfo = ProxyInfo(raw, None, None)
            self.log.debug("PROXY v2 LOCAL (a health check) from {peer}",
                           peer=self.transport.getPeer())
            self.transport.write(HEALTH_REPLY)
            self.loseConnection()
            return
        # No client address in the header: the proxy's own stands for it.
        self._proxyInfo = ProxyInfo(raw, header.source or self.transport.getPeer(),
                                    header.destination or self.transport.getHost())
        session = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if session is None:
            self.loseConnection()
            return
        self.wrappedProtocol = session
        session.makeConnection(self)
        if rest:
            session.dataReceived(rest)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)


class ProxyHeaderFactory(HAProxyWrappingFactory):
    """
    Wraps a listener's factory for PROXY protocol (v1 and v2) clients.

    @param trusted: the networks proxies may connect from
        (C{--proxy-trusted}); loopback by default.
    """

    # Twisted types a wrapper's factory as WrappingFactory[Self], which is
    # invariant, and HAProxyWrappingFactory is not generic: no subclass of
    # HAProxyProtocolWrapper type-checks as its protocol, nor this factory
    # as that subclass's factory (Twisted's WrappingFactory.protocol has the
    # same ignore).
    protocol = _HeaderFirst  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrapped: Any, clock: Any, header_timeout: float = 10.0,
                 trusted: Sequence[Network] = DEFAULT_TRUSTED) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.header_timeout = header_timeout
        self.trusted = tuple(trusted)

    def buildProtocol(self, addr: Any) -> _HeaderFirst:
        return self.protocol(self, _BeforeHeader())  # type: ignore[arg-type]
