"""
L{MemoryPOP3Server}: the test server without sockets or threads.  A client
under test that is driven by hand (a sans-I/O parser, a Twisted protocol
in a trial test) talks to popgate's real protocol through a
L{StringTransport}, and time is a L{Clock}: a reply that waits (the
failure delay, a slow or splitting server) comes at once, while the
session's idle and login timeouts come only when the test moves time on.

    server = MemoryPOP3Server(users={"alice": "pw"}, mailboxes={"alice": [b"..."]})
    session = server.connect()
    session.send(b"USER alice\\r\\nPASS pw\\r\\n")   # -> b"+OK\\r\\n+OK Logged in.\\r\\n"

With pytest it is the C{pop3_memory_server} fixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popgate.pop3.settings import SessionSettings
from popgate.testing.faults import Faults
from popgate.testing.shaping import ShapingFactory
from popgate.testing.site import TestSite

__all__ = ["MemoryPOP3Server", "MemorySession"]

# A reply that keeps scheduling itself (it should not) ends here.
_MAX_TIMERS = 1_000_000


class _RecordingTransport(StringTransport):
    """A StringTransport that also keeps every write on its own."""

    def __init__(self, peer: Any) -> None:
        super().__init__(peerAddress=peer)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        super().write(data)


class MemorySession:
    """
    One client connection to a L{MemoryPOP3Server}.

    @ivar greeting: what the server sent on connecting (the C{+OK} line).
    @ivar writes: every write the server made, each on its own: with
        C{faults.split_writes} these are the pieces.
    @ivar clock: the server's clock.
    """

    def __init__(self, server: MemoryPOP3Server, peer: Any) -> None:
        self.clock = server.clock
        self._transport = _RecordingTransport(peer)
        self._protocol = server._connections.buildProtocol(peer)
        self._lost = False
        before = set(self.clock.getDelayedCalls())
        started = self.clock.seconds()
        self._protocol.makeConnection(self._transport)
        # The session's own idle and login timers, known by when they are
        # due: L{send} never runs the clock up to them.
        settings = server.settings
        due = {started + t for t in (settings.idle_timeout, settings.login_timeout) if t > 0}
        self._timeouts = [call for call in set(self.clock.getDelayedCalls()) - before
                          if call.getTime() in due]
        self._all_timeouts = server._timeouts
        self._all_timeouts.update(self._timeouts)
        self.greeting = self.take()

    @property
    def writes(self) -> list[bytes]:
        return self._transport.writes

    @property
    def closed(self) -> bool:
        """The connection is gone (the server closed it, or L{close})."""
        return self._lost

    def send(self, data: bytes) -> bytes:
        """Feed C{data} as the client's bytes; return every byte of the
        replies (the time they need passes on the clock)."""
        if self._lost:
            raise ConnectionError("the connection is closed")
        self._protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        """Run the clock as far as the replies need; what was written since
        the last C{send} or C{take}."""
        self._settle()
        out: bytes = self._transport.value()
        self._transport.clear()
        return out

    def advance(self, seconds: float) -> bytes:
        """Move time on by C{seconds} (to an idle or login timeout, say);
        what the server wrote meanwhile."""
        self.clock.advance(seconds)
        return self.take()

    def half_close(self) -> bytes:
        """The client shuts its sending side; the replies to what it sent."""
        inner = getattr(self._protocol, "wrappedProtocol", self._protocol)
        if IHalfCloseableProtocol.providedBy(inner):
            inner.readConnectionLost()
        else:
            self._lose(ConnectionDone("the client closed"))
        return self.take()

    def close(self) -> None:
        """The client hangs up (a session without QUIT changes nothing)."""
        if not self._lost:
            self._lose(ConnectionLost("the client hung up"))
            self._settle()

    def _settle(self) -> None:
        """Run the timers of work (the failure delay, the faults' delays
        and pieces, the turns of pipelined commands) due before this
        session's next timeout; any session's timeout that time passes
        fires on the way, as it would."""
        for _ in range(_MAX_TIMERS):
            if not self._lost and self._transport.disconnecting:
                self._lose(ConnectionDone("the server closed"))
            horizon = min((call.getTime() for call in self._timeouts if call.active()),
                          default=float("inf"))
            due = [call.getTime() for call in self.clock.getDelayedCalls()
                   if call.getTime() < horizon and call not in self._all_timeouts]
            if not due:
                return
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        raise RuntimeError("the server keeps scheduling work: no end to the reply")

    def _lose(self, reason: Exception) -> None:
        self._lost = True
        self._all_timeouts.difference_update(self._timeouts)
        self._transport.disconnected = True
        self._protocol.connectionLost(Failure(reason))


class MemoryPOP3Server(TestSite):
    """
    popgate's POP3 server in memory, with the users, mailboxes, store,
    faults, settings and seed of L{POP3TestServer} (see L{TestSite}); no
    sockets, no threads, no reactor.

    @param clock: the clock of every session (default: a new L{Clock}).
    """

    def __init__(
        self,
        users: Mapping[str | bytes, str | bytes] | None = None,
        mailboxes: Mapping[str | bytes, Sequence[bytes]] | None = None,
        *,
        store: Any = None,
        faults: Faults | None = None,
        settings: SessionSettings | None = None,
        seed: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(users, mailboxes, store=store, faults=faults, settings=settings, seed=seed)
        self.clock = Clock() if clock is None else clock
        self._connections: ShapingFactory = self._serving(self.clock)
        self._sessions: list[MemorySession] = []
        self._timeouts: set[Any] = set()

    def connect(self, peer: str = "127.0.0.1", port: int = 54321) -> MemorySession:
        """A new connection from C{peer} (loopback by default, where
        plaintext passwords are allowed; any other address must use TLS
        first, which these sessions cannot)."""
        address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, port)
        session = MemorySession(self, address)
        self._sessions.append(session)
        return session

    def stop(self) -> None:
        """Drop every open session, without UPDATE."""
        for session in self._sessions:
            session.close()
        self._sessions = []

    def __enter__(self) -> MemoryPOP3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
