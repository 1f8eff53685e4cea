"""
The realm: turns an authenticated user name into an opened maildrop.

Stores may return any object; the realm adapts it to L{IMaildrop} through
the adapters registered in L{popgate.stores.adapters}, so a store written
for another interface (a Twisted C{IMailbox}, say) plugs in unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from popgate.interfaces import IMaildrop, IMailStore
from popgate.stores import adapters


def avatar_name(avatar_id: bytes | str) -> str:
    """Checkers may return bytes or str avatar ids; the stores get str."""
    if isinstance(avatar_id, bytes):
        return avatar_id.decode("utf-8")
    return avatar_id


@implementer(IRealm)
class MaildropRealm:
    """An L{IRealm} handing out L{IMaildrop} avatars from one mail store."""

    def __init__(self, store: IMailStore) -> None:
        adapters.register()
        self.store = store

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> defer.Deferred[Any]:
        if IMaildrop not in interfaces:
            raise NotImplementedError("popgate only serves IMaildrop avatars")
        d = defer.maybeDeferred(self.store.open_maildrop, avatar_name(avatarId))

        def adapt(opened: object) -> tuple[Any, Any, Any]:
            maildrop = IMaildrop(opened)
            return IMaildrop, maildrop, maildrop.close

        return d.addCallback(adapt)
