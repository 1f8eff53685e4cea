"""
The composition root: one function, L{build_server}, turns a parsed
L{Config} and a reactor into the running server.  twistd's C{makeService}
and every C{--workers} process call it; C{popgate deliver} builds only the
stores, with L{popgate.backends}.  Nothing below it looks up the reactor.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.systemd import ListenFDs

from popgate import startup_checks
from popgate.addresses import parse_networks
from popgate.admin.server import admin_listener
from popgate.backends import build_checkers, build_store
from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.cred.penalty import LoginPenalty
from popgate.delivery.lmtp_factory import LMTPFactory
from popgate.delivery.service import lmtp_factory
from popgate.eager_writes import EagerEndpoint
from popgate.hangup import HangupHook
from popgate.i18n.offer import language_offer
from popgate.interfaces import IAuthenticatingStore
from popgate.limits.listener import prepare_listener
from popgate.limits.process import ProcessLimits, build_limits
from popgate.limits.refusal import LMTP_REFUSALS, LimitedFactory
from popgate.logs import ServerLog, install_on
from popgate.metrics import Metrics
from popgate.metrics_web import MetricsService, metrics_site, worker_endpoint
from popgate.oauth import TokenChecker
from popgate.oauth.registry import make_validator
from popgate.plural import plural
from popgate.policy import parse_expire
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.probes import StartupProbe
from popgate.realm import MaildropRealm
from popgate.settings import Config
from popgate.stores.history import login_history
from popgate.tls import ServerTLS, TLSConfigError
from popgate.tls_tickets import TicketKeys, TicketRotation
from popgate.tls_transport import PopgateTLSFactory
from popgate.workers.pool import WorkerPool
from popgate.workers.reuseport import ReusePortListener

# Dovecot's auth penalty: 2 s after the first failure, doubling to 15 s.
_PENALTY_BASE = 2.0
_PENALTY_MAX = 15.0

log = Logger()

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


def build_oauth(config: Config, reactor: Any) -> ICredentialsChecker | None:
    """
    The checker of bearer tokens C{--oauth} configures, or None.

    @raise usage.UsageError: an unknown validator or bad arguments.
    """
    if not config.oauth:
        return None
    try:
        return TokenChecker(make_validator(config.oauth, reactor))
    except (ValueError, OSError) as e:
        raise usage.UsageError(f"--oauth: {e}") from None


def build_portal(store: Any, checkers: Sequence[ICredentialsChecker], reactor: Any,
                 cache: tuple[float, float] = (0, 0),
                 oauth: ICredentialsChecker | None = None) -> Portal:
    """
    A portal with one checker per credentials interface (a chain when
    several user stores handle the same kind of credentials), each behind
    an auth cache when C{cache} (positive and negative TTLs) is not off;
    C{reactor} is the cache's clock and the realm's.  C{oauth} checks
    bearer tokens (L{build_oauth}), never cached: its validator caches.
    """
    portal = Portal(MaildropRealm(store, reactor))
    if any(cache):
        checkers = [CachingChecker(c, positive_ttl=cache[0], negative_ttl=cache[1], clock=reactor)
                    for c in checkers]
    if IAuthenticatingStore.providedBy(store):  # a proxy: the upstream may check
        checkers = store.checkers(checkers)
    by_interface: dict[Any, list[Any]] = {}
    for checker in checkers:
        for interface in checker.credentialInterfaces:
            by_interface.setdefault(interface, []).append(checker)
    for interface, handlers in by_interface.items():
        checker = handlers[0] if len(handlers) == 1 else ChainedChecker(handlers)
        portal.registerChecker(checker, interface)
    if oauth is not None:
        for interface in oauth.credentialInterfaces:
            portal.registerChecker(oauth, interface)
    return portal


def session_settings(config: Config, hostname: str) -> SessionSettings:
    """
    The L{SessionSettings} every POP3 session of C{config} gets.  The first
    call reads the message catalogs (start-up); later ones (a reload) find
    them in the process's cache.

    @raise usage.UsageError: for a language without a catalog.
    """
    return SessionSettings(
        languages=language_offer(config.languages, config.preferred_language, config.locale_dir),
        implementation=config.implementation, greeting=config.greeting, hostname=hostname,
        idle_timeout=config.idle_timeout, login_timeout=config.login_timeout,
        auth_failure_delay=config.auth_failure_delay,
        max_auth_failures=config.max_auth_failures, max_bad_commands=config.max_bad_commands,
        allow_plaintext_auth=config.allow_plaintext_auth, enable_last=config.enable_last,
        login_delay=config.login_delay,
        expire=None if config.expire is None else parse_expire(config.expire))


def hangup_hook(reactor: Any) -> HangupHook:
    """The hook every server gets, so SIGHUP never kills; what it reloads
    (the configuration, the user stores, the certificate) registers once
    the server is built: L{popgate.reload.install}, called by twistd's
    entry point and by each C{--workers} process."""
    return HangupHook(reactor, why_idle="no reload installed")


class Server(service.MultiService):
    """
    The running server: its listeners (and the hangup hook, and the worker
    pool) are its child services, named C{hangup}, C{pop3 ENDPOINT},
    C{pop3s ENDPOINT}, C{lmtp ENDPOINT}, C{admin-socket PATH},
    C{workers}; the parts they share are attributes.
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
        #: The C{--metrics} counters and their listener, when configured.
        self.metrics: MetricsService | None = None
        #: twistd's log observer (L{popgate.logs.ServerLog}), set by
        #: C{makeService}; a reload changes its level.
        self.log_observer: ServerLog | None = None
        #: The C{--oauth} checker of bearer tokens (L{build_oauth}), if any.
        self.oauth: ICredentialsChecker | None = None
        #: The TLS session ticket keys of this process (all workers' in
        #: the first process's; L{popgate.tls_tickets}); a reload keeps them.
        self.tickets = TicketKeys()

    #: Asks the user stores whether they answer, once started: loud, not
    #: fatal, since a directory down at boot can come back.
    probe: StartupProbe | None = None

    def startService(self) -> None:
        super().startService()
        if self.probe is not None:
            self.probe.start()

    #: Set by twistd's entry point (L{popgate.tap.makeService}): a
    #: listener that cannot listen ends the process with one log line
    #: (which option, what is wrong) instead of twistd's traceback.
    exit_on_listen_failure = False
    #: Set by twistd's entry point: tells a daemonizing twistd's first
    #: process why start-up failed (L{popgate.tap.start_failed}); that
    #: process waits for a word from the daemon and would wait forever
    #: for one that ends with C{SystemExit}.
    report_start_failure: Callable[[str], None] | None = None

    def privilegedStartService(self) -> None:
        # MultiService's, one child at a time, so a failure names its listener.
        service.Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except (CannotListenError, OSError) as e:
                if not self.exit_on_listen_failure:
                    raise
                why = listen_failure(e)
                log.critical("--{listener}: {why}", listener=child.name, why=why)
                if self.report_start_failure is not None:
                    self.report_start_failure(f"--{child.name}: {why}")
                raise SystemExit(1) from None

    def setServiceParent(self, parent: Any) -> None:
        # twistd logs to its application's ILogObserver component, and
        # hands the application here just after makeService returns.
        if self.log_observer is not None:
            install_on(parent, self.log_observer)
        super().setServiceParent(parent)


