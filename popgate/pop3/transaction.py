"""
The TRANSACTION and UPDATE states of a POP3 session: the commands on an
open maildrop, and QUIT, the only way deletions become real (RFC 1939
section 6).  Messages are streamed with back-pressure by
L{popgate.pop3.output.MessageSender}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from popgate import errors
from popgate.interfaces import ISeenMaildrop, IStreamTransport, ITopMaildrop
from popgate.pop3 import responses as r
from popgate.pop3.base import AUTHORIZATION, UPDATE, BadArgument, describe
from popgate.pop3.language import Localized
from popgate.pop3.output import MessageSender, OutputGate, Reader, encoder_for, read_inline
from popgate.pop3.policy import defaults, retrievals_for
from popgate.pop3.session_log import SessionLog, store_kind

if TYPE_CHECKING:
    from popgate.expiry import Retrievals
    from popgate.policy import Policy
    from popgate.pop3.settings import SessionSettings

# Message numbers are 32-bit and TOP line counts 64-bit, as in Dovecot:
# larger values are an error, not "all lines".
_MAX_MESSAGE_NUMBER = 2**32 - 1
_MAX_LINE_COUNT = 2**64 - 1
_DIGITS = re.compile(rb"[0-9]+")


class TransactionCommands(Localized):
    """
    The commands on an open maildrop, for
    L{popgate.pop3.protocol.POP3ServerProtocol} (a mixin).  Deletion marks
    live here, in the session; the maildrop sees them only at QUIT.
    """

    log = Logger()
    state: str
    transport: IStreamTransport
    _gate: OutputGate
    _disconnected: bool
    # How RETR reads its source: the factory sets a PoolReader (disk reads
    # off the reactor thread); inline for a protocol built without one.
    reader: Reader = staticmethod(read_inline)

    report: SessionLog
    settings: SessionSettings
    portal: Any
    clock: Any
    #: The user's LOGIN-DELAY and EXPIRE, and the RETRs EXPIRE counts
    #: (L{popgate.pop3.policy}): set at login.
    policy: Policy | None = None
    retrievals: Retrievals | None = None

    if TYPE_CHECKING:
        # What the framing and authorization parts of the session do.
        def _close(self) -> None: ...
        def resetTimeout(self) -> None: ...
        def tls_active(self) -> bool: ...

    def _init_transaction(self) -> None:
        self.maildrop: Any = None
        self._committed = False
        self._updating = False
        self._logout: Callable[[], object] | None = None
        self._messages: list[Any] = []
        self._deleted: bytearray = bytearray()
        self._live_count = 0
        self._live_size = 0
        # Full LIST and UIDL replies, until a DELE or RSET changes them.
        self._listings: dict[bytes, bytes] = {}
        # Read marks (RETR), and LAST (RFC 1460): the highest message
        # number RETR asked for, since the login or the last RSET.
        self._marks: Any = None
        self._highest_retrieved = 0
        self._last_reset = False

    def _enter_transaction(self, maildrop: Any) -> None:
        """Take the maildrop's message list: the numbers the session uses."""
        self._messages = list(maildrop.list_messages())
        self._deleted = bytearray(len(self._messages))
        self._live_count = len(self._messages)
        self._live_size = sum(m.size for m in self._messages)
        self._marks = ISeenMaildrop(maildrop, None)

    def _enter_policy(self, policy: Policy | None) -> None:
        """The user's LOGIN-DELAY and EXPIRE (the server's if the login
        brought none), for CAPA and QUIT."""
        self.policy = policy or defaults(self.settings)
        self.retrievals = retrievals_for(self.maildrop, self.policy, self.settings, self.portal,
                                         self.clock)

    def _release(self) -> None:
        """Give the maildrop back without UPDATE (RFC 1939 section 6)."""
        if self.maildrop is not None and not self._committed:
            self._committed = True
            defer.maybeDeferred(self.maildrop.close).addErrback(
                lambda f: self.log.failure("closing maildrop", f))
        # While UPDATE runs the maildrop stays locked: the commit releases it.
        if self._logout is not None and not self._updating:
            logout, self._logout = self._logout, None
            logout()

    def pop3_QUIT(self, argument: bytes) -> defer.Deferred[None] | None:
        if self.state == AUTHORIZATION:
            self.report.ending("quit")
            self.transport.write(r.ok(self._("Logging out.")))
            self._close()
            return None
        self.state = UPDATE
        deleted = [i for i, flag in enumerate(self._deleted) if flag]
        self._committed = True
        self._updating = True
        if self.retrievals is not None and self.policy is not None:
            # EXPIRE: messages retrieved long enough ago go too, as if the
            # client had deleted them (popgate.expiry; never fails).
            d: defer.Deferred[Any] = self.retrievals.expire(deleted, self.policy.expire)
        else:
            d = defer.succeed(deleted)

        def commit(removing: list[int]) -> object:
            deleted[:] = removing  # what the log and the reply below count
            return self.maildrop.commit(removing)

        d.addCallback(commit)

        def updated(result: object) -> object:
            self._updating = False
            if isinstance(result, Failure):
                self.report.ending("update-failed")
                if result.check(OSError, errors.TemporaryFailure, errors.PermanentFailure):
                    # Disk full, a read-only file system, a store gone away:
                    # nothing was lost, and one line says why.
                    self.report.store_error("commit", store_kind(result), describe(result),
                                            level=LogLevel.error)
                else:
                    self.log.failure("UPDATE failed", result)
                    self.report.store_error("commit", "internal", describe(result),
                                            level=LogLevel.debug)
            else:
                self.report.ending("quit")
                self.report.committed(len(deleted), sum(self._messages[i].size for i in deleted))
            if self._disconnected:
                self._release()
                self.report.ended(self.tls_active())
            return result

        def done(_: object) -> None:
            if deleted:
                self._send_and_close(r.ok(self._("Logging out, messages deleted.")))
            else:
                self._send_and_close(r.ok(self._("Logging out.")))

        def failed(failure: Failure) -> None:
            self._send_and_close(r.err(self._("Some deleted messages were not removed."),
                                       r.SYS_TEMP))

        d.addBoth(updated)
        d.addCallbacks(done, failed)
        return d

    def _send_and_close(self, reply: bytes) -> None:
        if not self._disconnected:
            self.transport.write(reply)
            self._close()

    def _message_number(self, argument: bytes, then_space: bool = False) -> tuple[int, bytes]:
        """
        Parse a message number naming a live message, as Dovecot does:
        digits (a 32-bit number), then the end of the line -- or, with
        C{then_space}, a space and more arguments.  Return its index and
        what follows, spaces skipped.
        """
        match = _DIGITS.match(argument)
        if match is None:
            raise BadArgument("Invalid message number.")
        number = int(match.group())
        if number > _MAX_MESSAGE_NUMBER:
            raise BadArgument("Message number too large.")
        rest = argument[match.end():]
        if rest[:1] != (b" " if then_space else b""):
            raise BadArgument("Noise after message number.")
        if number < 1 or number > len(self._messages):
            # TRANSLATORS: {number} is a message number, such as 3.
            raise BadArgument("There's no message {number}.", number=number)
        index = number - 1
        if self._deleted[index]:
            raise BadArgument("Message is deleted.")
        return index, rest.lstrip(b" ")

    def pop3_STAT(self, argument: bytes) -> None:
        self.transport.write(r.ok(b"%d %d" % (self._live_count, self._live_size)))

    def pop3_NOOP(self, argument: bytes) -> None:
        self.transport.write(r.ok())

    def pop3_LIST(self, argument: bytes) -> None:
        if argument:
            index, _ = self._message_number(argument)
            self.transport.write(r.ok(b"%d %d" % (index + 1, self._messages[index].size)))
            return
        reply = self._listings.get(b"LIST")
        if reply is None:
            deleted = self._deleted
            lines = [b"%d %d" % (i + 1, m.size)
                     for i, m in enumerate(self._messages) if not deleted[i]]
            # TRANSLATORS: {count} is a number of messages (the same word for any number).
            first = self._("{count} messages:", count=self._live_count)
            reply = self._listings[b"LIST"] = r.multiline(first, lines)
        self.transport.write(reply)

    def pop3_UIDL(self, argument: bytes) -> None:
        if argument:
            index, _ = self._message_number(argument)
            self.transport.write(r.ok(b"%d %s" % (index + 1, self._messages[index].uid)))
            return
        # Kept until the next DELE or RSET: a client repeating UIDL on a big
        # maildrop costs one write, not one formatting pass each time.
        reply = self._listings.get(b"UIDL")
        if reply is None:
            deleted = self._deleted
            lines = [b"%d %s" % (i + 1, m.uid)
                     for i, m in enumerate(self._messages) if not deleted[i]]
            reply = self._listings[b"UIDL"] = r.multiline(b"", lines)
        self.transport.write(reply)

    def pop3_DELE(self, argument: bytes) -> None:
        index, _ = self._message_number(argument)
        self._deleted[index] = 1
        self._live_count -= 1
        self._live_size -= self._messages[index].size
        self._listings.clear()
        self.transport.write(r.ok(self._("Marked to be deleted.")))

    def pop3_RSET(self, argument: bytes) -> None:
        # As in Dovecot: RSET also forgets this session's read marks, and
        # LAST starts again from 0 (RFC 1460).
        self._highest_retrieved = 0
        self._last_reset = True
        if self._marks is not None:
            self._marks.forget_retrieved()
        self._deleted = bytearray(len(self._messages))
        self._live_count = len(self._messages)
        self._live_size = sum(m.size for m in self._messages)
        self._listings.clear()
        self.transport.write(r.ok())

    def pop3_LAST(self, argument: bytes) -> None:
        """
        RFC 1460's LAST, offered only with C{enable_last}: the highest
        message number RETR asked for, or read before this session (the
        store's read marks) until an RSET.  Arguments are ignored, as in
        Dovecot.
        """
        last = self._highest_retrieved
        if not self._last_reset and self._marks is not None:
            last = max(last, self._marks.last_seen())
        self.transport.write(r.ok(b"%d" % last))

    def pop3_RETR(self, argument: bytes) -> defer.Deferred[None]:
        index, _ = self._message_number(argument)
        self._highest_retrieved = max(self._highest_retrieved, index + 1)
        # Not human text, so in no language but RFC 1939's: clients read
        # the size from it (fetchmail looks for " octets").
        first = r.ok(b"%d octets" % self._messages[index].size)
        return self._send_message(index, first, None)

    def pop3_TOP(self, argument: bytes) -> defer.Deferred[None]:
        # "TOP msg n": n is a 64-bit count; more is an error, as in Dovecot.
        index, lines = self._message_number(argument, then_space=True)
        match = _DIGITS.match(lines)
        if match is None:
            raise BadArgument("Invalid size.")
        count = int(match.group())
        if count > _MAX_LINE_COUNT:
            raise BadArgument("Size too large.")
        if match.end() != len(lines):
            raise BadArgument("Noise after size.")
        return self._send_message(index, r.ok(), count)

    def _message_sent(self, index: int, whole: bool, octets: int) -> None:
        """A RETR or TOP reply went out in full; a whole message (RETR)
        gets its read mark."""
        self.report.sent(whole, octets)
        if whole and self._marks is not None:
            self._marks.retrieved(index)
        if whole and self.retrievals is not None:
            self.retrievals.retrieved(index)

    def _send_message(self, index: int, first: bytes,
                      body_lines: int | None) -> defer.Deferred[None]:
        d: defer.Deferred[Any]
        if body_lines is not None and ITopMaildrop.providedBy(self.maildrop):
            d = defer.maybeDeferred(self.maildrop.open_top, index, body_lines)
        else:
            d = defer.maybeDeferred(self.maildrop.open_message, index)
        octets = 0

        def write(data: bytes) -> None:
            nonlocal octets
            octets += len(data)
            self.transport.write(data)

        def opened(source: Any) -> defer.Deferred[None] | None:
            if self._disconnected:
                source.close()
                return None
            sender = MessageSender(self._gate, source, encoder_for(source, body_lines),
                                   write, self.resetTimeout, self.reader)
            return sender.start(first).addCallback(
                lambda _: self._message_sent(index, body_lines is None, octets))

        def failed(failure: Failure) -> None:
            if self._disconnected:
                return
            why = f"message {index + 1}: {describe(failure)}"
            if failure.check(errors.PermanentFailure, FileNotFoundError):
                # Vanished: deleted by another program since the login.
                self.report.store_error("open", "permanent", why)
                self.transport.write(r.err(self._("Message is no longer available."),
                                           r.SYS_PERM))
            elif failure.check(errors.TemporaryFailure, OSError):
                self.report.store_error("open", "temporary", why)
                self.transport.write(r.err(self._("Temporary failure reading the message."),
                                           r.SYS_TEMP))
            else:
                self.log.failure("reading message {n}", failure, n=index + 1)
                self.report.store_error("open", "internal", why, level=LogLevel.debug)
                self.transport.write(r.err(self._("Temporary failure reading the message."),
                                           r.SYS_TEMP))

        def sent_or_failed(result: object) -> None:
            # A failure after the +OK line was sent cannot become an -ERR:
            # the only honest thing left is to drop the connection, and to
            # run none of the commands pipelined after this one (a TCP
            # transport stops its producer before connectionLost, so
            # "RETR 1, DELE 1, QUIT" must not go on to delete).
            if isinstance(result, Failure) and not self._disconnected:
                self._disconnected = True
                why = f"message {index + 1}: {describe(result)}"
                if result.check(ConnectionLost):
                    self.report.ending("disconnect")
                elif result.check(OSError, errors.TemporaryFailure):
                    self.report.ending("error")
                    self.report.store_error("read", "temporary", why, level=LogLevel.error)
                else:
                    self.report.ending("error")
                    self.log.failure("sending message {n}", result, n=index + 1)
                    self.report.store_error("read", "internal", why, level=LogLevel.debug)
                self.transport.abortConnection()

        d.addCallbacks(opened, failed)
        d.addErrback(lambda f: sent_or_failed(f))
        return d
