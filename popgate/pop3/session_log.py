"""
What one POP3 session reports (L{popgate.events}): its connection, each
login attempt, and how it ended, with the figures of Dovecot's
C{pop3_logout_format}.  The protocol tells it the facts as they happen;
the lines are emitted from here, so the protocol's parts stay about POP3.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from popgate import errors
from popgate.cred.penalty import PenaltyQueueFull
from popgate.events import address_text, emit
from popgate.oauth import InvalidToken
from popgate.policy import Policy
from popgate.pop3.base import describe


class BadSASL(cred_error.UnauthorizedLogin):
    """A SASL exchange that broke its mechanism's rules: a failed login,
    which the penalty counts as wrong credentials."""


# Failures that are the client's (result=failed), by reason.
_CLIENT_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (BadSASL, "bad-sasl"),
    (InvalidToken, "bad-token"),
    (errors.UnknownUser, "unknown-user"),
    (cred_error.UnauthorizedLogin, "bad-password"),
    (cred_error.UnhandledCredentials, "bad-password"),
    (cred_error.LoginDenied, "bad-password"),
    (PenaltyQueueFull, "penalty"),
    (defer.CancelledError, "aborted"),
    (errors.LoginDelayed, "login-delay"),
)


def store_kind(failure: Failure) -> str:
    """temporary, permanent or internal: the C{kind} of a store error."""
    if failure.check(errors.TemporaryFailure, OSError):
        return "temporary"
    if failure.check(errors.PermanentFailure):
        return "permanent"
    return "internal"


class LoginMind:
    """
    The C{mind} of a login: the realm (L{popgate.realm.MaildropRealm})
    tells it the user's name once the user store has accepted the
    credentials, so a failure after that is the mail store's, not the
    user store's, and the log names the account.  It also brings the realm
    the server's LOGIN-DELAY and EXPIRE (C{policy_defaults}) and learns the
    user's (L{policy_found}).
    """

    def __init__(self, policy_defaults: Policy | None = None) -> None:
        self.account: str | None = None
        self.policy_defaults = policy_defaults
        self.policy: Policy | None = None

    def avatar_found(self, name: str) -> None:
        self.account = name

    def policy_found(self, policy: Policy) -> None:
        self.policy = policy


class SessionLog:
    """
    The facts of one session, and the events they make.

    @param log: the protocol's logger (the events' namespace).
    @param clock: the session's clock (durations).
    """

    def __init__(self, log: Logger, clock: Any) -> None:
        self.log = log
        self.clock = clock
        self.session = secrets.token_urlsafe(9)
        self.rip = self.lip = "-"
        self.connected_at = clock.seconds()
        self.logged_in_at: float | None = None
        self.user = ""  # the last name a login tried
        self.account = ""
        self.method = ""
        self.attempts = 0
        self.end_reason: str | None = None
        self.retr = self.retr_bytes = self.top = self.top_bytes = 0
        self.deleted = self.deleted_bytes = 0
        self.messages = self.size = 0
        self.reported = False

    # -- connection

    def connected(self, transport: Any, tls: bool) -> None:
        self.rip = address_text(transport.getPeer())
        self.lip = address_text(transport.getHost())
        emit(self.log, "pop3.connect", rip=self.rip, lip=self.lip, tls=_yes(tls),
             session=self.session)

    def ending(self, reason: str) -> None:
        """Why the session ends; the first reason given wins."""
        if self.end_reason is None:
            self.end_reason = reason

    def tls_done(self, stage: str, version: str, cipher: str) -> None:
        emit(self.log, "tls.handshake", rip=self.rip, lip=self.lip, stage=stage,
             version=version or "-", cipher=cipher or "-", session=self.session)

    def tls_failed(self, stage: str, why: str) -> None:
        emit(self.log, "tls.handshake_failed", rip=self.rip, lip=self.lip, stage=stage,
             why=why, session=self.session)
        self.ending("tls-failed")

    # -- logins

    def attempt(self, method: str, user: Any) -> float:
        """A login starts; returns its start time."""
        self.method = method
        self.user = user if isinstance(user, str) else (user or b"").decode("utf-8", "replace")
        return float(self.clock.seconds())

    def _login(self, result: str, reason: str, tls: bool, started: float, checked: float | None,
               why: str = "", level: LogLevel | None = None) -> None:
        now = self.clock.seconds()
        emit(self.log, "pop3.login", level=level, result=result, reason=reason, user=self.user,
             account=self.account, method=self.method, rip=self.rip, lip=self.lip,
             tls=_yes(tls), attempts=self.attempts,
             wait=(checked if checked is not None else now) - started,
             duration=now - started, why=why, session=self.session)

    def logged_in(self, account: str, tls: bool, started: float, checked: float | None,
                  messages: int, size: int) -> None:
        self.account = account
        self.logged_in_at = self.clock.seconds()
        self.messages, self.size = messages, size
        self._login("ok", "", tls, started, checked)

    def refused(self, reason: str, tls: bool, started: float | None = None,
                counts: bool = False) -> None:
        """A login refused before or without a check (C{counts}: as a
        failed attempt)."""
        if counts:
            self.attempts += 1
        now = float(self.clock.seconds())
        self._login("failed", reason, tls, now if started is None else started, None)

    def login_failed(self, failure: Failure, mind: LoginMind | None, tls: bool, started: float,
                     checked: float | None) -> str:
        """
        Report a login that did not succeed; returns the reason.  The
        client's failures (wrong credentials) count as attempts.
        """
        if mind is not None and mind.account is not None:
            self.account = mind.account
        for client_failure, reason in _CLIENT_FAILURES:
            if failure.check(client_failure):
                if reason in ("bad-password", "unknown-user", "bad-sasl", "bad-token"):
                    self.attempts += 1
                self._login("failed", reason, tls, started, checked)
                return reason
        why = describe(failure)
        if failure.check(errors.MaildropInUse):
            self._login("error", "in-use", tls, started, checked, why)
            return "in-use"
        from_store = mind is not None and mind.account is not None
        kind = store_kind(failure)
        reason = "internal" if kind == "internal" else ("store" if from_store else "userstore")
        # A permanent failure is a configuration to fix: an error.
        self._login("error", reason, tls, started, checked, why,
                    level=LogLevel.error if kind == "permanent" else None)
        # The line above says it at warn; this one is counted.
        if from_store:
            self.store_error("open", kind, why, level=LogLevel.debug)
        else:
            emit(self.log, "userstore.error", level=LogLevel.debug, op="login", kind=kind,
                 user=self.user, why=why, session=self.session)
        return reason

    # -- transaction

    def sent(self, whole: bool, octets: int) -> None:
        """A message was sent: in full (RETR) or in part (TOP)."""
        if whole:
            self.retr += 1
            self.retr_bytes += octets
        else:
            self.top += 1
            self.top_bytes += octets

    def committed(self, count: int, octets: int) -> None:
        self.deleted, self.deleted_bytes = count, octets

    def store_error(self, op: str, kind: str, why: str, level: LogLevel | None = None) -> None:
        emit(self.log, "store.error", level=level, op=op, kind=kind, user=self.account,
             why=why, session=self.session)

    # -- the end

    def ended(self, tls: bool) -> None:
        """The session is over: one line, once."""
        if self.reported:
            return
        self.reported = True
        now = self.clock.seconds()
        reason = self.end_reason or "disconnect"
        if self.logged_in_at is None:
            quiet = self.attempts == 0 and not self.user and reason in (
                "disconnect", "quit", "tls-failed")
            emit(self.log, "pop3.disconnect", level=LogLevel.debug if quiet else None,
                 reason=reason, user=self.user, method=self.method, rip=self.rip, lip=self.lip,
                 tls=_yes(tls), attempts=self.attempts, duration=now - self.connected_at,
                 session=self.session)
            return
        emit(self.log, "pop3.logout", user=self.account, reason=reason, rip=self.rip,
             retr=self.retr, retr_bytes=self.retr_bytes, top=self.top, top_bytes=self.top_bytes,
             deleted=self.deleted, deleted_bytes=self.deleted_bytes,
             left=self.messages - self.deleted, left_bytes=self.size - self.deleted_bytes,
             messages=self.messages, size=self.size, duration=now - self.logged_in_at,
             session=self.session)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
