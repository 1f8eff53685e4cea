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
from popgate.hangup import hangup_hook
from popgate.limits import LMTP_REFUSALS, LimitedFactory, build_limits, prepare_listener
from popgate.workers import ReusePortListener, WorkerPool
from popgate.cred.penalty import LoginPenalty
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm


# Dovecot's auth penalty: 2 s after the first failure, doubling to 15 s.
_PENALTY_BASE = 2.0
_PENALTY_MAX = 15.0


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
        "login-timeout": "login_timeout",
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
    tls = options.get("tls_object")
    # First, so SIGHUP is handled before anything else starts; in every
    # configuration, since its default action kills the process.
    hangup = hangup_hook(reactor, tls)
    hangup.setServiceParent(top)
    cache = (_option(options, "auth-cache-ttl", 60.0), _option(options, "auth-cache-negative-ttl", 10.0))
    portal = build_portal(options["store_object"], options["credCheckers"], cache, reactor)
    settings = session_settings(options)
    # After failed logins from an address, its every login waits (doubling,
    # capped) before it is checked, one check at a time per address.
    penalty = LoginPenalty(reactor, base_delay=_PENALTY_BASE, max_delay=_PENALTY_MAX,
                           exempt_networks=tuple(options.get("exempt-networks") or ()))
    factory = POP3ServerFactory(portal, settings, reactor, penalty=penalty, tls=tls)
    shared = (options.get("workers") or 1) > 1 or bool(options.get("worker"))
    # One count of connections for every listener of this process.
    limits = build_limits(options, reactor)
    pop3 = LimitedFactory(factory, limits.connections)

    def listen(kind: str, endpoint: str, listening_factory: Any) -> None:
        description, listening_factory = prepare_listener(endpoint, listening_factory, reactor)
        if shared:
            listener: Any = ReusePortListener(reactor, description, listening_factory)
        else:
            listener = strports.service(description, listening_factory, reactor=reactor)
        limits.watch(listener)
        listener.setName(f"{kind} {endpoint}")
        listener.setServiceParent(top)

    for endpoint in options["pop3"]:
        listen("pop3", endpoint, pop3)
    for endpoint in options.get("pop3s") or []:
        # The same protocol behind a TLS layer: it sees an ISSLTransport,
        # so it knows the session is secure and offers no STLS.
        # The limits inside TLS, so a refusal is sent over TLS.
        listen("pop3s", endpoint, TLSMemoryBIOFactory(tls, False, pop3, clock=reactor))
    if options.get("lmtp"):
        delivery = lmtp_factory(options, options["store_object"], options["credCheckers"], reactor)
        for endpoint in options["lmtp"]:
            listen("lmtp", endpoint, LimitedFactory(delivery, limits.connections, per_ip=False,
                                                    refusals=LMTP_REFUSALS))
    if shared and not options.get("worker"):
        pool = WorkerPool(reactor, options["workers"], options.raw_args)
        pool.setServiceParent(top)
        hangup.pass_on(pool.pass_on_hangup)
    return top
