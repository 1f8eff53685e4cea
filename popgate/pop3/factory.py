"""
The factory for POP3 listeners: it hands every protocol its portal,
settings, clock, login penalty and TLS configuration.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from popgate.pop3.protocol import POP3ServerProtocol
from popgate.pop3.settings import SessionSettings


class POP3ServerFactory(ServerFactory):
    """
    Builds one L{POP3ServerProtocol} per connection.

    @param tls: a L{popgate.tls.ServerTLS} (or any
        C{IOpenSSLServerConnectionCreator}) when a certificate is
        configured: sessions then offer STLS.  For POP3S the same factory is
        wrapped in a C{TLSMemoryBIOFactory}; its sessions know they are
        secure from their transport.
    """

    protocol = POP3ServerProtocol

    def __init__(self, portal: Any, settings: SessionSettings | None = None, clock: Any = None,
                 penalty: Any = None, tls: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.portal = portal
        self.settings = settings or SessionSettings()
        self.clock = clock
        self.penalty = penalty
        self.tls = tls

    def buildProtocol(self, addr: Any) -> POP3ServerProtocol:
        proto = self.protocol(self.portal, self.settings, self.clock)
        proto.factory = self
        proto.penalty = self.penalty
        proto.tls = self.tls
        return proto
