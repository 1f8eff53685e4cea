"""
An LMTP server (RFC 2033) for the SMTP server in front of popgate:
C{--lmtp tcp:2424:interface=127.0.0.1}.

Twisted 26 has no LMTP, and C{twisted.mail.smtp.SMTP} answers DATA once
for all recipients and drops the connection on an overlong line, so this is
a small protocol of its own:

- LHLO, MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT; PIPELINING,
  ENHANCEDSTATUSCODES, 8BITMIME and SIZE.
- RCPT TO asks the user stores: an unknown user gets C{550 5.1.1} at once,
  a user store that cannot answer C{451 4.3.0}, so the MTA retries.
- After DATA, one reply per accepted recipient, in RCPT order, each sent
  only once that recipient's copy is on stable storage.
- Commands are answered strictly in order: while a command waits for a user
  store or a disk, nothing more is parsed and the transport is paused.
- Overlong command lines get C{500 5.5.2} and the session goes on; message
  lines may be any length, the message is bounded by SIZE (C{552 5.3.4}).
  The end of DATA is C{CRLF.CRLF} only (never a bare-LF form).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from popgate import errors
from popgate.delivery.lmtp_data import DataReader
from popgate.delivery.lmtp_recipients import RecipientDelivery, Transaction
from popgate.delivery.lmtp_syntax import VERB, BadPath, parse_path
from popgate.delivery.lmtp_syntax import shown as _shown
from popgate.events import address_text, emit
from popgate.interfaces import IStreamTransport
from popgate.wire import to_stored

if TYPE_CHECKING:
    from popgate.delivery.lmtp_factory import LMTPFactory

MAX_COMMAND_LINE = 2048  # RFC 5321 says 512; MTAs send longer with parameters
MAX_RECIPIENTS = 1000
MAX_BAD_COMMANDS = 20
_PAUSE_ABOVE = 1 << 16  # read-ahead while busy before the transport is paused

_COMMAND, _DATA = "command", "data"


class LMTPServerProtocol(DataReader, RecipientDelivery, Protocol):
    """One LMTP connection: framing, the command state machine, replies."""

    log = Logger()
    factory: LMTPFactory
    # Set by makeConnection, before anything here runs.
    transport: IStreamTransport

    def __init__(self, factory: LMTPFactory) -> None:
        self.factory = factory
        self._buffer = bytearray()
        self._mode = _COMMAND
        self._busy = False
        self._processing = False
        self._paused = False
        self._closing = False
        self._disconnected = False
        self._skipping = False
        self._greeted = False
        self._bad_commands = 0
        self._transaction = Transaction()
        self._timer: IDelayedCall | None = None
        self._data_parts: list[bytes] = []
        self._data_size = 0
        self._data_line_start = True
        self._data_previous_cr = False
        self._session = secrets.token_urlsafe(9)
        self._rip = "-"

    # -- connection

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        self._rip = address_text(self.transport.getPeer())
        self._timer = self.factory.clock.callLater(self.factory.idle_timeout, self._timed_out)
        self._send(b"220 %s LMTP popgate ready" % self.factory.hostname_bytes)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._disconnected = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._data_parts = []

    def _timed_out(self) -> None:
        self._timer = None
        if self._busy:  # a delivery in progress: its reply will come
            self._timer = self.factory.clock.callLater(self.factory.idle_timeout, self._timed_out)
            return
        self._send(b"421 4.4.2 %s Timeout, closing connection" % self.factory.hostname_bytes)
        self._close()

    def _send(self, line: bytes) -> None:
        if not self._disconnected:
            self.transport.write(line + b"\r\n")

    def _reply(self, code: int, status: str, text: str | bytes) -> None:
        if isinstance(text, str):
            text = text.encode("ascii", "replace")
        if status:  # RFC 2034: 2xx, 4xx and 5xx replies carry a status code
            text = status.encode("ascii") + b" " + text
        self._send(b"%d %s" % (code, text))

    def _report(self, result: str, reason: str, address: str, user: str | None,
                sender: str | None, size: int, code: int, status: str, started: float,
                why: str = "", level: LogLevel | None = None) -> None:
        """One recipient's outcome, as the C{lmtp.delivery} event."""
        emit(self.log, "lmtp.delivery", level=level, result=result, reason=reason,
             recipient=address, user=user or "", sender=sender or "", size=size,
             duration=self.factory.clock.seconds() - started, why=why, code=code,
             status=status, rip=self._rip, session=self._session)

    def _close(self) -> None:
        self._closing = True
        self._buffer.clear()
        if not self._disconnected:
            self.transport.loseConnection()

    # -- input framing

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.idle_timeout)
        self._buffer += data
        self._process()

    def _process(self) -> None:
        if self._processing:
            return  # a command finished synchronously inside the loop below
        self._processing = True
        try:
            while self._buffer and not self._busy and not self._closing and not self._disconnected:
                if self._mode is _DATA:
                    if not self._take_data():
                        break
                    continue
                if not self._take_command_line():
                    break
        finally:
            self._processing = False
        self._flow()

    def _flow(self) -> None:
        """Stop reading while a command waits and enough is buffered."""
        want_pause = self._busy and len(self._buffer) > _PAUSE_ABOVE
        if want_pause and not self._paused and not self._disconnected:
            self._paused = True
            self.transport.pauseProducing()
        elif not want_pause and self._paused:
            self._paused = False
            if not self._disconnected:
                self.transport.resumeProducing()

    def _take_command_line(self) -> bool:
        end = self._buffer.find(b"\n")
        if end < 0:
            if self._skipping:
                self._buffer.clear()
            elif len(self._buffer) > MAX_COMMAND_LINE:
                self._buffer.clear()
                self._skipping = True
                self._too_long()
            return False
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[:end + 1]
        if self._skipping:
            self._skipping = False
            return True
        if len(line) > MAX_COMMAND_LINE:
            self._too_long()
            return True
        self._command(line)
        return True

    def _too_long(self) -> None:
        self._reply(500, "5.5.2", "Line too long")
        self._count_bad()

    def _count_bad(self) -> None:
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self._reply(421, "4.7.0", "Too many errors, closing connection")
            self._close()

    # -- commands

    def _command(self, line: bytes) -> None:
        verb, _, argument = line.strip().partition(b" ")
        handler = None
        if VERB.match(verb):
            handler = getattr(self, "lmtp_" + verb.decode("ascii").upper(), None)
        if handler is None:
            self._reply(500, "5.5.2", "Command not recognized")
            self._count_bad()
            return
        try:
            result = handler(argument.strip())
        except Exception:
            self.log.failure("LMTP command {verb}", verb=verb.decode("ascii", "replace"))
            self._reply(451, "4.3.0", "Local error in processing")
            return
        if isinstance(result, defer.Deferred):
            self._busy = True
            result.addErrback(self._command_failed)
            result.addBoth(self._command_done)

    def _command_failed(self, failure: Failure) -> None:
        self.log.failure("LMTP command", failure)
        self._reply(451, "4.3.0", "Local error in processing")

    def _command_done(self, _: object) -> None:
        self._busy = False
        self._process()

    def _reset(self) -> None:
        self._transaction = Transaction()

    def lmtp_LHLO(self, argument: bytes) -> None:
        if not argument:
            self._reply(501, "5.5.4", "Syntax: LHLO hostname")
            return
        self._reset()
        self._greeted = True
        lines = [self.factory.hostname_bytes, b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME",
                 b"SIZE %d" % self.factory.max_message_size]
        for line in lines[:-1]:
            self._send(b"250-" + line)
        self._send(b"250 " + lines[-1])

    def lmtp_HELO(self, argument: bytes) -> None:
        self._reply(500, "5.5.1", "This is LMTP: use LHLO")
        self._count_bad()

    lmtp_EHLO = lmtp_HELO

    def lmtp_MAIL(self, argument: bytes) -> None:
        if not self._greeted:
            self._reply(503, "5.5.1", "Send LHLO first")
            return
        if self._transaction.sender is not None:
            self._reply(503, "5.5.1", "Nested MAIL command")
            return
        try:
            sender, parameters = parse_path(argument, b"FROM:")
        except BadPath:
            self._reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return
        for parameter in parameters:
            key, _, value = parameter.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit() or len(value) > 20:
                    self._reply(501, "5.5.4", "Bad SIZE parameter")
                    return
                if int(value) > self.factory.max_message_size:
                    self._reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                    return
            elif key == b"BODY":
                if value.upper() not in (b"7BIT", b"8BITMIME"):
                    self._reply(501, "5.5.4", "Bad BODY parameter")
                    return
            else:
                self._reply(555, "5.5.4", "Unsupported parameter")
                return
        self._transaction.sender = sender
        self._reply(250, "2.1.0", "OK")

    def lmtp_RCPT(self, argument: bytes) -> defer.Deferred[None] | None:
        if self._transaction.sender is None:
            self._reply(503, "5.5.1", "Need MAIL command")
            return None
        try:
            address, parameters = parse_path(argument, b"TO:")
        except BadPath:
            self._reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return None
        if not address:
            self._reply(501, "5.1.3", "Bad recipient address syntax")
            return None
        if parameters:
            self._reply(555, "5.5.4", "Unsupported parameter")
            return None
        if len(self._transaction.recipients) >= MAX_RECIPIENTS:
            self._reply(452, "4.5.3", "Too many recipients")
            return None
        transaction = self._transaction
        started = self.factory.clock.seconds()
        d = self.factory.resolver.resolve(address)

        def found(user: str | None) -> None:
            if user is None:
                self._report("failed", "unknown-user", address, None, transaction.sender, 0,
                             550, "5.1.1", started, level=LogLevel.info)
                self._reply(550, "5.1.1", b"<%s> User unknown" % _shown(address))
                return
            transaction.recipients.append((address, user))
            self._reply(250, "2.1.5", b"<%s> OK" % _shown(address))

        def failed(failure: Failure) -> None:
            if not failure.check(errors.TemporaryFailure):
                self.log.failure("looking up {address}", failure, address=address)
            why = failure.getErrorMessage()
            # The lmtp.delivery line says it; this one is counted.
            emit(self.log, "userstore.error", level=LogLevel.debug, op="lookup",
                 kind="temporary" if failure.check(errors.TemporaryFailure) else "internal",
                 user=address, why=why, session=self._session)
            self._report("tempfail", "user-lookup", address, None, transaction.sender, 0,
                         451, "4.3.0", started, why)
            self._reply(451, "4.3.0", b"<%s> Temporary user lookup failure, try again later"
                        % _shown(address))

        return d.addCallbacks(found, failed)

    def lmtp_DATA(self, argument: bytes) -> None:
        if self._transaction.sender is None:
            self._reply(503, "5.5.1", "Need MAIL command")
            return
        if not self._transaction.recipients:
            self._reply(503, "5.5.1", "No valid recipients")
            return
        if argument:
            self._reply(501, "5.5.4", "Syntax: DATA")
            return
        self._mode = _DATA
        self._data_parts = []
        self._data_size = 0
        self._data_line_start = True
        self._data_previous_cr = False
        self._reply(354, "", "Start mail input; end with <CRLF>.<CRLF>")

    def lmtp_RSET(self, argument: bytes) -> None:
        self._reset()
        self._reply(250, "2.0.0", "OK")

    def lmtp_NOOP(self, argument: bytes) -> None:
        self._reply(250, "2.0.0", "OK")

    def lmtp_QUIT(self, argument: bytes) -> None:
        self._reply(221, "2.0.0", "Bye")
        self._close()

    def lmtp_VRFY(self, argument: bytes) -> None:
        self._reply(252, "2.5.0", "Send some mail, I'll try my best")

    # -- DATA

    def _end_data(self) -> None:
        self._mode = _COMMAND
        too_big = self._data_size > self.factory.max_message_size
        message = b"" if too_big else to_stored(b"".join(self._data_parts))
        self._data_parts = []
        transaction, self._transaction = self._transaction, Transaction()
        self._busy = True
        d = defer.Deferred.fromCoroutine(
            self._deliver_all(transaction, message, self._data_size if too_big else 0))
        d.addErrback(self._command_failed)
        d.addBoth(self._command_done)


__all__: Sequence[str] = ["LMTPServerProtocol"]
