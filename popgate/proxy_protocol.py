"""
C{haproxy:} listeners whose sessions start once the PROXY header is read.

Twisted's PROXY wrapper connects the wrapped protocol at once, while the
peer is still the proxy: a POP3 server greets before the header arrives,
and anything that decides at connect time (the per-address connection
limit) would count every client behind HAProxy as one.  Here the wrapped
factory's C{buildProtocol} is called with the real client's address when
the header has been parsed (and the session greets then); a connection
that sends no header within C{header_timeout} seconds is dropped.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from zope.interface import directlyProvides, providedBy


class _BeforeHeader(Protocol):
    """Stands in for the session until the header is read; keeps the
    bytes that came with it."""

    def __init__(self) -> None:
        self.early = b""

    def dataReceived(self, data: bytes) -> None:
        self.early += data

    def connectionLost(self, reason: Any = None) -> None:
        pass


class _HeaderFirst(HAProxyProtocolWrapper):
    factory: ProxyHeaderFactory

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper's, without connecting the session yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._deadline: Any = self.factory.clock.callLater(self.factory.header_timeout,
                                                           transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        waiting = self.wrappedProtocol
        if not isinstance(waiting, _BeforeHeader):
            self.wrappedProtocol.dataReceived(data)
            return
        # The parent parses; what follows the header lands in _BeforeHeader.
        super().dataReceived(data)
        if self._proxyInfo is None or self.disconnecting:
            return
        self._cancel_deadline()
        session = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if session is None:
            self.loseConnection()
            return
        self.wrappedProtocol = session
        session.makeConnection(self)
        if waiting.early:
            session.dataReceived(waiting.early)

    def _cancel_deadline(self) -> None:
        if self._deadline.active():
            self._deadline.cancel()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)


class ProxyHeaderFactory(HAProxyWrappingFactory):
    """Wraps a listener's factory for PROXY protocol (v1 and v2) clients."""

    # Twisted types a wrapper's factory as WrappingFactory[Self], which is
    # invariant, and HAProxyWrappingFactory is not generic: no subclass of
    # HAProxyProtocolWrapper type-checks as its protocol, nor this factory
    # as that subclass's factory (Twisted's WrappingFactory.protocol has the
    # same ignore).
    protocol = _HeaderFirst  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrapped: Any, clock: Any, header_timeout: float = 10.0) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.header_timeout = header_timeout

    def buildProtocol(self, addr: Any) -> _HeaderFirst:
        return self.protocol(self, _BeforeHeader())  # type: ignore[arg-type]
