"""
The server side of the admin socket (C{--admin-socket PATH}): an AMP
listener on a UNIX socket, answering L{Who} and L{Kick} from the POP3
factory's L{popgate.pop3.sessions.SessionRegistry}.

The socket is made with mode 0600 while twistd still runs as root (the
listener binds in C{privilegedStartService}), so once twistd has switched
to C{--uid} only root can connect.  It is made with a lock file
(C{PATH.lock}), so a socket left by a process that died is replaced at
the next start instead of failing it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from popgate.admin.commands import MAX_LISTED, MAX_TEXT, Kick, Who
from popgate.plural import plural
from popgate.pop3.sessions import SessionRegistry

__all__ = ["AdminFactory", "AdminProtocol", "admin_listener"]


class AdminProtocol(amp.AMP):
    """One admin connection (C{popgate who}, C{popgate kick})."""

    log = Logger()

    def __init__(self, sessions: SessionRegistry) -> None:
        super().__init__()
        self.sessions = sessions

    # AMP logs every connection and its end at info: two lines a `who`.
    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    @Who.responder
    def who(self, match: str) -> dict[str, Any]:
        found = self.sessions.find(match)
        listed = [{"user": s.user[:MAX_TEXT], "tried": s.tried[:MAX_TEXT], "ip": s.ip,
                   "since": s.since, "state": s.state, "retrieved": s.retrieved,
                   "session": s.session} for s in found[:MAX_LISTED]]
        return {"sessions": listed, "total": len(found), "pid": os.getpid()}

    @Kick.responder
    def kick(self, match: str) -> dict[str, Any]:
        kicked = self.sessions.kick(match)
        self.log.info("admin: kick {match!r}: {closed} closed", closed=plural(kicked, "session"),
                      match=match)
        return {"kicked": kicked, "pid": os.getpid()}


class AdminFactory(ServerFactory):
    noisy = False

    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        protocol = AdminProtocol(self.sessions)
        protocol.factory = self
        return protocol


def admin_listener(reactor: Any, path: str, sessions: SessionRegistry) -> Any:
    """The listening service of C{--admin-socket PATH}: like the POP3
    listeners, start-up fails if it cannot listen."""
    endpoint = UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True)
    listener = StreamServerEndpointService(endpoint, AdminFactory(sessions))
    listener._raiseSynchronously = True
    return listener