def listen_failure(error: BaseException) -> str:
    """C{cannot listen on 127.0.0.1:110: Address already in use}."""
    if isinstance(error, CannotListenError):
        where = f"{error.interface or '*'}:{error.port}"
        cause = error.socketError
    else:
        where, cause = "", error
    why = getattr(cause, "strerror", None) or str(cause)
    return f"cannot listen on {where}: {why}" if where else f"cannot listen: {why}"


def systemd_socket_missing(description: str, passed: ListenFDs | None = None,
                           environ: Mapping[str, str] | None = None) -> str:
    """
    Why the C{systemd:} endpoint C{description} found no socket, which
    Twisted's parser says with a bare C{IndexError} (C{index=}) or
    C{KeyError} (C{name=}): C{no socket passed by systemd (LISTEN_FDS
    unset...)}, or what systemd did pass.

    @param passed: the sockets systemd passed; by default the parser's
        own, read once at import (Twisted then removes C{LISTEN_FDS} and
        C{LISTEN_PID} from the environment, so it cannot be read again).
    """
    if passed is None:
        passed = getattr(endpoints._SystemdParser, "_sddaemon", None) or ListenFDs([])
    env = os.environ if environ is None else environ
    count = len(passed.inheritedDescriptors())
    if not count:
        if "LISTEN_FDS" in env and env.get("LISTEN_PID") != str(os.getpid()):
            return "no socket passed by systemd (LISTEN_PID is not this process)"
        return "no socket passed by systemd (LISTEN_FDS unset: not started by a socket unit)"
    keys = dict(part.partition("=")[::2] for part in description.split(":")[1:] if "=" in part)
    if "name" in keys:
        names = ", ".join(passed.inheritedNamedDescriptors()) or "none"
        return (f"systemd passed {plural(count, 'socket')}, none named {keys['name']!r} "
                f"(names: {names})")
    return (f"systemd passed {plural(count, 'socket')}, none with index {keys.get('index', '?')}"
            " (the first is 0)")


def metrics_service(config: Config, reactor: Any, endpoint: EndpointMaker,
                    limits: ProcessLimits, factory: POP3ServerFactory) -> MetricsService:
    """
    C{--metrics}: the counters of this process (counting while the service
    runs) and their web listener, on this worker's own endpoint (see
    L{popgate.metrics_web.worker_endpoint}).
    """
    assert config.metrics
    description = config.metrics
    if config.workers > 1 or config.worker:
        description = worker_endpoint(description, config.worker_number)
    metrics = Metrics(connections=limits.connections, sessions=factory.sessions.logged_in)
    listener = StreamServerEndpointService(
        make_endpoint(endpoint, reactor, description, f"--metrics {config.metrics}"),
        metrics_site(metrics.registry, reactor))
    listener._raiseSynchronously = True  # fail start-up, not just log
    served = MetricsService(metrics, listener)
    served.setName(f"metrics {description}")  # a listen failure names it
    return served


