"""
In-memory test plumbing for the POP3 protocol and the stores: a reactor
whose thread pool runs work inline, a transport that applies back-pressure,
and a one-call builder for a connected server protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.protocol import POP3ServerProtocol
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.memory import MemoryStore

# The client of in-memory sessions: loopback, where plaintext passwords are
# allowed by default (StringTransport's own default peer, 192.168.1.1, is
# a remote client that must use TLS first).
LOOPBACK_PEER = IPv4Address("TCP", "127.0.0.1", 54321)


class InlineThreadPool:
    """Runs the work at once, in the calling thread."""

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None],
                                 f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class InlineReactor:
    """Just enough reactor for C{deferToThreadPool}: everything is synchronous."""

    def __init__(self) -> None:
        self.pool = InlineThreadPool()

    def getThreadPool(self) -> InlineThreadPool:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class PausingTransport(StringTransport):
    """
    A transport with a small write buffer: once more than C{high} bytes were
    written since the last L{drain}, the registered streaming producer is
    paused, as a TCP transport does when the socket buffer fills up.
    """

    def __init__(self, high: int = 1000) -> None:
        super().__init__(peerAddress=LOOPBACK_PEER)
        self.high = high
        self.pending = 0
        self.pauses = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += len(data)
        if (self.producer is not None and self.streaming and self.pending > self.high
                and not self.producer_paused):
            self.pauses += 1
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bool:
        """The peer read everything: resume the producer if it was paused
        (as TCP does once its buffer is empty).  False if it was not."""
        self.pending = 0
        if self.producer is None or not self.producer_paused:
            return False
        self.producer_paused = False
        self.producer.resumeProducing()
        return True


@dataclass
class Session:
    """One server protocol on a L{StringTransport}, with its clock."""

    protocol: POP3ServerProtocol
    transport: StringTransport
    clock: Clock

    def send(self, data: bytes) -> bytes:
        """Feed C{data}, return (and clear) everything written in reply."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("test")))

    def login(self, user: bytes = b"alice", password: bytes = b"secret") -> bytes:
        reply = self.send(b"USER " + user + b"\r\nPASS " + password + b"\r\n")
        assert reply.endswith(b"+OK Logged in.\r\n"), reply
        return reply


def make_portal(store: Any = None, checker: Any = None,
                users: dict[bytes, bytes] | None = None,
                reactor: Any = None) -> tuple[Portal, Any]:
    """A portal on C{store}; the realm's reactor (for the adapters that
    need threads) is an L{InlineReactor} unless one is given."""
    store = MemoryStore() if store is None else store
    reactor = InlineReactor() if reactor is None else reactor
    if checker is None:
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        for name, password in (users or {b"alice": b"secret", b"bob": b"hunter2"}).items():
            checker.addUser(name, password)
    return Portal(MaildropRealm(store, reactor), [checker]), store


def connect(portal: Portal, clock: Clock | None = None,
            settings: SessionSettings | None = None,
            transport: StringTransport | None = None) -> Session:
    clock = Clock() if clock is None else clock
    factory = POP3ServerFactory(portal, settings, clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=LOOPBACK_PEER) if transport is None else transport
    protocol.makeConnection(transport)
    return Session(protocol, transport, clock)
