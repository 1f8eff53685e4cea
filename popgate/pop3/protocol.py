"""
The POP3 server protocol (RFC 1939, RFC 2449): one instance per connection.

Commands are answered strictly in order.  A command whose answer takes
time (a login, a RETR being streamed, QUIT waiting for deletions to be
durable) pauses line processing and reading from the socket until it is
done, so pipelined input waits in the kernel, not in our memory.

Security: STLS (RFC 2595) discards everything the client sent after the
command before TLS starts (the CVE-2011-0411 class of injection), and
plaintext passwords (USER/PASS, SASL PLAIN and LOGIN) are refused on a
connection that is neither TLS nor from a trusted network, as Dovecot does.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from typing import Any, Callable

from twisted.cred import error as cred_error
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.cred.penalty import PenaltyQueueFull
from popgate.interfaces import IMaildrop
from popgate.pop3 import responses as r
from popgate.pop3 import sasl
from popgate.pop3.apop import APOPCredentials
from popgate.pop3.encoder import MessageEncoder
from popgate.pop3.output import CHUNK_SIZE, MessageSender, OutputGate

_AUTHORIZATION = "AUTHORIZATION"
_TRANSACTION = "TRANSACTION"
_UPDATE = "UPDATE"

# Message numbers are 32-bit and TOP line counts 64-bit, as in Dovecot:
# larger values are an error, not "all lines".
_MAX_MESSAGE_NUMBER = 2**32 - 1
_MAX_LINE_COUNT = 2**64 - 1
_CHUNK_SIZE = CHUNK_SIZE
# Input kept while a command is in progress before reading is paused.
_READ_AHEAD = 64 * 1024
# Pipelined commands run in one go before the other sessions get a turn.
_LINES_PER_TURN = 200

_PLAINTEXT_REFUSED = r.err(
    b"Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", r.AUTH)


@functools.lru_cache(maxsize=16)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in spec)


def peer_is_trusted(peer: Any, networks: tuple[str, ...]) -> bool:
    """
    Whether a connection from C{peer} counts as secure without TLS: a UNIX
    socket, or an address in C{networks} (IPv4-mapped IPv6 addresses count
    as their IPv4 address).  Behind C{haproxy:} endpoints C{peer} is the
    real client.
    """
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(tuple(networks)))


def _describe(failure: Failure) -> str:
    """One line for an expected error: the OS's words where there are some."""
    value = failure.value
    if isinstance(value, OSError) and value.strerror:
        where = f" ({value.filename})" if value.filename else ""
        return f"{value.strerror}{where}"
    return failure.getErrorMessage()


class _BadArgument(Exception):
    """A command argument that gets C{-ERR}; the text is safe to send."""

    def __init__(self, text: str, code: bytes | None = None) -> None:
        super().__init__(text)
        self.code = code


_DIGITS = re.compile(rb"[0-9]+")
_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")


