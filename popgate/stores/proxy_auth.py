"""
Who checks a proxied user's password, as twisted.cred checkers (for the
C{proxy:} store, and the C{imap:} store, whose connection is an IMAP one).

  - I{Upstream authentication} (no C{--auth}): L{UpstreamChecker} logs
    in upstream with the client's user name and password; the upstream's
    answer is the check.  The logged-in connection rides on the avatar id
    (L{UpstreamAvatarId}) to the store, which takes it
    (L{claim_upstream}) instead of logging in a second time.  Only
    L{IUsernamePassword} is handled, so APOP and CRAM-MD5, which cannot
    be relayed, are not offered.
  - I{Local authentication} (C{--auth}): popgate's user stores check the
    client; the store then logs in upstream as a master user, or, without
    one, with the password the client gave, which L{PasswordForwarder}
    puts on the avatar id (in memory, for the one login).

Either way the checkers sit behind popgate's portal like any other, so
the login penalty, the limits, the plaintext policy and the session log
apply unchanged; the upstream checker is never behind the auth cache (a
cached yes would hand out a connection already used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate.cred.names import normalize_user
from popgate.cred.userinfo import AvatarId

if TYPE_CHECKING:
    from popgate.stores.pop3_upstream import UpstreamProtocol

__all__ = ["PasswordForwarder", "UpstreamAvatarId", "UpstreamChecker", "claim_upstream",
           "forwarded_password"]

log = Logger()

#: Seconds a logged-in upstream connection waits for the store to take it
#: (the realm does at once); then it is closed.
UNCLAIMED_TIMEOUT = 30.0


class UpstreamAvatarId(AvatarId):
    """An avatar id carrying what the proxy store needs to reach the
    user's upstream mailbox: a logged-in connection, or a password."""

    upstream: UpstreamProtocol | None
    password: bytes | None
    timer: Any = None

    def __new__(cls, base: str, upstream: UpstreamProtocol | None = None,
                password: bytes | None = None) -> UpstreamAvatarId:
        name = normalize_user(str(base))  # as the realm would: it keeps this object then
        self = cast("UpstreamAvatarId", super().__new__(
            cls, name, getattr(base, "mail_location", None), getattr(base, "policy", None)))
        self.upstream = upstream
        self.password = password
        return self

    def __reduce__(self) -> Any:  # never pickled with its connection or password
        return (str, (str(self),))


def claim_upstream(avatar_id: object) -> UpstreamProtocol | None:
    """The logged-in connection C{avatar_id} carries, taken (once)."""
    connection = getattr(avatar_id, "upstream", None)
    if connection is not None:
        avatar_id.upstream = None  # type: ignore[attr-defined]
        timer = getattr(avatar_id, "timer", None)
        if timer is not None and timer.active():
            timer.cancel()
    return connection


def forwarded_password(avatar_id: object) -> bytes | None:
    """The client's password, when a L{PasswordForwarder} put it there."""
    return getattr(avatar_id, "password", None)


@implementer(ICredentialsChecker)
class UpstreamChecker:
    """
    The upstream checks the password: a login upstream with the client's
    credentials.

    @param store: the L{popgate.stores.proxy_store.ProxyStore} or
        L{popgate.stores.imap_store.ImapStore} (its C{log_in} and its
        reactor).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        user: bytes = credentials.username
        name = normalize_user(user.decode("utf-8", "replace"))
        d: defer.Deferred[Any] = self.store.log_in(name, user, credentials.password)
        d.addCallback(self._logged_in, name)
        return d

    def _logged_in(self, connection: UpstreamProtocol, name: str) -> UpstreamAvatarId:
        avatar = UpstreamAvatarId(name, upstream=connection)

        def unclaimed() -> None:
            if avatar.upstream is not None:
                log.warn("upstream connection of {user} never used; closing", user=name)
                claim_upstream(avatar).abort()  # type: ignore[union-attr]

        avatar.timer = self.store.reactor.callLater(UNCLAIMED_TIMEOUT, unclaimed)
        return avatar


@implementer(ICredentialsChecker)
class PasswordForwarder:
    """
    Local authentication with the user's own password upstream: C{wrapped}
    (a user store) checks the client; on its yes the password goes with
    the avatar id to the store.  Only password logins: an APOP or
    CRAM-MD5 client never sends one.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, wrapped: ICredentialsChecker) -> None:
        self.wrapped = wrapped

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.maybeDeferred(self.wrapped.requestAvatarId, credentials)
        d.addCallback(lambda avatar: UpstreamAvatarId(
            avatar.decode("utf-8") if isinstance(avatar, bytes) else avatar,
            password=credentials.password))
        return d
