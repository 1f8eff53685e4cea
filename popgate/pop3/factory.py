"""
The factory for POP3 listeners: it hands every protocol its portal,
settings, clock, login penalty and TLS configuration.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.protocol import ServerFactory

from popgate.pop3.output import PoolReader, Reader, read_inline
from popgate.pop3.protocol import POP3ServerProtocol
from popgate.pop3.sessions import SessionRegistry
from popgate.pop3.settings import SessionSettings


class POP3ServerFactory(ServerFactory):
    """
    Builds one L{POP3ServerProtocol} per connection.

    @param settings: C{None} for the defaults of L{SessionSettings}.
    @param clock: the C{IReactorTime} of every session's timers (a
        L{twisted.internet.task.Clock} in tests); required, so no session
        falls back to the global reactor.

    @param tls: a L{popgate.tls.ServerTLS} (or any
        C{IOpenSSLServerConnectionCreator}) when a certificate is
        configured: sessions then offer STLS.  For POP3S the same factory is
        wrapped in a C{TLSMemoryBIOFactory}; its sessions know they are
        secure from their transport.
    @param reader: how RETR and TOP read a message (see
        L{popgate.pop3.output.PoolReader}); by default a L{PoolReader} on
        C{clock} when it has a thread pool (a reactor), so no disk read
        runs on the reactor thread, else inline (a fake clock in tests).
    """

    protocol = POP3ServerProtocol

    def __init__(self, portal: Any, settings: SessionSettings | None, clock: Any,
                 penalty: Any = None, tls: Any = None, reader: Reader | None = None) -> None:
        self.portal = portal
        self.settings = settings or SessionSettings()
        self.clock = clock
        self.penalty = penalty
        self.tls = tls
        if reader is None:
            reader = PoolReader(clock) if IReactorThreads.providedBy(clock) else read_inline
        self.reader = reader
        #: The open sessions, for popgate who and kick.
        self.sessions = SessionRegistry()

    def buildProtocol(self, addr: Any) -> POP3ServerProtocol:
        proto = self.protocol(self.portal, self.settings, self.clock)
        proto.factory = self
        proto.penalty = self.penalty
        proto.tls = self.tls
        proto.reader = self.reader
        self.sessions.add(proto)
        return proto