def make_endpoint(endpoint: EndpointMaker, reactor: Any, description: str, option: str) -> Any:
    """
    C{endpoint(reactor, description)}, for C{option} (C{--pop3 ...}).

    @raise usage.UsageError: naming C{option}, for a description that does
        not parse or a C{systemd:} socket that was not passed.
    """
    try:
        return endpoint(reactor, description)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None
    except (IndexError, KeyError):
        if not description.startswith("systemd:"):
            raise
        raise usage.UsageError(f"{option}: {systemd_socket_missing(description)}") from None


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
    store = build_store(config, reactor)
    checkers = build_checkers(config)
    tls = build_tls(config)
    if config.pop3s and tls is None:
        raise usage.UsageError("--pop3s needs --tls-cert and --tls-key")
    hostname = config.hostname or socket.getfqdn()
    lmtp = lmtp_factory(store, checkers, hostname, reactor) if config.lmtp else None
    startup_checks.check(config, store, checkers, tls)  # last: every path is known
    if (config.login_delay or config.expire is not None) and login_history(store) is None:
        log.warn("--login-delay/--expire: the {store} mail store keeps no login or retrieval "
                 "history, so CAPA advertises them but they are not enforced",
                 store=(config.store or "").split(":", 1)[0])

    # First, so SIGHUP is handled before anything else starts; in every
    # configuration, since its default action kills the process.
    hangup = hangup_hook(reactor)
    oauth = build_oauth(config, reactor)
    portal = build_portal(store, checkers, reactor,
                          (config.auth_cache_ttl, config.auth_cache_negative_ttl), oauth)
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
    server.oauth = oauth  # kept by a reload (popgate.reload), which rebuilds the portal
    hangup.setServiceParent(server)
    shared = config.workers > 1 or config.worker
    if config.worker:  # the first process's keys, and new ones from it
        server.tickets = TicketKeys.from_environment()
    if tls is not None:
        tls.share_tickets(server.tickets)
        if shared and not config.worker and not server.tickets.shared:
            log.warn("--workers: this OpenSSL cannot be given TLS session ticket keys, so "
                     "each worker keeps its own; a client resumes its TLS session only when "
                     "it reaches the worker that made its ticket")

    def listen(kind: str, description: str, listening_factory: Any) -> None:
        inner, listening_factory = prepare_listener(description, listening_factory, reactor,
                                                    parse_networks(config.proxy_trusted))
        if shared:
            listener: Any = ReusePortListener(reactor, inner, listening_factory)
        else:
            listener = StreamServerEndpointService(
                EagerEndpoint(make_endpoint(endpoint, reactor, inner, f"--{kind} {description}")),
                listening_factory)
            listener._raiseSynchronously = True  # fail start-up, not just log
        limits.watch(listener)
        listener.setName(f"{kind} {description}")
        listener.setServiceParent(server)

    pop3 = LimitedFactory(factory, limits.connections)
    for description in config.pop3:
        listen("pop3", description, pop3)
    if tls is not None:  # (--pop3s without it was refused above)
        for description in config.pop3s:
            # The same protocol behind a TLS layer: it sees an ISSLTransport,
            # so it knows the session is secure and offers no STLS.
            # The limits inside TLS, so a refusal is sent over TLS.
            listen("pop3s", description, PopgateTLSFactory(tls, False, pop3, clock=reactor))
    if lmtp is not None:
        delivery = LimitedFactory(lmtp, limits.connections, per_ip=False,
                                  refusals=LMTP_REFUSALS, protocol="lmtp")
        for description in config.lmtp:
            listen("lmtp", description, delivery)
    if config.metrics:
        server.metrics = metrics_service(config, reactor, endpoint, limits, factory)
        server.metrics.setServiceParent(server)
    if config.admin_socket:
        # Each process its own socket: popgate who asks PATH, PATH.1, ...
        path = config.admin_socket
        if config.worker:
            path = f"{path}.{config.worker_number}"
        admin = admin_listener(reactor, path, factory.sessions)
        admin.setName(f"admin-socket {path}")
        admin.setServiceParent(server)
    if not config.worker:  # once, not once per --workers process
        server.probe = StartupProbe(reactor, config.auth, checkers)
    if shared and not config.worker:
        server.pool = WorkerPool(reactor, config.workers, config.argv, tickets=server.tickets)
        server.pool.setName("workers")
        server.pool.setServiceParent(server)
        hangup.pass_on(server.pool.pass_on_hangup)
    if tls is not None and not config.worker:  # the workers get theirs from here
        rotation = TicketRotation(reactor, server.tickets,
                                  server.pool.pass_on_tickets if server.pool is not None else None)
        rotation.setName("tls-tickets")
        rotation.setServiceParent(server)
    return server
