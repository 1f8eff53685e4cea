"""
Building the running service from parsed options: the portal, the mail
store, and one listener per endpoint.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service, strports
from twisted.cred.portal import Portal

from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.cred.throttle import LoginThrottle
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm


def build_portal(store: Any, checkers: list[Any], cache: tuple[float, float] = (0, 0),
                 clock: Any = None) -> Portal:
    """
    A portal with one checker per credentials interface (a chain when
    several user stores handle the same kind of credentials), each behind
    an auth cache when C{cache} (positive and negative TTLs) is not off.
    """
    portal = Portal(MaildropRealm(store))
    if any(cache):
        checkers = [CachingChecker(c, positive_ttl=cache[0], negative_ttl=cache[1], clock=clock)
                    for c in checkers]
    by_interface: dict[Any, list[Any]] = {}
    for checker in checkers:
        for interface in checker.credentialInterfaces:
            by_interface.setdefault(interface, []).append(checker)
    for interface, handlers in by_interface.items():
        checker = handlers[0] if len(handlers) == 1 else ChainedChecker(handlers)
        portal.registerChecker(checker, interface)
    return portal


def session_settings(options: Any) -> SessionSettings:
    """The L{SessionSettings} the options ask for; unset options keep their
    defaults."""
    names = {
        "implementation": "implementation",
        "greeting": "greeting",
        "hostname": "hostname",
        "idle-timeout": "idle_timeout",
        "auth-failure-delay": "auth_failure_delay",
        "max-auth-failures": "max_auth_failures",
        "max-bad-commands": "max_bad_commands",
    }
    values = {attr: options[opt] for opt, attr in names.items() if options.get(opt) is not None}
    values.setdefault("hostname", socket.getfqdn())
    return SessionSettings(**values)


def _option(options: Any, name: str, default: Any) -> Any:
    value = options.get(name)
    return default if value is None else value


def build_service(options: Any, reactor: Any = None) -> service.MultiService:
    """The L{MultiService} of every listener; a port that cannot be bound
    stops start-up instead of leaving a server with no listener."""
    if reactor is None:
        from twisted.internet import reactor
    top = service.MultiService()
    cache = (_option(options, "auth-cache-ttl", 60.0), _option(options, "auth-cache-negative-ttl", 10.0))
    portal = build_portal(options["store_object"], options["credCheckers"], cache, reactor)
    settings = session_settings(options)
    # Failed logins from one address wait longer each time (doubling from
    # the failure delay, capped), across connections: Dovecot's auth penalty.
    throttle = LoginThrottle(reactor, base_delay=settings.auth_failure_delay,
                             max_delay=max(15.0, settings.auth_failure_delay))
    factory = POP3ServerFactory(portal, settings, reactor, throttle=throttle)
    for endpoint in options["pop3"]:
        listener = strports.service(endpoint, factory, reactor=reactor)
        listener.setName(f"pop3 {endpoint}")
        listener.setServiceParent(top)
    return top
