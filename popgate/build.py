"""
The composition root: one function, L{build_server}, turns a parsed
L{Config} and a reactor into the running server.  twistd's C{makeService}
and every C{--workers} process call it; C{popgate deliver} builds only the
stores, with L{popgate.backends}.  Nothing below it looks up the reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from popgate import startup_checks
from popgate.backends import build_checkers, build_store
from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.cred.penalty import LoginPenalty
from popgate.delivery.lmtp import LMTPFactory
from popgate.delivery.service import lmtp_factory
from popgate.hangup import HangupHook
from popgate.limits import (
    LMTP_REFUSALS,
    LimitedFactory,
    ProcessLimits,
    build_limits,
    parse_networks,
    prepare_listener,
)
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.settings import Config
from popgate.tls import ServerTLS, TLSConfigError, reload_on_hangup
from popgate.workers.pool import WorkerPool
from popgate.workers.reuseport import ReusePortListener

# Dovecot's auth penalty: 2 s after the first failure, doubling to 15 s.
_PENALTY_BASE = 2.0
_PENALTY_MAX = 15.0

#: Makes a listening endpoint of a description (a test passes fakes).
EndpointMaker = Callable[[Any, str], Any]


def build_tls(config: Config) -> ServerTLS | None:
    """
    The certificate and key of C{--tls-cert}/C{--tls-key}, or None.

    @raise usage.UsageError: the files cannot be used.
    """
    if not config.tls_cert or not config.tls_key:
        return None
    try:
        return ServerTLS(config.tls_cert, config.tls_key)
    except TLSConfigError as e:
        raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None


def build_portal(store: Any, checkers: Sequence[ICredentialsChecker],
                 cache: tuple[float, float] = (0, 0), clock: Any = None) -> Portal:
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


def session_settings(config: Config, hostname: str) -> SessionSettings:
    """The L{SessionSettings} every POP3 session of C{config} gets."""
    return SessionSettings(
        implementation=config.implementation, greeting=config.greeting, hostname=hostname,
        idle_timeout=config.idle_timeout, login_timeout=config.login_timeout,
        auth_failure_delay=config.auth_failure_delay,
        max_auth_failures=config.max_auth_failures, max_bad_commands=config.max_bad_commands,
        allow_plaintext_auth=config.allow_plaintext_auth)


def hangup_hook(reactor: Any, tls: ServerTLS | None = None) -> HangupHook:
    """The hook every server gets: it reloads the certificate when there is
    one, and says so when there is none."""
    hook = HangupHook(reactor, why_idle="no TLS certificate configured")
    if tls is not None:
        reload, description = reload_on_hangup(tls)
        hook.register(reload, description)
    return hook


class Server(service.MultiService):
    """
    The running server: its listeners (and the hangup hook, and the worker
    pool) are its child services, named C{hangup}, C{pop3 ENDPOINT},
    C{pop3s ENDPOINT}, C{lmtp ENDPOINT}, C{workers}; the parts they share
    are attributes.
    """

    def __init__(self, config: Config, store: Any, checkers: list[ICredentialsChecker],
                 tls: ServerTLS | None, hangup: HangupHook, portal: Portal,
                 penalty: LoginPenalty, pop3: POP3ServerFactory, limits: ProcessLimits,
                 lmtp: LMTPFactory | None) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.checkers = checkers
        self.tls = tls
        self.hangup = hangup
        self.portal = portal
        self.penalty = penalty
        self.pop3 = pop3
        self.limits = limits
        self.lmtp = lmtp
        self.pool: WorkerPool | None = None


def _endpoint(reactor: Any, description: str) -> Any:
    return endpoints.serverFromString(reactor, description)


def build_server(config: Config, reactor: Any,
                 endpoint: EndpointMaker = _endpoint) -> Server:
    """
    The server C{config} describes, on C{reactor}; C{endpoint} makes each
    listening endpoint.  A port that cannot be bound stops start-up
    instead of leaving a server with no listener.

    @raise usage.UsageError: in one line, for a store, user store,
        certificate or endpoint that cannot be used, or a file the C{--uid}
        user could not read.
    """
    store = build_store(config)
    checkers = build_checkers(config)
    tls = build_tls(config)
    if config.pop3s and tls is None:
        raise usage.UsageError("--pop3s needs --tls-cert and --tls-key")
    hostname = config.hostname or socket.getfqdn()
    lmtp = lmtp_factory(store, checkers, hostname, reactor) if config.lmtp else None
    startup_checks.check(config, store, checkers, tls)  # last: every path is known

    # First, so SIGHUP is handled before anything else starts; in every
    # configuration, since its default action kills the process.
    hangup = hangup_hook(reactor, tls)
    portal = build_portal(store, checkers, (config.auth_cache_ttl, config.auth_cache_negative_ttl),
                          reactor)
    # After failed logins from an address, its every login waits (doubling,
    # capped) before it is checked, one check at a time per address.
    penalty = LoginPenalty(reactor, base_delay=_PENALTY_BASE, max_delay=_PENALTY_MAX,
                           exempt_networks=config.exempt_networks)
    factory = POP3ServerFactory(portal, session_settings(config, hostname), reactor,
                                penalty=penalty, tls=tls)
    # One count of connections for every listener of this process.
    limits = build_limits(reactor, config.max_connections, config.max_connections_per_ip,
                          parse_networks(config.exempt_networks))
    server = Server(config, store, checkers, tls, hangup, portal, penalty, factory, limits, lmtp)
    hangup.setServiceParent(server)
    shared = config.workers > 1 or config.worker

    def listen(kind: str, description: str, listening_factory: Any) -> None:
        inner, listening_factory = prepare_listener(description, listening_factory, reactor)
        if shared:
            listener: Any = ReusePortListener(reactor, inner, listening_factory)
        else:
            try:
                listener = StreamServerEndpointService(endpoint(reactor, inner),
                                                       listening_factory)
            except ValueError as e:
                raise usage.UsageError(f"--{kind} {description}: {e}") from None
            listener._raiseSynchronously = True  # fail start-up, not just log
        limits.watch(listener)
        listener.setName(f"{kind} {description}")
        listener.setServiceParent(server)

    pop3 = LimitedFactory(factory, limits.connections)
    for description in config.pop3:
        listen("pop3", description, pop3)
    for description in config.pop3s:
        # The same protocol behind a TLS layer: it sees an ISSLTransport,
        # so it knows the session is secure and offers no STLS.
        # The limits inside TLS, so a refusal is sent over TLS.
        listen("pop3s", description, TLSMemoryBIOFactory(tls, False, pop3, clock=reactor))
    if lmtp is not None:
        delivery = LimitedFactory(lmtp, limits.connections, per_ip=False,
                                  refusals=LMTP_REFUSALS)
        for description in config.lmtp:
            listen("lmtp", description, delivery)
    if shared and not config.worker:
        server.pool = WorkerPool(reactor, config.workers, config.argv)
        server.pool.setName("workers")
        server.pool.setServiceParent(server)
        hangup.pass_on(server.pool.pass_on_hangup)
    return server
