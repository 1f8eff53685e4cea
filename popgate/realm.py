"""
The realm: turns an authenticated user name into an opened maildrop.

Stores may return any object; the realm adapts it to L{IMaildrop} with
L{popgate.stores.adapters.as_maildrop}, so a store written for another
interface (a Twisted C{IMailbox}, say) plugs in unchanged.
Adapters are synchronous, so an adapter that must do I/O before it can list
messages provides L{popgate.interfaces.ILoadingMaildrop} (re-exported here),
and the realm waits for its C{load}.

The realm also enforces LOGIN-DELAY (L{popgate.login_delay}): between the
user store's yes and the maildrop's open, so a login refused for it costs
no mailbox scan.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors, login_delay
from popgate.cred.names import normalize_user
from popgate.interfaces import ILoadingMaildrop, IMaildrop, IMailStore
from popgate.policy import for_user
from popgate.stores import adapters
from popgate.stores.history import login_history

__all__ = ["ILoadingMaildrop", "MaildropRealm", "avatar_name", "ready_maildrop"]

log = Logger()


def avatar_name(avatar_id: bytes | str) -> str:
    """
    Checkers may return bytes or str avatar ids; the stores get str, with
    the domain lower-cased (a third-party checker's C{bob@Example.org} is
    the mailbox a recipient C{bob@example.org} is delivered to).
    """
    if isinstance(avatar_id, bytes):
        avatar_id = avatar_id.decode("utf-8")
    return normalize_user(avatar_id)


async def ready_maildrop(opened: object, reactor: Any) -> Any:
    """
    Adapt what a store returned to L{IMaildrop} (an adapter that needs
    threads or timers gets C{reactor}) and, if it needs it, wait for it to
    load.

    @raise errors.PermanentFailure: if no adapter fits (a broken store).
    """
    maildrop = adapters.as_maildrop(opened, reactor)
    if maildrop is None:
        raise errors.PermanentFailure(
            f"the mail store returned a {type(opened).__name__}, which is no IMaildrop "
            "and has no adapter to one")
    if ILoadingMaildrop.providedBy(maildrop):
        try:
            await defer.maybeDeferred(maildrop.load)
        except BaseException:
            try:
                await defer.maybeDeferred(maildrop.close)
            except Exception:
                log.failure("closing a maildrop that failed to load")
            raise
    return maildrop


@implementer(IRealm)
class MaildropRealm:
    """
    An L{IRealm} handing out L{IMaildrop} avatars from one mail store.

    The session's C{mind} (L{popgate.pop3.session_log.LoginMind}) brings
    the server's LOGIN-DELAY and EXPIRE (C{policy_defaults}) and learns the
    user's (C{policy_found}); a mind without them gets no delay.

    @param reactor: the server's, for adapters that need threads or timers.
    @param clock: tells the time of logins (default: C{reactor}).
    """

    def __init__(self, store: IMailStore, reactor: Any, clock: Any = None) -> None:
        self.store = store
        self.reactor = reactor
        self.clock = reactor if clock is None else clock

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> defer.Deferred[Any]:
        if IMaildrop not in interfaces:
            raise NotImplementedError("popgate only serves IMaildrop avatars")
        name = avatar_name(avatarId)
        # The session's mind (popgate.pop3.session_log.LoginMind) learns
        # that the user store said yes: what fails now is the mail store.
        found = getattr(mind, "avatar_found", None)
        if found is not None:
            found(name)
        policy = for_user(name, getattr(mind, "policy_defaults", None))
        tell = getattr(mind, "policy_found", None)
        if tell is not None:
            tell(policy)
        return defer.Deferred.fromCoroutine(self._open(name, policy.login_delay))

    async def _open(self, name: str, delay: int) -> tuple[Any, Any, Any]:
        history = login_history(self.store) if delay else None
        if history is not None:
            await login_delay.check(history, name, delay, self.clock.seconds())
        opened = await defer.maybeDeferred(self.store.open_maildrop, name)
        maildrop = await ready_maildrop(opened, self.reactor)
        if history is not None:
            await login_delay.record(history, name, self.clock.seconds())
        return IMaildrop, maildrop, maildrop.close
