"""
The AUTHORIZATION state of a POP3 session: USER/PASS, APOP, AUTH (SASL,
RFC 5034), STLS, UTF8, and the way to a maildrop through the portal.

Security: STLS (RFC 2595) discards everything the client sent after the
command before TLS starts (the CVE-2011-0411 class of injection), and
plaintext passwords (USER/PASS, SASL PLAIN and LOGIN) are refused on a
connection that is neither TLS nor from a trusted network, as Dovecot does.
Every login goes through the login penalty (L{popgate.cred.penalty}): one
check at a time per client address, after that address's penalty.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.cred import error as cred_error
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate import errors
from popgate.addresses import client_address
from popgate.cred.penalty import PenaltyQueueFull
from popgate.i18n.text import I_DEFAULT, N_
from popgate.interfaces import (
    IMaildrop,
    IOAuthCredentials,
    IScramCredentials,
    IScramLookup,
    IStreamTransport,
)
from popgate.pop3 import responses as r
from popgate.pop3 import sasl
from popgate.pop3.apop import APOPCredentials
from popgate.pop3.base import AUTHORIZATION, TRANSACTION, BadArgument
from popgate.pop3.language import Localized
from popgate.pop3.policy import defaults
from popgate.pop3.scram import KeysWanted
from popgate.pop3.session_log import BadSASL, LoginMind, SessionLog

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from popgate.pop3.output import OutputGate
    from popgate.pop3.settings import SessionSettings

_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")

_PLAINTEXT_REFUSED = N_(
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")


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
    return _host_trusted(host, tuple(networks))


@functools.lru_cache(maxsize=4096)
def _host_trusted(host: str, networks: tuple[str, ...]) -> bool:
    """Cached: a login asks twice (USER, PASS), and parsing an address
    costs more than the lookup."""
    address = client_address(host)
    if address is None:
        return False
    return any(address in network for network in _networks(networks))


class _Attempt:
    """One login in progress: its mind, when it started and when its check
    started (after the penalty's wait), for the log."""

    def __init__(self, mind: LoginMind, started: float) -> None:
        self.mind = mind
        self.started = started
        self.checked: float | None = None
        # The mechanism's error challenge for refused credentials (RFC
        # 7628's JSON), sent before the -ERR.
        self.failure_data: Callable[[], bytes] | None = None


class _FailureAcknowledgement:
    """A refused OAuth login sent its error challenge: the client's answer
    (RFC 7628: 0x01) is awaited before the C{-ERR}."""

    def __init__(self, reply: bytes, close: bool) -> None:
        self.reply = reply
        self.close = close


class _Acknowledgement:
    """The portal accepted a SASL login whose mechanism has a last word:
    the client's answer to it is awaited."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt


class AuthorizationCommands(Localized):
    """
    The AUTHORIZATION commands of L{popgate.pop3.protocol.POP3ServerProtocol}
    (a mixin: it works on the session's transport, portal and settings).
    """

    log = Logger()
    # A shared popgate.cred.penalty.LoginPenalty, set by the factory.
    penalty: Any = None
    # The popgate.tls.ServerTLS for STLS, set by the factory; None: no TLS.
    tls: Any = None
    portal: Any
    settings: SessionSettings
    clock: IReactorTime
    state: str
    transport: IStreamTransport
    maildrop: Any
    paused: bool
    _gate: OutputGate
    _disconnected: bool
    _bad_commands: int
    _logout: Callable[[], object] | None
    _live_count: int
    _live_size: int
    report: SessionLog

    if TYPE_CHECKING:
        # What the other parts of the session (framing, transaction) do.
        def _close(self) -> None: ...
        def clearLineBuffer(self) -> bytes: ...
        def _release(self) -> None: ...
        def _enter_transaction(self, maildrop: Any) -> None: ...
        def _enter_policy(self, policy: Any) -> None: ...
        def _send_and_close(self, reply: bytes) -> None: ...

    def _init_authorization(self) -> None:
        self._login_timer: Any = None
        self._pending_login: defer.Deferred[Any] | None = None
        self._auth_failures = 0
        self._user: bytes | None = None
        self._challenge = b""
        self._sasl: Any = None
        self._tls_started = False
        # TLS started and no line came over it yet: a connection lost now
        # with a TLS error is a failed handshake.
        self._tls_pending = False
        self._sasl_method = ""
        self.utf8 = False

    def _start_login_timer(self) -> None:
        if self.settings.login_timeout:
            self._login_timer = self.clock.callLater(self.settings.login_timeout,
                                                     self._login_timed_out)

    def _stop_authorization(self) -> None:
        """At disconnect: no timer, and a login queued behind the penalty
        leaves the queue (a check already running finishes; its maildrop is
        given back)."""
        self._cancel_login_timer()
        pending, self._pending_login = self._pending_login, None
        if pending is not None and not pending.called:
            pending.cancel()

    def _abandoned_login(self) -> bool:
        """Whether a login waits out its address's penalty: the end of input
        then is a guesser giving up (a close looks the same as a
        half-close), and leaving the queue keeps it from being checked."""
        return (self._pending_login is not None and self.penalty is not None
                and self.penalty.penalty(self.peer_ip()) > 0)

    def _login_timed_out(self) -> None:
        """No login within C{login_timeout}: CAPA or NOOP do not extend it."""
        self._login_timer = None
        if self._disconnected or self.state != AUTHORIZATION:
            return
        self.report.ending("login-timeout")
        if self.paused or self._gate.blocked:
            self.transport.abortConnection()
            return
        self.transport.write(r.err(self._("Disconnected: no login in time.")))
        self._close()

    def _cancel_login_timer(self) -> None:
        timer, self._login_timer = self._login_timer, None
        if timer is not None and timer.active():
            timer.cancel()

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
            self.transport.write(r.err(self._("TLS is already active.")))
            return
        if not self._stls_available():
            self.transport.write(r.err(self._("TLS support isn't enabled.")))
            return
        # Whatever the client sent after STLS arrived in plaintext and must
        # not be run as if it came over TLS (CVE-2011-0411): drop it.
        self.clearLineBuffer()
        self.transport.write(r.ok(self._("Begin TLS negotiation now.")))
        # _stls_available checked that this transport has startTLS.
        cast(ITLSTransport, self.transport).startTLS(self.tls)
        self._tls_started = True
        self._tls_pending = True
        # RFC 2595 section 4: forget what the client said before.
        self._user = None
        self.utf8 = False
        self.language = I_DEFAULT

    def pop3_UTF8(self, argument: bytes) -> None:
        # RFC 6856: user names and passwords are UTF-8 from now on; popgate
        # passes them to the user stores as bytes either way.
        self.utf8 = True
        self.transport.write(r.ok(self._("UTF8 enabled.")))

    def pop3_USER(self, argument: bytes) -> None:
        if not self.plaintext_allowed():
            self.transport.write(r.err(self._(_PLAINTEXT_REFUSED), r.AUTH))
            return
        # As Dovecot: the name is the rest of the line, as it is (an empty
        # or wrong one fails at PASS, like an unknown user).
        self._user = argument
        self.transport.write(r.ok())

    def pop3_PASS(self, argument: bytes) -> defer.Deferred[None] | None:
        # RFC 1939: the password is the rest of the line, spaces included.
        if not self.plaintext_allowed():
            self._refused("USER", self._user, "plaintext-disallowed")
            self.transport.write(r.err(self._(_PLAINTEXT_REFUSED), r.AUTH))
            return None
        if self._user is None:
            raise BadArgument("No username given.")
        user, self._user = self._user, None
        return self.login(UsernamePassword(user, argument), "USER")

    def pop3_APOP(self, argument: bytes) -> defer.Deferred[None] | None:
        if not self._challenge:
            raise BadArgument("APOP not enabled.")
        # "APOP name digest": the digest is 32 hex digits (Dovecot's checks).
        user, sep, digest = argument.partition(b" ")
        if not sep or len(digest) != 32:
            raise BadArgument("Invalid parameters.")
        if not _HEX_DIGEST.fullmatch(digest):
            raise BadArgument("Invalid characters in MD5 response.")
        return self.login(APOPCredentials(self._challenge, user, digest), "APOP")

    def _usable_mechanisms(self) -> list[sasl.MechanismInfo]:
        return sasl.usable(self.plaintext_allowed(), self._secrets_checkable(),
                           self._scram_mechanisms(), self.tls_active() and self._oauth_configured())

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
            raise BadArgument("Invalid parameters.", r.AUTH)
        info = sasl.find(words[0])
        if info is None or (info.needs_secret and not self._secrets_checkable()) or (
                info.needs_scram and info.name.decode("ascii") not in self._scram_mechanisms()) or (
                info.needs_oauth and not self._oauth_configured()):
            raise BadArgument("Unsupported authentication mechanism.", r.AUTH)
        self._sasl_method = info.name.decode("ascii")
        if info.needs_oauth and not self.tls_active():
            # A bearer token is a password for as long as it lives: TLS
            # only, whatever the network (RFC 7628 section 5).
            self._refused(self._sasl_method, None, "plaintext-disallowed")
            self.transport.write(r.err(self._(_PLAINTEXT_REFUSED), r.AUTH))
            return None
        if info.plaintext and not self.plaintext_allowed():
            self._refused(self._sasl_method, None, "plaintext-disallowed")
            self.transport.write(r.err(self._(_PLAINTEXT_REFUSED), r.AUTH))
            return None
        response = None
        if len(words) == 2:
            try:
                response = sasl.decode(words[1])
            except sasl.MalformedResponse:
                self._refused(self._sasl_method, None, "bad-sasl")
                raise BadArgument("Invalid base64 data in initial response.", r.AUTH) from None
        mechanism = info.make(self.settings.hostname, self.clock.seconds())
        return self._sasl_step(mechanism, response)

    def _sasl_response(self, line: bytes) -> defer.Deferred[None] | None:
        """One client line inside a SASL exchange (never logged)."""
        mechanism, self._sasl = self._sasl, None
        line = line.strip()
        if isinstance(mechanism, _Acknowledgement):
            self._acknowledged(line, mechanism.attempt)
            return None
        if isinstance(mechanism, _FailureAcknowledgement):
            # Whatever the answer (0x01, empty, "*"): the login failed.
            self.transport.write(mechanism.reply)
            if mechanism.close:
                self._close()
            return None
        if line == b"*":
            self._refused(self._sasl_method, None, "aborted")
            if getattr(mechanism, "looked_up", False) and self._count_abort():
                return None
            self.transport.write(r.err(self._("Authentication aborted by client.")))
            return None
        try:
            response = sasl.decode(line)
        except sasl.MalformedResponse:
            self._refused(self._sasl_method, None, "bad-sasl")
            self.transport.write(r.err(self._("Invalid base64 data in continued response."),
                                       r.AUTH))
            return None
        return self._sasl_step(mechanism, response)

    def _sasl_step(self, mechanism: Any, response: bytes | None) -> defer.Deferred[None] | None:
        try:
            result = mechanism.step(response)
        except sasl.SASLError:
            # Broken or refused credentials: a failed login like any other
            # (penalty, delay, attempt limit), without asking the portal.
            return self.login(None, self._sasl_method)
        if isinstance(result, KeysWanted):
            return self._look_up_keys(mechanism, result)
        if isinstance(result, sasl.Challenge):
            self._sasl = mechanism
            self.transport.write(b"+ " + sasl.encode(result.data) + b"\r\n")
            return None
        return self.login(result, self._sasl_method, getattr(mechanism, "success_data", None),
                          getattr(mechanism, "failure_data", None))

    def _look_up_keys(self, mechanism: Any, wanted: KeysWanted) -> defer.Deferred[None]:
        """
        SCRAM's first step: the user's salt and iteration count, from the
        user stores (in their threads or over their connections).  No
        login penalty yet: nothing is checked, and the proof that follows
        waits its turn like any login.
        """
        lookup = self._scram_lookup()
        d: defer.Deferred[Any] = (
            defer.maybeDeferred(lookup.lookup_scram, wanted.username, wanted.mechanism)
            if lookup is not None else defer.succeed(None))

        def found(keys: Any) -> None:
            if not self._disconnected:
                challenge = mechanism.keys_found(keys)
                self._sasl = mechanism
                self.transport.write(b"+ " + sasl.encode(challenge.data) + b"\r\n")

        def failed(failure: Failure) -> None:
            # The store cannot answer: [SYS/TEMP], logged as a login error.
            attempt = _Attempt(LoginMind(), self.report.attempt(self._sasl_method,
                                                                wanted.username))
            if not self._disconnected:
                self._login_failed(failure, attempt)

        return d.addCallbacks(found, failed)

    def _count_abort(self) -> bool:
        """
        A SCRAM exchange cancelled after its lookup counts toward
        C{max_auth_failures}, so one connection cannot make lookups without
        end; whether that was the last one (the connection closes).
        """
        self._auth_failures += 1
        if self._auth_failures < self.settings.max_auth_failures:
            return False
        self.report.ending("too-many-failures")
        self._send_and_close(r.err(self._("Authentication aborted by client.")))
        return True

    def _acknowledged(self, line: bytes, attempt: _Attempt) -> None:
        """
        The client's answer to the mechanism's last word (SCRAM's server
        signature): empty, it accepts the server, and the session begins;
        C{*} (it does not trust us) or anything else gives the maildrop back.
        """
        if line in (b"", b"="):
            self._begin_transaction(attempt)
            return
        maildrop, self.maildrop = self.maildrop, None
        logout, self._logout = self._logout, None
        if maildrop is not None:
            defer.maybeDeferred(maildrop.close).addErrback(
                lambda f: self.log.failure("closing maildrop", f))
        if logout is not None:
            logout()
        if line == b"*":
            self.report.refused("aborted", self.tls_active(), attempt.started)
            self.transport.write(r.err(self._("Authentication aborted by client.")))
        else:
            self.report.refused("bad-sasl", self.tls_active(), attempt.started, counts=True)
            self.transport.write(r.err(self._("Authentication failed."), r.AUTH))

    def _refused(self, method: str, user: bytes | None, reason: str) -> None:
        """A login attempt refused without a check (logged, not counted)."""
        self.report.attempt(method, user)
        self.report.refused(reason, self.tls_active())

    def peer_ip(self) -> str:
        """The client's address, for the per-IP login penalty."""
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def login(self, credentials: Any, method: str,
              success_data: Callable[[], bytes] | None = None,
              failure_data: Callable[[], bytes] | None = None) -> defer.Deferred[None]:
        """
        Run C{credentials} through the portal and enter TRANSACTION.  With a
        login penalty, the check waits its turn: one check at a time per
        client address, each after that address's penalty.  C{None}: a
        broken SASL exchange, a failed login that still waits its turn.
        C{method} (USER, APOP, the SASL mechanism) is for the log;
        C{success_data}, the mechanism's last word once the portal said yes;
        C{failure_data}, its error challenge once the portal said no.
        """
        attempt = _Attempt(LoginMind(defaults(self.settings)), self.report.attempt(
            method, getattr(credentials, "username", None)))
        attempt.failure_data = failure_data

        def check() -> defer.Deferred[Any]:
            attempt.checked = self.clock.seconds()
            if credentials is None:
                return defer.fail(BadSASL())
            d: defer.Deferred[Any] = self.portal.login(credentials, attempt.mind, IMaildrop)
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
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(attempt, success_data),
                       errbackArgs=(attempt,))
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

    def _logged_in(self, result: tuple[Any, Any, Callable[[], object]],
                   attempt: _Attempt, success_data: Callable[[], bytes] | None = None) -> None:
        _, maildrop, logout = result
        self.maildrop = maildrop
        self._logout = logout
        if self._disconnected:
            self._release()
            return
        if success_data is not None:
            # RFC 5034 has no "additional data with success": the last word
            # is one more challenge, which the client answers with an empty
            # line (L{_acknowledged}) before the +OK.  The login timer runs on.
            self._sasl = _Acknowledgement(attempt)
            self.transport.write(b"+ " + sasl.encode(success_data()) + b"\r\n")
            return
        self._begin_transaction(attempt)

    def _begin_transaction(self, attempt: _Attempt) -> None:
        self._cancel_login_timer()
        self._enter_transaction(self.maildrop)
        self._enter_policy(attempt.mind.policy)
        self.state = TRANSACTION
        self._bad_commands = 0
        self.report.logged_in(attempt.mind.account or self.report.user, self.tls_active(),
                              attempt.started, attempt.checked, self._live_count,
                              self._live_size)
        self.transport.write(r.ok(self._("Logged in.")))

    def _login_failed(self, failure: Failure, attempt: _Attempt) -> defer.Deferred[None] | None:
        # Expected failures are one line, from the report; an unexpected
        # one also gets its traceback.
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials,
                             cred_error.LoginDenied, defer.CancelledError,
                             errors.MaildropInUse, errors.TemporaryFailure,
                             errors.PermanentFailure, errors.LoginDelayed):
            self.log.failure("login failed", failure)
        self.report.login_failed(failure, attempt.mind, self.tls_active(), attempt.started,
                                 attempt.checked)
        if self._disconnected:
            return None
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials,
                         cred_error.LoginDenied):
            self._auth_failures += 1
            last = self._auth_failures >= self.settings.max_auth_failures
            if last:
                self.report.ending("too-many-failures")
            if attempt.failure_data is not None and not failure.check(BadSASL):
                return self._failure_challenge(attempt.failure_data(), last)
            return self._after_delay(self.settings.auth_failure_delay,
                                     r.err(self._("Authentication failed."), r.AUTH), close=last)
        if failure.check(PenaltyQueueFull):
            self.report.ending("penalty")
            self._send_and_close(r.err(self._("Too many logins in progress from your address."),
                                       r.SYS_TEMP))
            return None
        if failure.check(defer.CancelledError):
            return None
        if failure.check(errors.MaildropInUse):
            reply = r.err(self._("Mailbox is locked by another POP3 session."), r.IN_USE)
        elif isinstance(failure.value, errors.LoginDelayed):
            # RFC 2449 8.1.1; only once the credentials were right.
            # TRANSLATORS: {seconds} is the user's LOGIN-DELAY, a whole number.
            reply = r.err(self._("Logins must be at least {seconds} seconds apart.",
                                 seconds=failure.value.delay), r.LOGIN_DELAY)
        elif failure.check(errors.PermanentFailure):
            # A refused user name, a mailbox that is not one: expected, and
            # the report's line says which.
            reply = r.err(self._("Mailbox cannot be opened."), r.SYS_PERM)
        else:
            reply = r.err(self._("Temporary server failure, try again later."), r.SYS_TEMP)
        self.transport.write(reply)
        return None

    def _failure_challenge(self, data: bytes, close: bool) -> defer.Deferred[None]:
        """After the failure delay, the mechanism's error challenge (RFC
        7628 section 3.2.2); the C{-ERR [AUTH]} follows the client's answer."""
        reply = r.err(self._("Authentication failed."), r.AUTH)

        def send() -> None:
            if not self._disconnected:
                self._sasl = _FailureAcknowledgement(reply, close)
                self.transport.write(b"+ " + sasl.encode(data) + b"\r\n")

        return deferLater(self.clock, self.settings.auth_failure_delay, send)

    def _oauth_configured(self) -> bool:
        """Whether a token validator is configured (C{--oauth}): the portal
        has a checker for bearer tokens."""
        interfaces: list[object] = getattr(self.portal, "listCredentialsInterfaces", lambda: [])()
        return IOAuthCredentials in interfaces

    def _after_delay(self, delay: float, reply: bytes, close: bool) -> defer.Deferred[None]:
        def send() -> None:
            if self._disconnected:
                return
            self.transport.write(reply)
            if close:
                self._close()

        return deferLater(self.clock, delay, send)

    def _scram_lookup(self) -> Any:
        """The user stores' L{IScramLookup}: the portal's checker for SCRAM
        proofs (a chain when several stores hold keys), or C{None}."""
        checker = getattr(self.portal, "checkers", {}).get(IScramCredentials)
        return IScramLookup(checker, None)

    def _scram_mechanisms(self) -> frozenset[str]:
        """The SCRAM mechanisms the user stores can verify now."""
        lookup = self._scram_lookup()
        return frozenset(lookup.scram_mechanisms()) if lookup is not None else frozenset()

    def _secrets_checkable(self) -> bool:
        """Whether the user stores can check a proof of the secret (APOP,
        CRAM-MD5): a checker for C{IUsernameHashedPassword} is registered."""
        interfaces: list[object] = getattr(self.portal, "listCredentialsInterfaces", lambda: [])()
        return IUsernameHashedPassword in interfaces
