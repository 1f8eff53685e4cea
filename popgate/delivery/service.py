"""
The LMTP side of a running popgate, for L{popgate.build.build_server}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from popgate.delivery.lmtp_factory import LMTPFactory
from popgate.delivery.target import delivery_target
from popgate.delivery.users import UserResolver

log = Logger()


def lmtp_factory(store: Any, checkers: Sequence[Any], hostname: str, reactor: Any) -> LMTPFactory:
    """
    The LMTP factory: delivering into C{store}, checking recipients against
    the C{checkers} that provide L{popgate.interfaces.IUserLookup}.

    @raise usage.UsageError: the store cannot take mail.
    """
    try:
        target = delivery_target(store)
    except ValueError as e:
        raise usage.UsageError(f"--lmtp: {e}") from None
    resolver = UserResolver.from_checkers(checkers)
    if resolver.accepts_anyone:
        log.warn("lmtp: no user store can look users up; every recipient is accepted")
    return LMTPFactory(target, resolver, hostname, clock=reactor)
