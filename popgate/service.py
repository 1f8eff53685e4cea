"""
Building the running service from parsed options: the portal, the mail
store, and one listener per endpoint.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service, strports
from twisted.cred.portal import Portal
from twisted.protocols.tls import TLSMemoryBIOFactory

from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.delivery.service import lmtp_factory
from popgate.workers import ReusePortListener, WorkerPool
from popgate.cred.throttle import LoginThrottle
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.tls import ReloadOnHangup


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
    values["allow_plaintext_auth"] = bool(options.get("allow-plaintext-auth"))
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
    tls = options.get("tls_object")
    factory = POP3ServerFactory(portal, settings, reactor, throttle=throttle, tls=tls)
    shared = (options.get("workers") or 1) > 1 or bool(options.get("worker"))

    def listen(kind: str, endpoint: str, listening_factory: Any) -> None:
        if shared:
            listener: Any = ReusePortListener(reactor, endpoint, listening_factory)
        else:
            listener = strports.service(endpoint, listening_factory, reactor=reactor)
        listener.setName(f"{kind} {endpoint}")
        listener.setServiceParent(top)

    for endpoint in options["pop3"]:
        listen("pop3", endpoint, factory)
    for endpoint in options.get("pop3s") or []:
        # The same protocol behind a TLS layer: it sees an ISSLTransport,
        # so it knows the session is secure and offers no STLS.
        listen("pop3s", endpoint, TLSMemoryBIOFactory(tls, False, factory, clock=reactor))
    if options.get("lmtp"):
        delivery = lmtp_factory(options, options["store_object"], options["credCheckers"], reactor)
        for endpoint in options["lmtp"]:
            listen("lmtp", endpoint, delivery)
    if shared and not options.get("worker"):
        # Before ReloadOnHangup, whose SIGHUP handler then chains to ours.
        WorkerPool(reactor, options["workers"], options.raw_args).setServiceParent(top)
    if tls is not None:
        ReloadOnHangup(tls, reactor).setServiceParent(top)
    return top
