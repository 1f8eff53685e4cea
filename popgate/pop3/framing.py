"""
Line framing for a POP3 session, with every buffer bounded.

Commands are answered strictly in order.  A command whose answer takes
time (a login, a RETR being streamed, QUIT waiting for deletions to be
durable) stops the parsing of further commands until it is done
(L{FramedSession._wait_for}); so does a full write buffer (the client is
not reading its answers, see L{popgate.pop3.output}).  While nothing is
parsed, at most C{READ_AHEAD} octets of input are kept before reading
from the socket stops: pipelined input then waits in the kernel, not in
our memory.  Overlong lines close the connection, as Dovecot does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from popgate.interfaces import IStreamTransport
from popgate.pop3 import responses as r
from popgate.pop3.base import UPDATE
from popgate.pop3.language import Localized
from popgate.pop3.output import OutputGate

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from popgate.pop3.session_log import SessionLog
    from popgate.pop3.settings import SessionSettings

# Input kept while nothing is parsed before reading is paused.
READ_AHEAD = 64 * 1024
# Pipelined commands run in one go before the other sessions get a turn.
LINES_PER_TURN = 200


class FramedSession(LineReceiver, TimeoutMixin, Localized):
    """
    The framing half of L{popgate.pop3.protocol.POP3ServerProtocol}: it
    splits input into lines for C{lineReceived}, applies back-pressure and
    the idle timeout, and closes cleanly.  Subclasses provide C{state},
    C{clock}, C{settings}, C{line_limit()} and C{lineReceived()}.
    """

    delimiter = b"\r\n"
    # Set by makeConnection, before anything here runs.
    transport: IStreamTransport
    log: Logger
    state: str
    clock: IReactorTime
    settings: SessionSettings
    _disconnected: bool
    _sasl: Any
    report: SessionLog

    def _init_framing(self) -> None:
        # Input not yet parsed is self._buffer[self._pos:]; lines are taken
        # by moving the offset, so a buffer of many pipelined commands is
        # not copied once per command.
        self._buffer = b""
        self._pos = 0
        self._busy_receiving = False
        self._reading_paused = False
        self._read_closed = False
        self._gate = OutputGate(self._output_paused, self._output_resumed, self._output_stopped)
        self._gate_registered = False
        self._next_turn: Any = None

    def _start_framing(self) -> None:
        """At connect: one producer for the whole session, the idle timer."""
        self.transport.registerProducer(self._gate, True)
        self._gate_registered = True
        self.setTimeout(self.settings.idle_timeout)

    def _stop_framing(self) -> None:
        """At disconnect: no timer may fire for a gone session."""
        self.setTimeout(None)
        turn, self._next_turn = self._next_turn, None
        if turn is not None and turn.active():
            turn.cancel()

    def line_limit(self) -> int:
        raise NotImplementedError

    # -- TimeoutMixin uses our injected clock, never the global reactor.
    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self.clock.callLater(period, func)

    def writeConnectionLost(self) -> None:
        self._close()

    def timeoutConnection(self) -> None:
        if self.paused or self._gate.blocked:
            # A command is still running or the client stopped reading its
            # answers: an -ERR would land inside a reply, and
            # loseConnection would wait for the full buffer forever,
            # keeping the maildrop locked.  Drop the connection, as
            # Dovecot does.
            self.report.ending("idle-timeout")
            self.transport.abortConnection()
            return
        self.report.ending("idle-timeout")
        self.transport.write(r.err(self._("Disconnected for inactivity.")))
        self._close()

    def disconnect_by_admin(self) -> None:
        """C{popgate kick}: as the idle timeout, with its own words."""
        self.report.ending("kicked")
        if self.paused or self._gate.blocked:
            self.transport.abortConnection()  # see timeoutConnection
            return
        self.transport.write(r.err(self._("Disconnected by the administrator."), r.SYS_PERM))
        self._close()

    def _close(self) -> None:
        """
        Close after what was written has been sent.  The output gate is
        unregistered first: with a producer registered, TCP and TLS
        transports wait for it to go before they close.
        """
        if self._gate_registered:
            self._gate_registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _output_paused(self) -> None:
        self._update_reading()

    def _output_resumed(self) -> None:
        if not self.paused:
            self.dataReceived(b"")
        else:
            self._update_reading()

    def _output_stopped(self) -> None:
        pass

    def _update_reading(self) -> None:
        """
        Stop reading from the socket once more than C{READ_AHEAD} octets of
        input wait while nothing is parsed: a command is running, or the
        transport's write buffer is full (the client does not read its
        answers).  The rest of the input then waits in the kernel, not in
        our memory.  (Not at once when the buffer fills: before a TLS
        handshake completes, the TLS layer reports a full buffer, and must
        go on reading to finish the handshake.)
        """
        if self._disconnected or self._read_closed or self.transport.disconnecting:
            return
        stop = ((self.paused or self._gate.blocked or self._next_turn is not None)
                and len(self._buffer) - self._pos > READ_AHEAD)
        if stop and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not stop and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _take_turn(self) -> None:
        self._next_turn = None
        if not self._disconnected:
            self.dataReceived(b"")

    def dataReceived(self, data: bytes) -> None:
        """
        Split input into lines (CRLF or bare LF), with a bounded buffer: a
        line longer than the limit gets C{-ERR} and the connection is
        closed, as Dovecot does (a client that sends such lines is not
        speaking POP3, and what follows cannot be trusted to be commands).
        """
        if data:
            self._buffer += data
        if self._busy_receiving:
            if data:
                self._update_reading()
            return
        self._busy_receiving = True
        try:
            handled = 0
            while (not self.paused and not self._gate.blocked and not self._disconnected
                   and self._next_turn is None):
                buf, pos = self._buffer, self._pos
                if pos >= len(buf):
                    break
                if handled == LINES_PER_TURN:
                    # Fairness: a client pipelining thousands of cheap
                    # commands lets the other sessions run in between.
                    self._next_turn = self.clock.callLater(0, self._take_turn)
                    break
                handled += 1
                if self.transport.disconnecting:
                    self._buffer, self._pos = b"", 0
                    return
                nl = buf.find(b"\n", pos)
                limit = self.line_limit()
                if nl < 0:
                    if len(buf) - pos > limit:
                        self._line_too_long()
                    break
                if nl + 1 - pos > limit:
                    self._line_too_long()
                    return
                end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                self._pos = nl + 1
                self.lineReceived(buf[pos:end])
        finally:
            self._busy_receiving = False
            if self._pos:
                self._buffer, self._pos = self._buffer[self._pos:], 0
        self._update_reading()
        if (self._read_closed and not self.paused and not self._gate.blocked
                and self._next_turn is None
                and not self._disconnected and self.state != UPDATE
                and not self.transport.disconnecting):
            # Half-closed and every complete command answered: the client
            # has left without QUIT, so nothing is deleted.
            self.report.ending("disconnect")
            self._close()

    def clearLineBuffer(self) -> bytes:
        buf = self._buffer[self._pos:]
        self._buffer, self._pos = b"", 0
        return buf

    def _line_too_long(self) -> None:
        self.report.ending("line-too-long")
        self._sasl = None
        self._buffer, self._pos = b"", 0
        self.transport.write(r.err(self._("Input line too long.")))
        self._close()

    def _wait_for(self, result: defer.Deferred[Any]) -> None:
        """Stop reading commands until C{result} fires, then go on."""
        # C{result.called} is no test: a Deferred that was called but waits
        # on a Deferred returned by a callback (a RETR being streamed, the
        # delay after a failed login) has no result yet.
        fired = waiting = False

        def resume(passthrough: object) -> None:
            nonlocal fired
            fired = True
            if isinstance(passthrough, Failure):
                self.log.failure("command failed", passthrough)
                if not self._disconnected:
                    self._close()
                return
            if not waiting:
                return
            if self._disconnected or self.state == UPDATE or self.transport.disconnecting:
                return
            self.paused = False
            self.dataReceived(b"")

        result.addBoth(resume)
        if not fired:
            # Stop parsing, but keep reading (a disconnect is noticed at
            # once) until the read-ahead bound; pausing the socket for every
            # login costs two epoll calls.
            waiting = True
            self.paused = True