@implementer(IHalfCloseableProtocol)
class POP3ServerProtocol(LineReceiver, TimeoutMixin):
    """
    One POP3 session.  The factory gives it C{portal}, C{settings} and a
    C{clock}; nothing here reaches for the global reactor.
    """

    delimiter = b"\r\n"
    log = Logger()
    # A shared popgate.cred.penalty.LoginPenalty, set by the factory.
    penalty: Any = None
    # The popgate.tls.ServerTLS for STLS, set by the factory; None: no TLS.
    tls: Any = None

    def __init__(self, portal: Any, settings: Any, clock: Any) -> None:
        self.portal = portal
        self.settings = settings
        self.clock = clock
        self.state = _AUTHORIZATION
        self.maildrop: Any = None
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
        self._login_timer: Any = None
        self._next_turn: Any = None
        self._pending_login: defer.Deferred[Any] | None = None
        self._bad_commands = 0
        self._auth_failures = 0
        self._user: bytes | None = None
        self._challenge = b""
        self._sasl: Any = None
        self._tls_started = False
        self.utf8 = False
        self._disconnected = False
        self._committed = False
        self._updating = False
        self._logout: Callable[[], object] | None = None
        self._messages: list[Any] = []
        self._deleted: bytearray = bytearray()
        self._live_count = 0
        self._live_size = 0
        # Full LIST and UIDL replies, until a DELE or RSET changes them.
        self._listings: dict[bytes, bytes] = {}

    # -- TimeoutMixin uses our injected clock, never the global reactor.
    def callLater(self, period: float, func: Callable[[], object]) -> Any:  # type: ignore[override]
        return self.clock.callLater(period, func)

    # -- connection life cycle

    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        self.transport.registerProducer(self._gate, True)
        self._gate_registered = True
        self.setTimeout(self.settings.idle_timeout)
        if self.settings.login_timeout:
            self._login_timer = self.clock.callLater(self.settings.login_timeout,
                                                     self._login_timed_out)
        greeting = self.settings.greeting.encode("utf-8", "replace")
        if self._secrets_checkable():
            self._challenge = b"<%d.%d.%d@%s>" % (
                os.getpid(), id(self) & 0xFFFFFF, int(self.clock.seconds() * 1000),
                self.settings.hostname.encode("idna"),
            )
            greeting += b" " + self._challenge
        self.transport.write(r.ok(greeting))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._disconnected = True
        self.setTimeout(None)
        self._cancel_login_timer()
        turn, self._next_turn = self._next_turn, None
        if turn is not None and turn.active():
            turn.cancel()
        pending, self._pending_login = self._pending_login, None
        if pending is not None and not pending.called:
            # Queued behind the login penalty: leave the queue.  A check
            # already running finishes; its maildrop is given back.
            pending.cancel()
        self._release()

    def readConnectionLost(self) -> None:
        """
        The client shut down its sending side (C{nc -N}, scripts): answer
        every complete command it sent, QUIT included, then close.
        """
        self._read_closed = True
        self._reading_paused = False
        if (self._pending_login is not None and self.penalty is not None
                and self.penalty.penalty(self.peer_ip()) > 0):
            # A login waiting out its address's penalty: the end of input
            # here is a guesser giving up (a close looks the same as a
            # half-close).  Leaving the queue keeps its place from being
            # checked after all.
            self.log.info("client left while its login waited for the penalty")
            self.transport.abortConnection()
            return
        self.dataReceived(b"")

    def writeConnectionLost(self) -> None:
        self._close()

    def timeoutConnection(self) -> None:
        if self.paused or self._gate.blocked:
            # A command is still running or the client stopped reading its
            # answers: an -ERR would land inside a reply, and
            # loseConnection would wait for the full buffer forever,
            # keeping the maildrop locked.  Drop the connection, as
            # Dovecot does.
            self.log.info("closing session stuck in a command or not reading")
            self.transport.abortConnection()
            return
        self.log.info("closing idle session")
        self.transport.write(r.err(b"Disconnected for inactivity."))
        self._close()

    def _login_timed_out(self) -> None:
        """No login within C{login_timeout}: CAPA or NOOP do not extend it."""
        self._login_timer = None
        if self._disconnected or self.state != _AUTHORIZATION:
            return
        self.log.info("closing session: no login within {seconds:g} s",
                      seconds=self.settings.login_timeout)
        if self.paused or self._gate.blocked:
            self.transport.abortConnection()
            return
        self.transport.write(r.err(b"Disconnected: no login in time."))
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

    def _cancel_login_timer(self) -> None:
        timer, self._login_timer = self._login_timer, None
        if timer is not None and timer.active():
            timer.cancel()

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

    # -- back-pressure (popgate.pop3.output)

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
        Stop reading from the socket once more than C{_READ_AHEAD} octets of
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
                and len(self._buffer) - self._pos > _READ_AHEAD)
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

    # -- line framing

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
                if handled == _LINES_PER_TURN:
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
                and not self._disconnected and self.state != _UPDATE
                and not self.transport.disconnecting):
            # Half-closed and every complete command answered: the client
            # has left without QUIT, so nothing is deleted.
            self.log.info("client closed its side without QUIT")
            self._close()

    def clearLineBuffer(self) -> bytes:
        buf = self._buffer[self._pos:]
        self._buffer, self._pos = b"", 0
        return buf

    def line_limit(self) -> int:
        """
        The longest line accepted now, CRLF included (Dovecot's limits):
        before login C{max_login_line_length}, longer in a SASL exchange and
        for C{AUTH} with an initial response (clients do not all keep to
        RFC 5034's 255 octets), after login C{max_line_length}.
        """
        settings = self.settings
        if self.state != _AUTHORIZATION:
            return settings.max_line_length
        if self._sasl is not None or self._buffer[self._pos:self._pos + 5].upper() == b"AUTH ":
            return max(settings.max_sasl_line_length, settings.max_login_line_length)
        return settings.max_login_line_length

    def _line_too_long(self) -> None:
        self._sasl = None
        self._buffer, self._pos = b"", 0
        self.transport.write(r.err(b"Input line too long."))
        self._close()

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self.state == _UPDATE:
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
            self._bad_command(b"Unknown command.")
            return
        if self.state != _AUTHORIZATION:
            argument = argument.lstrip(b" ")
        try:
            result = handler(argument)
        except _BadArgument as e:
            text = str(e).encode("ascii", "replace")
            if self.state == _AUTHORIZATION:
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

    def _handler(self, keyword: bytes) -> Callable[[bytes], Any] | None:
        if not keyword.isalnum() or len(keyword) > 8:
            return None
        name = "pop3_" + keyword.decode("ascii") if keyword.isascii() else ""
        if self.state == _AUTHORIZATION:
            allowed = self.authorization_commands()
        else:
            allowed = self.transaction_commands()
        if keyword not in allowed:
            return None
        return getattr(self, name, None)

    def authorization_commands(self) -> set[bytes]:
        return {b"CAPA", b"USER", b"PASS", b"QUIT", b"AUTH", b"STLS", b"UTF8", b"APOP"}

    def transaction_commands(self) -> set[bytes]:
        return {b"CAPA", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET",
                b"TOP", b"UIDL", b"QUIT"}

    def _bad_command(self, text: bytes, code: bytes | None = None) -> None:
        """
        Refuse a bad command; too many in a row close the connection, as in
        Dovecot: before login the C{max_login_bad_commands}th, after login
        the one after C{max_bad_commands}.  Any good command resets the count.
        """
        self._bad_commands += 1
        self.transport.write(r.err(text, code))
        if self.state == _AUTHORIZATION:
            if self._bad_commands >= self.settings.max_login_bad_commands:
                self.transport.write(r.err(b"Too many invalid bad commands."))
                self._close()
        elif self._bad_commands > self.settings.max_bad_commands:
            self.transport.write(r.err(b"Too many bad commands."))
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
            if self._disconnected or self.state == _UPDATE or self.transport.disconnecting:
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

    # -- capabilities

    def capabilities(self) -> list[bytes]:
        """The CAPA lines for the current state of this session."""
        caps = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == _AUTHORIZATION:
            caps.extend(self.authorization_capabilities())
        if self.settings.implementation:
            caps.append(b"IMPLEMENTATION " + self.settings.implementation.encode("ascii", "replace"))
        return caps

    def authorization_capabilities(self) -> list[bytes]:
        """What a client may do before login, on this connection: STLS until
        TLS is on, USER and the plaintext SASL mechanisms only where
        plaintext passwords are allowed (Dovecot's rules)."""
        caps = []
        if self._stls_available():
            caps.append(b"STLS")
        if self.plaintext_allowed():
            caps.append(b"USER")
        mechanisms = self._usable_mechanisms()
        if mechanisms:
            caps.append(b"SASL " + b" ".join(m.name for m in mechanisms))
        caps.append(b"UTF8")
        return caps

    def pop3_CAPA(self, argument: bytes) -> None:
        self.transport.write(r.multiline(b"Capability list follows", self.capabilities()))

    # -- connection security

    def tls_active(self) -> bool:
        """Whether this connection is TLS: POP3S, or after STLS."""
        return self._tls_started or ISSLTransport.providedBy(self.transport)

    def is_secure(self) -> bool:
        """TLS, or a client in the trusted networks (loopback by default)."""
        return self.tls_active() or peer_is_trusted(self.transport.getPeer(),
                                                    self.settings.trusted_networks)

    def plaintext_allowed(self) -> bool:
        """Whether a password may be sent as is (USER/PASS, PLAIN, LOGIN)."""
        return self.settings.allow_plaintext_auth or self.is_secure()

    def _stls_available(self) -> bool:
        return (self.tls is not None and not self.tls_active()
                and getattr(self.transport, "startTLS", None) is not None)

    def pop3_STLS(self, argument: bytes) -> None:
        if self.tls_active():
            self.transport.write(r.err(b"TLS is already active."))
            return
        if not self._stls_available():
            self.transport.write(r.err(b"TLS support isn't enabled."))
            return
        # Whatever the client sent after STLS arrived in plaintext and must
        # not be run as if it came over TLS (CVE-2011-0411): drop it.
        self.clearLineBuffer()
        self.transport.write(r.ok(b"Begin TLS negotiation now."))
        self.transport.startTLS(self.tls)
        self._tls_started = True
        # RFC 2595 section 4: forget what the client said before.
        self._user = None
        self.utf8 = False

    def pop3_UTF8(self, argument: bytes) -> None:
        # RFC 6856: user names and passwords are UTF-8 from now on; popgate
        # passes them to the user stores as bytes either way.
        self.utf8 = True
        self.transport.write(r.ok(b"UTF8 enabled."))

    # -- AUTHORIZATION

    def pop3_USER(self, argument: bytes) -> None:
        if not self.plaintext_allowed():
            self.transport.write(_PLAINTEXT_REFUSED)
            return
        # As Dovecot: the name is the rest of the line, as it is (an empty
        # or wrong one fails at PASS, like an unknown user).
        self._user = argument
        self.transport.write(r.ok())

    def pop3_PASS(self, argument: bytes) -> defer.Deferred[None] | None:
        # RFC 1939: the password is the rest of the line, spaces included.
        if not self.plaintext_allowed():
            self.transport.write(_PLAINTEXT_REFUSED)
            return None
        if self._user is None:
            raise _BadArgument("No username given.")
        user, self._user = self._user, None
        return self.login(UsernamePassword(user, argument))

    def pop3_APOP(self, argument: bytes) -> defer.Deferred[None] | None:
        if not self._challenge:
            raise _BadArgument("APOP not enabled.")
        # "APOP name digest": the digest is 32 hex digits (Dovecot's checks).
        user, sep, digest = argument.partition(b" ")
        if not sep or len(digest) != 32:
            raise _BadArgument("Invalid parameters.")
        if not _HEX_DIGEST.fullmatch(digest):
            raise _BadArgument("Invalid characters in MD5 response.")
        return self.login(APOPCredentials(self._challenge, user, digest))

    # -- SASL (RFC 5034)

    def _usable_mechanisms(self) -> list[sasl.MechanismInfo]:
        return sasl.usable(self.plaintext_allowed(), self._secrets_checkable())

    def pop3_AUTH(self, argument: bytes) -> defer.Deferred[None] | None:
        # "AUTH mechanism [initial-response]", spaces as Dovecot takes them
        # (extra ones ignored); its errors carry [AUTH].
        words = [w for w in argument.split(b" ") if w]
        if not words:
            # Not in RFC 5034: the old discovery Outlook uses (and Dovecot
            # and Twisted answer) -- the usable mechanisms, one a line.
            names = [m.name for m in self._usable_mechanisms()]
            self.transport.write(r.multiline(b"", names))
            return None
        if len(words) > 2:
            raise _BadArgument("Invalid parameters.", r.AUTH)
        info = sasl.find(words[0])
        if info is None or (info.needs_secret and not self._secrets_checkable()):
            raise _BadArgument("Unsupported authentication mechanism.", r.AUTH)
        if info.plaintext and not self.plaintext_allowed():
            self.transport.write(_PLAINTEXT_REFUSED)
            return None
        response = None
        if len(words) == 2:
            try:
                response = sasl.decode(words[1])
            except sasl.MalformedResponse:
                raise _BadArgument("Invalid base64 data in initial response.", r.AUTH) from None
        mechanism = info.make(self.settings.hostname, self.clock.seconds())
        return self._sasl_step(mechanism, response)

    def _sasl_response(self, line: bytes) -> defer.Deferred[None] | None:
        """One client line inside a SASL exchange (never logged)."""
        mechanism, self._sasl = self._sasl, None
        line = line.strip()
        if line == b"*":
            self.transport.write(r.err(b"Authentication aborted by client."))
            return None
        try:
            response = sasl.decode(line)
        except sasl.MalformedResponse:
            self.transport.write(r.err(b"Invalid base64 data in continued response.", r.AUTH))
            return None
        return self._sasl_step(mechanism, response)

    def _sasl_step(self, mechanism: Any, response: bytes | None) -> defer.Deferred[None] | None:
        try:
            result = mechanism.step(response)
        except sasl.SASLError:
            # Broken or refused credentials: a failed login like any other
            # (penalty, delay, attempt limit), without asking the portal.
            if self.penalty is None:
                return self._login_failed(Failure(cred_error.UnauthorizedLogin()))
            return self.login(None)
        if isinstance(result, sasl.Challenge):
            self._sasl = mechanism
            self.transport.write(b"+ " + sasl.encode(result.data) + b"\r\n")
            return None
        return self.login(result)

    def peer_ip(self) -> str:
        """The client's address, for the per-IP login penalty."""
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def login(self, credentials: Any) -> defer.Deferred[None]:
        """
        Run C{credentials} through the portal and enter TRANSACTION.  With a
        login penalty, the check waits its turn: one check at a time per
        client address, each after that address's penalty.  C{None}: a
        broken SASL exchange, a failed login that still waits its turn.
        """
        def check() -> defer.Deferred[Any]:
            if credentials is None:
                return defer.fail(cred_error.UnauthorizedLogin())
            d = self.portal.login(credentials, None, IMaildrop)
            d.addCallback(self._give_back_if_gone)
            return d

        if self.penalty is None:
            d = check()
        else:
            username = getattr(credentials, "username", b"") or b""
            local, at, domain = username.rpartition(b"@")
            if at:  # domains are case-insensitive (popgate.cred.names)
                username = local + at + domain.lower()
            secret = getattr(credentials, "password", None) \
                if IUsernamePassword.providedBy(credentials) else None
            d = self.penalty.attempt(self.peer_ip(), username, secret, check)
            if not d.called:
                self._pending_login = d
        d.addBoth(self._login_done)
        d.addCallbacks(self._logged_in, self._login_failed)
        return d

    def _login_done(self, result: Any) -> Any:
        self._pending_login = None
        return result

    def _give_back_if_gone(self, result: tuple[Any, Any, Callable[[], object]]) -> Any:
        """A session that left while its login ran gives the maildrop back
        at once, even if nobody waits for the result any more."""
        if self._disconnected:
            _, maildrop, logout = result
            defer.maybeDeferred(maildrop.close).addErrback(
                lambda f: self.log.failure("closing maildrop", f))
            logout()
            raise defer.CancelledError("the client left during the login")
        return result

    def _logged_in(self, result: tuple[Any, Any, Callable[[], object]]) -> None:
        _, maildrop, logout = result
        self.maildrop = maildrop
        self._logout = logout
        if self._disconnected:
            self._release()
            return
        self._cancel_login_timer()
        self._messages = list(maildrop.list_messages())
        self._deleted = bytearray(len(self._messages))
        self._live_count = len(self._messages)
        self._live_size = sum(m.size for m in self._messages)
        self.state = _TRANSACTION
        self._bad_commands = 0
        self.transport.write(r.ok(b"Logged in."))

    def _login_failed(self, failure: Failure) -> defer.Deferred[None] | None:
        if self._disconnected:
            return None
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials,
                         cred_error.LoginDenied):
            self._auth_failures += 1
            last = self._auth_failures >= self.settings.max_auth_failures
            return self._after_delay(self.settings.auth_failure_delay,
                                     r.err(b"Authentication failed.", r.AUTH), close=last)
        if failure.check(PenaltyQueueFull):
            self.log.info("refusing login from {ip}: too many logins waiting from that address",
                          ip=self.peer_ip())
            self._send_and_close(r.err(b"Too many logins in progress from your address.",
                                       r.SYS_TEMP))
            return None
        if failure.check(defer.CancelledError):
            return None
        if failure.check(errors.MaildropInUse):
            reply = r.err(b"Mailbox is locked by another POP3 session.", r.IN_USE)
        elif failure.check(errors.PermanentFailure):
            # A refused user name, a mailbox that is not one: expected, and
            # the message says which.
            self.log.error("login refused: mailbox cannot be opened: {why}",
                           why=failure.getErrorMessage())
            reply = r.err(b"Mailbox cannot be opened.", r.SYS_PERM)
        else:
            if not failure.check(errors.TemporaryFailure):
                self.log.failure("login failed", failure)
            else:
                self.log.warn("temporary login failure: {why}", why=failure.getErrorMessage())
            reply = r.err(b"Temporary server failure, try again later.", r.SYS_TEMP)
        self.transport.write(reply)
        return None

    def _after_delay(self, delay: float, reply: bytes, close: bool) -> defer.Deferred[None]:
        def send() -> None:
            if self._disconnected:
                return
            self.transport.write(reply)
            if close:
                self._close()

        return deferLater(self.clock, delay, send)

    def _secrets_checkable(self) -> bool:
        """Whether the user stores can check a proof of the secret (APOP,
        CRAM-MD5): a checker for C{IUsernameHashedPassword} is registered."""
        interfaces = getattr(self.portal, "listCredentialsInterfaces", lambda: [])()
        return IUsernameHashedPassword in interfaces

    # -- QUIT, in both states

    def pop3_QUIT(self, argument: bytes) -> defer.Deferred[None] | None:
        if self.state == _AUTHORIZATION:
            self.transport.write(r.ok(b"Logging out."))
            self._close()
            return None
        self.state = _UPDATE
        deleted = [i for i, flag in enumerate(self._deleted) if flag]
        self._committed = True
        self._updating = True
        d = defer.maybeDeferred(self.maildrop.commit, deleted)

        def updated(result: object) -> object:
            self._updating = False
            if self._disconnected:
                self._release()
            return result

        def done(_: object) -> None:
            text = b"Logging out, messages deleted." if deleted else b"Logging out."
            self._send_and_close(r.ok(text))

        def failed(failure: Failure) -> None:
            if failure.check(OSError, errors.TemporaryFailure, errors.PermanentFailure):
                # Disk full, a read-only file system, a store gone away:
                # nothing was lost, and one line says why.
                self.log.error("UPDATE failed, nothing deleted: {why}", why=_describe(failure))
            else:
                self.log.failure("UPDATE failed", failure)
            self._send_and_close(r.err(b"Some deleted messages were not removed.", r.SYS_TEMP))

        d.addBoth(updated)
        d.addCallbacks(done, failed)
        return d

    def _send_and_close(self, reply: bytes) -> None:
        if not self._disconnected:
            self.transport.write(reply)
            self._close()

    # -- TRANSACTION

    def _message_number(self, argument: bytes, then_space: bool = False) -> tuple[int, bytes]:
        """
        Parse a message number naming a live message, as Dovecot does:
        digits (a 32-bit number), then the end of the line -- or, with
        C{then_space}, a space and more arguments.  Return its index and
        what follows, spaces skipped.
        """
        match = _DIGITS.match(argument)
        if match is None:
            raise _BadArgument("Invalid message number.")
        number = int(match.group())
        if number > _MAX_MESSAGE_NUMBER:
            raise _BadArgument("Message number too large.")
        rest = argument[match.end():]
        if rest[:1] != (b" " if then_space else b""):
            raise _BadArgument("Noise after message number.")
        if number < 1 or number > len(self._messages):
            raise _BadArgument("There's no message %d." % number)
        index = number - 1
        if self._deleted[index]:
            raise _BadArgument("Message is deleted.")
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
            lines = [b"%d %d" % (i + 1, m.size) for i, m in enumerate(self._messages) if not deleted[i]]
            reply = self._listings[b"LIST"] = r.multiline(b"%d messages:" % self._live_count, lines)
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
            lines = [b"%d %s" % (i + 1, m.uid) for i, m in enumerate(self._messages) if not deleted[i]]
            reply = self._listings[b"UIDL"] = r.multiline(b"", lines)
        self.transport.write(reply)

    def pop3_DELE(self, argument: bytes) -> None:
        index, _ = self._message_number(argument)
        self._deleted[index] = 1
        self._live_count -= 1
        self._live_size -= self._messages[index].size
        self._listings.clear()
        self.transport.write(r.ok(b"Marked to be deleted."))

    def pop3_RSET(self, argument: bytes) -> None:
        self._deleted = bytearray(len(self._messages))
        self._live_count = len(self._messages)
        self._live_size = sum(m.size for m in self._messages)
        self._listings.clear()
        self.transport.write(r.ok())

    def pop3_RETR(self, argument: bytes) -> defer.Deferred[None]:
        index, _ = self._message_number(argument)
        first = r.ok(b"%d octets" % self._messages[index].size)
        return self._send_message(index, first, None)

    def pop3_TOP(self, argument: bytes) -> defer.Deferred[None]:
        # "TOP msg n": n is a 64-bit count; more is an error, as in Dovecot.
        index, lines = self._message_number(argument, then_space=True)
        match = _DIGITS.match(lines)
        if match is None:
            raise _BadArgument("Invalid size.")
        count = int(match.group())
        if count > _MAX_LINE_COUNT:
            raise _BadArgument("Size too large.")
        if match.end() != len(lines):
            raise _BadArgument("Noise after size.")
        return self._send_message(index, r.ok(), count)

    def _send_message(self, index: int, first: bytes, body_lines: int | None) -> defer.Deferred[None]:
        d = defer.maybeDeferred(self.maildrop.open_message, index)

        def opened(source: Any) -> defer.Deferred[None] | None:
            if self._disconnected:
                source.close()
                return None
            sender = MessageSender(self._gate, source, MessageEncoder(body_lines),
                                   self.transport.write, self.resetTimeout)
            return sender.start(first)

        def failed(failure: Failure) -> None:
            if self._disconnected:
                return
            if failure.check(errors.PermanentFailure, FileNotFoundError):
                self.log.warn("message {n} vanished: {why}", n=index + 1, why=failure.getErrorMessage())
                self.transport.write(r.err(b"Message is no longer available.", r.SYS_PERM))
            elif failure.check(errors.TemporaryFailure, OSError):
                self.log.warn("cannot open message {n}: {why}", n=index + 1, why=_describe(failure))
                self.transport.write(r.err(b"Temporary failure reading the message.", r.SYS_TEMP))
            else:
                self.log.failure("reading message {n}", failure, n=index + 1)
                self.transport.write(r.err(b"Temporary failure reading the message.", r.SYS_TEMP))

        def sent_or_failed(result: object) -> None:
            # A failure after the +OK line was sent cannot become an -ERR:
            # the only honest thing left is to drop the connection, and to
            # run none of the commands pipelined after this one (a TCP
            # transport stops its producer before connectionLost, so
            # "RETR 1, DELE 1, QUIT" must not go on to delete).
            if isinstance(result, Failure) and not self._disconnected:
                self._disconnected = True
                if result.check(ConnectionLost):
                    self.log.info("connection lost while sending message {n}", n=index + 1)
                elif result.check(OSError, errors.TemporaryFailure):
                    self.log.error("reading message {n} failed while sending it: {why}",
                                   n=index + 1, why=_describe(result))
                else:
                    self.log.failure("sending message {n}", result, n=index + 1)
                self.transport.abortConnection()

        d.addCallbacks(opened, failed)
        d.addErrback(lambda f: sent_or_failed(f))
        return d

