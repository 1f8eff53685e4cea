"""
TCP connections that send a reply at once instead of at the reactor's
next turn.

Twisted's C{write} only queues: it registers the socket for writing
(C{epoll_ctl}), the next C{epoll_wait} reports it writable, C{doWrite}
sends, and C{stopWriting} deregisters it (C{epoll_ctl} again).  A POP3
login is five short replies, so that is ten C{epoll_ctl} calls and five
trips through the reactor's dispatch for data the kernel could have
taken at once (strace of login10: 12 C{epoll_ctl} per session).

L{EagerServer} sends a write straight away when nothing is queued before
it, and queues only what the kernel did not take (then Twisted's own path
takes over: producers paused, C{doWrite}, close after the last byte).
What one read of the client's makes (the replies to pipelined commands)
is gathered and sent in one C{send} when the protocol returns, as
Twisted's next turn would have.  Bytes and their order on the wire are
unchanged.  While a producer that needs pacing is registered (a RETR
streaming its message) Twisted's path is kept: its buffer limit pauses
the producer and hands the reactor back to the other sessions after every
64 KiB (sent at once, a message would go out in one turn as long as the
kernel took it: an idle session's NOOP waited 54 ms behind 20 such
RETRs), and a pull producer is asked for more only from C{doWrite}.  A
producer says it needs none with a false C{paced} attribute: a POP3
session's L{popgate.pop3.output.OutputGate}, registered for the session's
whole life, needs pacing only while it streams a message.  A producer
without the attribute is paced.  After STLS the TLS layer
(L{popgate.tls_transport}) sends its records the same way, and a close
with nothing left to send skips Twisted's write round too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import _ProducerMembrane
from twisted.python.failure import Failure

from popgate.tls_transport import start_tls

#: Replies gathered during one read are sent once they reach this much.
_GATHER_LIMIT = 64 * 1024


def paced(producer: Any) -> bool:
    """
    Whether the writes of a transport's registered C{producer} must go
    through Twisted's buffer, whose limit pauses it (see module): with no
    producer, no; else what its C{paced} says, yes without one.  Twisted's
    TLS layer registers the application's producer in a membrane of its
    own, which is looked through.
    """
    if producer is None:
        return False
    if type(producer) is _ProducerMembrane:
        producer = producer._producer
    return bool(getattr(producer, "paced", True))


class EagerServer(tcp.Server):
    """A L{tcp.Server} whose writes go to the kernel at once (see module)."""

    _gathered: list[bytes] | None = None
    _gathered_len = 0

    def _can_send_now(self) -> bool:
        return bool(self.connected and not self._writeDisconnected and not self._aborting
                and not self._tempDataLen and self.offset == len(self.dataBuffer)
                and not paced(self.producer))

    def write(self, data: bytes) -> None:
        if self.TLS:  # after STLS: through the TLS layer, as Twisted's
            super().write(data)
            return
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        """Octets for the socket: gathered during a read, else sent."""
        gathered = self._gathered
        if gathered is not None:
            if type(data) is bytes and not paced(self.producer):
                gathered.append(data)
                self._gathered_len += len(data)
                if self._gathered_len >= _GATHER_LIMIT:
                    self._send_gathered()
                return
            self._send_gathered()  # what came first goes first
        self._send(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        for data in iovec:
            self.write(data)

    def loseConnection(self) -> None:
        """
        With nothing queued, close at the reactor's next turn without
        Twisted's write round for it: that one registers the socket for
        writing, sends zero octets from C{doWrite} and deregisters it
        (three C{epoll_ctl} and an empty C{send} per session).  Anything
        written meanwhile goes first, and Twisted's path then closes.
        """
        if self.TLS:  # the TLS layer's close_notify first, then _lose_raw
            super().loseConnection()
        else:
            self._lose_raw()

    def _lose_raw(self) -> None:
        if self.disconnecting or self.producer is not None or not self._can_send_now():
            FileDescriptor.loseConnection(self)
            return
        self.stopReading()
        self.disconnecting = True
        self.reactor.callLater(0, self._close_now)  # type: ignore[attr-defined]

    def _close_now(self) -> None:
        if (not self.connected or self._aborting or self._tempDataLen
                or self.offset != len(self.dataBuffer)):
            return  # lost or aborted meanwhile, or doWrite closes after what was queued
        self.stopWriting()
        self.connectionLost(Failure(main.CONNECTION_DONE))

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        self._send_gathered()  # the reply to STLS goes out in the clear
        start_tls(self, ctx, normal, _EagerBypass)

    def _send(self, data: bytes) -> None:
        if data and type(data) is bytes and self._can_send_now():
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # queued below: doWrite meets the error and closes
            if sent == len(data):
                return
            data = data[sent:]
        FileDescriptor.write(self, data)  # (past the TLS layer, after STLS too)

    def _send_gathered(self) -> None:
        gathered = self._gathered
        if gathered:
            data = gathered[0] if len(gathered) == 1 else b"".join(gathered)
            gathered.clear()
            self._gathered_len = 0
            self._send(data)

    def _dataReceived(self, data: bytes | None) -> Any:
        if self._gathered is not None:  # re-entered: the outer call sends
            return super()._dataReceived(data)
        self._gathered = []
        try:
            return super()._dataReceived(data)
        finally:
            try:
                self._send_gathered()
            finally:
                self._gathered = None


class _EagerBypass:
    """What the TLS layer under STLS sends through (as Twisted's bypass,
    C{FileDescriptor}): the encrypted octets, eagerly."""

    write = EagerServer._write_raw
    writeSequence = FileDescriptor.writeSequence
    loseConnection = EagerServer._lose_raw
    registerProducer = FileDescriptor.registerProducer
    unregisterProducer = FileDescriptor.unregisterProducer


def eager_writes(port: Any) -> Any:
    """Have a listening L{tcp.Port}'s connections be L{EagerServer}s;
    returns C{port} (other kinds of port unchanged)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = EagerServer
    return port


class EagerEndpoint:
    """A server endpoint whose TCP ports make L{EagerServer}s."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def listen(self, factory: Any) -> Any:
        return self.endpoint.listen(factory).addCallback(eager_writes)
