"""
Faults a POP3 client must survive, injected into a test server without
touching popgate's protocol: a wrapping mail store for login errors and a
connection dropped mid-message, a protocol subclass for a CAPA without UIDL
and TOP.  Packet splitting and slow replies are in L{popgate.testing.shaping}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import ILoadingMaildrop, IMailStore, IMessageSource
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.protocol import POP3ServerProtocol
from popgate.realm import ready_maildrop

#: The C{login_error} values and the response code each one produces.
LOGIN_ERRORS: dict[str, type[Exception]] = {
    "IN-USE": errors.MaildropInUse,
    "SYS/TEMP": errors.TemporaryFailure,
    "SYS/PERM": errors.PermanentFailure,
}

_HIDDEN = (b"UIDL", b"TOP")


class InjectedFault(Exception):
    """Raised by the test server where a fault was asked for."""


@dataclass
class Faults:
    """
    What the test server does wrong; change the attributes at any time.
    Login errors, drops and hidden capabilities apply at once; packet
    splitting and delays apply to connections made after they were set.

    @ivar login_error: C{"IN-USE"}, C{"SYS/TEMP"} or C{"SYS/PERM"}: a
        correct login is answered C{-ERR [IN-USE]} (etc.) instead of C{+OK}.
        A wrong password still gets C{-ERR [AUTH]}.
    @ivar login_error_times: how many logins fail that way (then
        C{login_error} clears itself); C{None}: every login.
    @ivar drop_during_retr: RETR and TOP send C{+OK}, about half of the
        message, then close the connection.
    @ivar split_writes: C{(min, max)}: every reply is sent in pieces of
        C{min}..C{max} octets, each in its own TCP segment (TCP_NODELAY).
    @ivar split_interval: seconds between two pieces.
    @ivar response_delay: seconds every write (a reply, a chunk of a
        message) is held back: a slow server.
    @ivar hide_uidl_top: CAPA lists neither UIDL nor TOP, and both commands
        get C{-ERR}, as on a server without them.
    """

    login_error: str | None = None
    login_error_times: int | None = None
    drop_during_retr: bool = False
    split_writes: tuple[int, int] | None = None
    split_interval: float = 0.001
    response_delay: float = 0.0
    hide_uidl_top: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "login_error" and value is not None and value not in LOGIN_ERRORS:
            raise ValueError(f"login_error must be one of {', '.join(LOGIN_ERRORS)}, not {value!r}")
        if name == "split_writes" and value is not None:
            low, high = value
            if not 1 <= low <= high:
                raise ValueError("split_writes needs 1 <= min <= max")
            value = (int(low), int(high))
        if name in ("response_delay", "split_interval") and value < 0:
            raise ValueError(f"{name} must not be negative")
        super().__setattr__(name, value)

    def reset(self) -> None:
        """Back to a well-behaved server."""
        for field in fields(self):
            setattr(self, field.name, field.default)

    def take_login_error(self) -> type[Exception] | None:
        """The exception the next login gets, counting it against
        C{login_error_times}."""
        if self.login_error is None:
            return None
        error = LOGIN_ERRORS[self.login_error]
        if self.login_error_times is not None:
            self.login_error_times -= 1
            if self.login_error_times <= 0:
                self.login_error = None
                self.login_error_times = None
        return error


@implementer(IMessageSource)
class _DroppingSource:
    """About the first C{budget} octets of a message, then an error: the
    protocol, having sent C{+OK}, can only drop the connection.  Read where
    the wrapped source is read (a thread if it blocks)."""

    def __init__(self, source: Any, budget: int) -> None:
        self._source = source
        self._left = budget
        self.blocking = getattr(source, "blocking", True)

    def read(self, size: int) -> bytes:
        chunk = self._source.read(min(size, self._left)) if self._left > 0 else b""
        if not chunk:
            raise InjectedFault("connection dropped during RETR, as asked")
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._source.close()


@implementer(ILoadingMaildrop)
class FaultyMaildrop:
    """An L{IMaildrop} that passes through, except for dropped messages."""

    def __init__(self, maildrop: Any, faults: Faults) -> None:
        self._maildrop = maildrop
        self._faults = faults

    def load(self) -> defer.Deferred[None]:
        # The realm loaded the wrapped maildrop already.
        return defer.succeed(None)

    def list_messages(self) -> Any:
        return self._maildrop.list_messages()

    def open_message(self, index: int) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(self._maildrop.open_message, index)
        if self._faults.drop_during_retr:
            half = self._maildrop.list_messages()[index].size // 2
            d.addCallback(_DroppingSource, half)
        return d

    def commit(self, deleted: Iterable[int]) -> Any:
        return self._maildrop.commit(deleted)

    def close(self) -> Any:
        return self._maildrop.close()


@implementer(IMailStore)
class FaultyStore:
    """Wraps a mail store: login errors, and maildrops that drop messages.
    C{reactor} is the server's, for the adapters L{ready_maildrop} uses."""

    def __init__(self, store: Any, faults: Faults, reactor: Any) -> None:
        self.store = store
        self.faults = faults
        self.reactor = reactor

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[FaultyMaildrop]:
        error = self.faults.take_login_error()
        if error is not None:
            return defer.fail(error(f"injected fault at login of {avatar_id}"))
        d = defer.maybeDeferred(self.store.open_maildrop, avatar_id)
        d.addCallback(lambda opened: defer.Deferred.fromCoroutine(
            ready_maildrop(opened, self.reactor)))
        return d.addCallback(FaultyMaildrop, self.faults)


class FaultyProtocol(POP3ServerProtocol):
    """popgate's protocol, minus UIDL and TOP when the faults say so."""

    factory: FaultyFactory

    def capabilities(self) -> list[bytes]:
        caps = super().capabilities()
        if self.factory.faults.hide_uidl_top:
            caps = [c for c in caps if c.split(b" ", 1)[0] not in _HIDDEN]
        return caps

    def transaction_commands(self) -> set[bytes]:
        commands = super().transaction_commands()
        if self.factory.faults.hide_uidl_top:
            commands = commands.difference(_HIDDEN)
        return commands


class FaultyFactory(POP3ServerFactory):
    """A L{POP3ServerFactory} whose protocols read C{faults}."""

    protocol = FaultyProtocol

    def __init__(self, portal: Any, settings: Any, clock: Any, faults: Faults) -> None:
        super().__init__(portal, settings, clock)
        self.faults = faults
