"""
The LMTP listener's factory: the delivery target, the recipient resolver
and the session limits every L{LMTPServerProtocol} it builds shares (a
reload swaps the resolver and the hostname here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.protocol import ServerFactory

from popgate.delivery.lmtp import LMTPServerProtocol
from popgate.delivery.lmtp_syntax import UNPRINTABLE
from popgate.delivery.target import delivery_target
from popgate.delivery.users import UserResolver
from popgate.interfaces import IUserLookup

DEFAULT_MAX_MESSAGE_SIZE = 50 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes


def as_resolver(user_lookup: Any) -> UserResolver:
    """A L{UserResolver} from a resolver, one L{IUserLookup}, a list of
    checkers, or C{None} (accept anyone)."""
    if isinstance(user_lookup, UserResolver):
        return user_lookup
    if user_lookup is None:
        return UserResolver([])
    if IUserLookup.providedBy(user_lookup):
        return UserResolver([user_lookup])
    return UserResolver.from_checkers(user_lookup)


class LMTPFactory(ServerFactory[LMTPServerProtocol]):
    """
    Builds L{LMTPServerProtocol}s delivering into C{store}.

    @param store: an L{IDeliveryTarget}: a mail store that takes mail
        (checked with L{popgate.delivery.target.delivery_target}).
    @param user_lookup: a L{UserResolver}, an L{IUserLookup}, a list of
        checkers (those providing L{IUserLookup} are asked), or C{None} to
        accept every recipient.
    @param clock: for the idle timer (an C{IReactorTime}); required, so no
        session falls back to the global reactor.
    """

    def __init__(self, store: Any, user_lookup: Any, hostname: str, clock: Any,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.target = delivery_target(store)
        self.resolver = as_resolver(user_lookup)
        self.set_hostname(hostname)
        self.clock = clock
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout

    def set_hostname(self, hostname: str) -> None:
        """The name in the greeting and the LHLO reply of new sessions (a
        reload may change it)."""
        self.hostname_bytes = UNPRINTABLE.sub("", hostname).encode("ascii") or b"localhost"

    def buildProtocol(self, addr: Any) -> LMTPServerProtocol:
        protocol = LMTPServerProtocol(self)
        protocol.factory = self
        return protocol


__all__: Sequence[str] = ["LMTPFactory", "DEFAULT_MAX_MESSAGE_SIZE"]
