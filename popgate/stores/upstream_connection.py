"""
What a connection to an upstream mail server does whatever its protocol
(L{popgate.stores.pop3_upstream.UpstreamProtocol},
L{popgate.stores.imap_upstream.ImapProtocol}): the deadlines (the
greeting, then each reply must progress), back-pressure from the sink of
a streamed message (no deadline runs while popgate's client is the slow
one), and the one failure every waiting command gets when the connection
is lost, saying why.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate import errors

__all__ = ["UpstreamConnection", "UpstreamUnavailable"]

log = Logger()


class UpstreamUnavailable(errors.TemporaryFailure):
    """The upstream cannot be reached or dropped the connection
    (C{-ERR [SYS/TEMP]} for popgate's client)."""


class UpstreamConnection(Protocol):
    """
    @cvar server: how log lines name the upstream (C{POP3}, C{IMAP}).
    @param clock: for the deadlines.
    @param timeout: seconds a command may wait for its reply to progress.
    @param greeting_timeout: seconds to wait for the greeting (default:
        C{timeout}).
    @ivar greeting: fires with the greeting's text.
    @ivar lost: once the connection is gone, the failure saying why.
    """

    server = "mail"
    transport: Any  # TCP or TLS: abortConnection, pauseProducing, startTLS

    def __init__(self, clock: Any, timeout: float, greeting_timeout: float | None = None) -> None:
        self.clock = clock
        self.timeout = timeout
        self.greeting_timeout = timeout if greeting_timeout is None else greeting_timeout
        self.greeting: defer.Deferred[bytes] = defer.Deferred()
        self._greeted = False
        self._why: str | None = None  # why popgate dropped the connection
        self._timer: IDelayedCall | None = None
        self._paused = False
        self.lost: Failure | None = None

    # -- what a protocol adds

    #: The command whose reply comes next (C{kind}, C{sink}, C{dropping}).
    _current: Any

    def _take_waiting(self) -> list[Any]:
        """The commands written or queued, removed: the connection is gone."""
        raise NotImplementedError

    def _fail(self, command: Any, failure: Failure) -> None:
        """Tell whoever waits for C{command} (its Deferred, or the sink of
        a stream that has begun) that it failed."""
        raise NotImplementedError

    # -- the connection

    def connectionMade(self) -> None:
        self._arm()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._disarm()
        why = self._why or (reason.getErrorMessage() if reason is not None else "closed")
        if reason is not None and reason.check(VerificationError, SSL.Error):
            why = f"TLS with the upstream failed (its certificate does not verify?): {why}"
        self.lost = Failure(UpstreamUnavailable(f"upstream connection lost: {why}"))
        if not self._greeted:
            self._greeted = True
            self.greeting.errback(self.lost)
        for command in self._take_waiting():
            self._fail(command, self.lost)

    def abort(self, why: str = "dropped by popgate") -> None:
        """Drop the connection now (a timeout, a reply that is not the
        protocol)."""
        self._why = self._why or why
        if self.transport is not None:
            self.transport.abortConnection()

    def close(self) -> None:
        """Close after what was written (QUIT's or LOGOUT's reply, or nothing)."""
        if self.transport is not None and self.lost is None:
            self.transport.loseConnection()

    def _protocol_error(self, what: str) -> None:
        log.warn("upstream {server} server: {what}; closing", server=self.server, what=what)
        self.abort(what)

    # -- back-pressure from the sink

    def pause(self) -> None:
        """The sink holds enough: stop reading the socket (no deadline runs
        while popgate's client is the slow one)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self._disarm()
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self._paused and self.transport is not None and self.lost is None:
            self._paused = False
            self._arm()
            self.transport.resumeProducing()

    def abandon(self) -> None:
        """The sink of the current stream wants no more: the rest of the
        reply is read and dropped."""
        command = self._current
        if command is not None and command.kind == "stream":
            command.dropping = True
            command.sink = None
        self.resume()

    # -- deadlines

    def _arm(self) -> None:
        if self._paused:
            return
        seconds = self.timeout if self._greeted else self.greeting_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(seconds)
        else:
            self._timer = self.clock.callLater(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        step = "the greeting" if not self._greeted else "a reply"
        seconds = self.timeout if self._greeted else self.greeting_timeout
        log.warn("upstream {server} server: no progress on {step} for {seconds} s; closing",
                 server=self.server, step=step, seconds=seconds)
        self.abort(f"no progress on {step} for {seconds:g} s")
