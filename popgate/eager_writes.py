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
unchanged.  While a producer is registered (a RETR streaming its
message) Twisted's path is kept: its buffer limit pauses the producer
and hands the reactor back to the other sessions after every 64 KiB (sent
at once, a message would go out in one turn as long as the kernel took
it: an idle session's NOOP waited 54 ms behind 20 such RETRs), and a pull
producer is asked for more only from C{doWrite}.  So is a connection
after STLS (Twisted's TLS layer writes its encrypted bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp

#: Replies gathered during one read are sent once they reach this much.
_GATHER_LIMIT = 64 * 1024


class EagerServer(tcp.Server):
    """A L{tcp.Server} whose writes go to the kernel at once (see module)."""

    _gathered: list[bytes] | None = None
    _gathered_len = 0

    def _can_send_now(self) -> bool:
        return bool(self.connected and not self._writeDisconnected and not self._aborting
                and not self._tempDataLen and self.offset == len(self.dataBuffer)
                and self.producer is None)

    def write(self, data: bytes) -> None:
        if self.TLS:  # after STLS: through the TLS layer, as Twisted's
            super().write(data)
            return
        gathered = self._gathered
        if gathered is not None:
            if type(data) is bytes and self.producer is None:
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

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        self._send_gathered()  # the reply to STLS goes out in the clear
        super().startTLS(ctx, normal)

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
        super().write(data)

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
