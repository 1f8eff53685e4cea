"""
The POP3 server protocol (RFC 1939, RFC 2449): one instance per connection.

It is assembled from one part per job: L{popgate.pop3.framing} (lines,
limits, back-pressure, half-close, the idle timeout),
L{popgate.pop3.authorization} (USER/PASS, APOP, SASL, STLS, the login
penalty) and L{popgate.pop3.transaction} (the commands on an open
maildrop, QUIT and UPDATE).  This module dispatches commands by state and
counts bad ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.pop3 import responses as r
from popgate.pop3.authorization import AuthorizationCommands, peer_is_trusted
from popgate.pop3.base import AUTHORIZATION, UPDATE, BadArgument
from popgate.pop3.framing import FramedSession
from popgate.pop3.language import LanguageCommands
from popgate.pop3.output import CHUNK_SIZE
from popgate.pop3.policy import capabilities as policy_capabilities
from popgate.pop3.session_log import SessionLog
from popgate.pop3.settings import SessionSettings
from popgate.pop3.transaction import TransactionCommands

__all__ = ["POP3ServerProtocol", "peer_is_trusted"]

_CHUNK_SIZE = CHUNK_SIZE


@implementer(IHalfCloseableProtocol)
class POP3ServerProtocol(FramedSession, AuthorizationCommands, TransactionCommands,
                         LanguageCommands):
    """
    One POP3 session.  The factory gives it C{portal}, C{settings} and a
    C{clock} (and C{penalty}, C{tls}); nothing here reaches for the global
    reactor.
    """

    log = Logger()
    #: The L{popgate.pop3.sessions.SessionRegistry} listing this session
    #: (set by it), left when the connection is lost.
    sessions: Any = None

    def __init__(self, portal: Any, settings: SessionSettings, clock: IReactorTime) -> None:
        self.portal = portal
        self.settings = settings
        self.clock = clock
        self.state = AUTHORIZATION
        self._disconnected = False
        self._bad_commands = 0
        self.report = SessionLog(self.log, clock)
        self._init_framing()
        self._init_authorization()
        self._init_transaction()

    # -- connection life cycle

    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        self._start_framing()
        self._start_login_timer()
        self._tls_pending = self.tls_active()  # POP3S: the handshake is still to come
        self.report.connected(self.transport, self.tls_active())
        greeting = self.settings.greeting.encode("utf-8", "replace")
        if self._secrets_checkable():
            self._challenge = b"<%d.%d.%d@%s>" % (
                os.getpid(), id(self) & 0xFFFFFF, int(self.clock.seconds() * 1000),
                self.settings.hostname.encode("idna"),
            )
            greeting += b" " + self._challenge
        self.transport.write(r.ok(greeting))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disconnected = True
        if self.sessions is not None:
            self.sessions.discard(self)
        self._stop_framing()
        self._stop_authorization()
        if self._tls_pending and reason.check(SSL.Error):
            self.report.tls_failed("stls" if self._tls_started else "pop3s",
                                   reason.getErrorMessage())
        self._release()
        if not self._updating:  # else once the deletions are applied (or not)
            self.report.ended(self.tls_active())

    def readConnectionLost(self) -> None:
        """
        The client shut down its sending side (C{nc -N}, scripts): answer
        every complete command it sent, QUIT included, then close.
        """
        self._read_closed = True
        self._reading_paused = False
        if self._abandoned_login():
            self.report.ending("aborted")
            self.transport.abortConnection()
            return
        self.dataReceived(b"")

    # -- commands

    def line_limit(self) -> int:
        """
        The longest line accepted now, CRLF included (Dovecot's limits):
        before login C{max_login_line_length}, longer in a SASL exchange and
        for C{AUTH} with an initial response (clients do not all keep to
        RFC 5034's 255 octets), after login C{max_line_length}.
        """
        settings = self.settings
        if self.state != AUTHORIZATION:
            return settings.max_line_length
        if self._sasl is not None or self._buffer[self._pos:self._pos + 5].upper() == b"AUTH ":
            return max(settings.max_sasl_line_length, settings.max_login_line_length)
        return settings.max_login_line_length

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self._tls_pending:
            self._tls_pending = False
            self._tls_done()
        if self.state == UPDATE:
            return
        if self._sasl is not None:
            result = self._sasl_response(line)
            if isinstance(result, defer.Deferred):
                self._wait_for(result)
            return
        # As Dovecot: the command is what comes before the first space;
        # after login the spaces before the arguments are skipped, before
        # login the arguments are taken as they are (a password may start
        # with a space).
        keyword, _, argument = line.partition(b" ")
        handler = self._handler(keyword.upper())
        if handler is None:
            self._bad_command(self._("Unknown command."))
            return
        if self.state != AUTHORIZATION:
            argument = argument.lstrip(b" ")
        try:
            result = handler(argument)
        except BadArgument as e:
            text = self._(e.text, **e.fields)
            if self.state == AUTHORIZATION:
                # Before login only unknown commands count as bad ones
                # (Dovecot's pop3-login): a refused USER, PASS or AUTH
                # is not a sign of a confused peer.
                self._bad_commands = 0
                self.transport.write(r.err(text, e.code))
            else:
                self._bad_command(text, e.code)
            return
        self._bad_commands = 0
        if isinstance(result, defer.Deferred):
            self._wait_for(result)

    def _tls_done(self) -> None:
        """The first line over TLS: the handshake succeeded (for the log
        and the metrics, with the version and cipher it agreed on)."""
        get_handle = getattr(self.transport, "getHandle", None)
        connection = get_handle() if get_handle is not None else None
        version = cipher = ""
        if isinstance(connection, SSL.Connection):
            version = connection.get_protocol_version_name()
            cipher = connection.get_cipher_name() or ""
        self.report.tls_done("stls" if self._tls_started else "pop3s", version, cipher)

    def _handler(self, keyword: bytes) -> Callable[[bytes], Any] | None:
        if not keyword.isalnum() or len(keyword) > 8:
            return None
        name = "pop3_" + keyword.decode("ascii") if keyword.isascii() else ""
        if self.state == AUTHORIZATION:
            allowed = self.authorization_commands()
        else:
            allowed = self.transaction_commands()
        if keyword not in allowed:
            return None
        return getattr(self, name, None)

    def authorization_commands(self) -> set[bytes]:
        return {b"CAPA", b"USER", b"PASS", b"QUIT", b"AUTH", b"STLS", b"UTF8", b"APOP"
                } | self.language_commands()

    def transaction_commands(self) -> set[bytes]:
        commands = {b"CAPA", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET",
                    b"TOP", b"UIDL", b"QUIT"}
        if self.settings.enable_last:
            commands.add(b"LAST")
        return commands | self.language_commands()

    def _bad_command(self, text: bytes, code: bytes | None = None) -> None:
        """
        Refuse a bad command; too many in a row close the connection, as in
        Dovecot: before login the C{max_login_bad_commands}th, after login
        the one after C{max_bad_commands}.  Any good command resets the count.
        """
        self._bad_commands += 1
        self.transport.write(r.err(text, code))
        if self.state == AUTHORIZATION:
            if self._bad_commands >= self.settings.max_login_bad_commands:
                self.report.ending("too-many-bad-commands")
                self.transport.write(r.err(self._("Too many invalid bad commands.")))
                self._close()
        elif self._bad_commands > self.settings.max_bad_commands:
            self.report.ending("too-many-bad-commands")
            self.transport.write(r.err(self._("Too many bad commands.")))
            self._close()

    def capabilities(self) -> list[bytes]:
        """The CAPA lines for the current state of this session."""
        caps = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == AUTHORIZATION:
            caps.extend(self.authorization_capabilities())
        caps.extend(self.language_capabilities())
        caps.extend(policy_capabilities(self.settings, self.portal,
                                        None if self.state == AUTHORIZATION else self.policy))
        if self.settings.implementation:
            implementation = self.settings.implementation.encode("ascii", "replace")
            caps.append(b"IMPLEMENTATION " + implementation)
        return caps

    #: The CAPA replies this session sent, by what they depend on (the
    #: state, TLS, the language; the rest is fixed for a session): a
    #: client repeating CAPA, or flooding it, costs a dict lookup each.
    _capa_replies: dict[tuple[str, bool, str], bytes] | None = None

    def pop3_CAPA(self, argument: bytes) -> None:
        key = (self.state, self.tls_active(), self.language.tag)
        if self._capa_replies is None:
            self._capa_replies = {}
        reply = self._capa_replies.get(key)
        if reply is None:
            reply = r.multiline(self._("Capability list follows"), self.capabilities())
            self._capa_replies[key] = reply
        self.transport.write(reply)
