"""
The LMTP listeners of a running popgate, for L{popgate.service.build_service}.
"""

from __future__ import annotations

import socket
from typing import Any, Sequence

from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from popgate.delivery.lmtp import LMTPFactory
from popgate.delivery.target import delivery_target
from popgate.delivery.users import UserResolver

log = Logger()


def check_lmtp_options(options: Any) -> None:
    """
    Refuse, at option time, C{--lmtp} with a store that cannot take mail.

    @raise usage.UsageError: naming the problem in one line.
    """
    if options.get("lmtp") and options.get("store_object") is not None:
        try:
            delivery_target(options["store_object"])
        except ValueError as e:
            raise usage.UsageError(f"--lmtp: {e}") from None


def lmtp_factory(options: Any, store: Any, checkers: Sequence[Any], reactor: Any = None) -> LMTPFactory:
    """
    The LMTP factory: delivering into C{store}, checking recipients against
    the C{checkers} that provide L{popgate.interfaces.IUserLookup}.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        target = delivery_target(store, reactor)
    except ValueError as e:
        raise usage.UsageError(f"--lmtp: {e}") from None
    resolver = UserResolver.from_checkers(checkers)
    if resolver.accepts_anyone:
        log.warn("lmtp: no user store can look users up; every recipient is accepted")
    hostname = options.get("hostname") or socket.getfqdn()
    return LMTPFactory(target, resolver, hostname, clock=reactor, reactor=reactor)


def lmtp_services(options: Any, store: Any, checkers: Sequence[Any], reactor: Any = None) -> list[IService]:
    """
    One listening service per C{--lmtp} endpoint (none without the option).
    A port that cannot be bound stops start-up.
    """
    endpoints = list(options.get("lmtp") or [])
    if not endpoints:
        return []
    if reactor is None:
        from twisted.internet import reactor
    factory = lmtp_factory(options, store, checkers, reactor)
    services: list[IService] = []
    for endpoint in endpoints:
        listener = strports.service(endpoint, factory, reactor=reactor)
        listener._raiseSynchronously = True  # fail start-up, not just log
        listener.setName(f"lmtp {endpoint}")
        services.append(listener)
    return services
