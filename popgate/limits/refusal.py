"""
The listening-factory wrapper that admits each connection through the
L{popgate.limits.counts.ConnectionLimits} or refuses it with one line
(POP3: C{-ERR [SYS/TEMP]}, LMTP: C{421}) and closes.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

from popgate.events import emit
from popgate.limits.counts import ConnectionLimits, Ticket

POP3_REFUSALS = {
    "total": b"-ERR [SYS/TEMP] Too many connections\r\n",
    "address": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
}
LMTP_REFUSALS = {
    "total": b"421 4.3.2 Too many connections, try again later\r\n",
    "address": b"421 4.3.2 Too many connections from your address, try again later\r\n",
}


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

    def __init__(self, factory: LimitedFactory, wrapped: Any, ticket: Ticket) -> None:
        super().__init__(factory, wrapped)
        self.ticket = ticket

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper's, but a half-closeable protocol stays one:
        # the wrapper would otherwise provide only its transport's
        # interfaces, and a client's shutdown(SHUT_WR) would close.
        # One directlyProvides call: zope caches the declaration made of
        # the same interfaces (alsoProvides would build a new one, and its
        # resolution order, per connection).
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            directlyProvides(self, providedBy(transport), IHalfCloseableProtocol)
        else:
            directlyProvides(self, providedBy(transport))
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
