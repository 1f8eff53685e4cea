"""
The reload (SIGHUP, C{systemctl reload}): the configuration read again
exactly as start-up read it, the user stores and the TLS certificate built
again with the composition root's own functions, and what can change live
swapped into the running server in one step.

Start-up's command line is kept (L{Config.argv}); a reload parses it again
(so the C{--config} file is read again, and the command line still wins
over it) into a new L{Config}, compares it with the running one setting by
setting, and applies the settings declared C{live}
(L{popgate.settings.Setting.live}: user stores, the auth cache, the
certificate, the session settings, the connection limits, the log level).
A change to any other setting (listeners, the mail store, workers...) is
logged as needing a restart and not applied.  Either everything live is
applied or nothing is: a configuration that does not parse, a user store,
certificate or new mail store that cannot be built, or a file that cannot
be read leaves the running server as it was, and one line says why.

What applies: new sessions get the new session settings and TLS context;
open ones keep theirs.  Logins from then on go to the new user stores,
behind a new (empty) auth cache.  A user store whose C{--auth} is unchanged
is kept, with its connections (LDAP, SQL) and its own re-reading of its
file when the file changes; a new one is built.

Blocking work, all in the reactor's thread pool (inline on a reactor
without threads, in tests): reading the TOML file, building the user
stores (which stat their files) and a changed mail store, loading the
certificate and key, checking that each file is readable, and looking
up the host name.  The swap runs on the reactor thread and only builds
small objects (the portal's checkers, the session settings) and assigns
attributes.  A reload asked for while one runs waits for it, then one
more runs for all that asked meanwhile: two never overlap.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from popgate import startup_checks
from popgate.addresses import parse_networks
from popgate.backends import build_checker, build_store
from popgate.build import Server, build_portal, build_tls, session_settings
from popgate.cred.penalty import LoginPenalty
from popgate.delivery.users import UserResolver
from popgate.events import emit
from popgate.limits.process import build_limits
from popgate.logs import LEVELS
from popgate.settings import BY_KEY, SETTINGS, Config
from popgate.tls import ServerTLS

__all__ = ["Outcome", "Plan", "Reloader", "install", "prepare"]

log = Logger()

#: Parses a popgate command line into a L{Config}, as start-up did
#: (L{popgate.tap.parse_config}).
Parse = Callable[[Sequence[str]], Config]
#: Runs a blocking function and its arguments, returning a Deferred.
RunBlocking = Callable[..., "defer.Deferred[Any]"]

_LIMIT_KEYS = ("max_connections", "max_connections_per_ip", "exempt_networks")


@dataclass(frozen=True)
class Plan:
    """
    What a reload will put in place, built off the reactor thread.

    @ivar config: the configuration that runs once applied: the live
        settings from the new one, the others as they run now.
    @ivar changed: the live settings whose value changes (TOML keys).
    @ivar restart_needed: the settings that changed but need a restart.
    @ivar checkers: the user stores of C{config.auth}, in order.
    @ivar tls: the certificate and key of C{config}, loaded; None without.
    @ivar hostname: what C{config.hostname} means (the FQDN when unset).
    """

    config: Config
    changed: tuple[str, ...]
    restart_needed: tuple[str, ...]
    checkers: list[ICredentialsChecker]
    tls: ServerTLS | None
    hostname: str


@dataclass(frozen=True)
class Outcome:
    """What one reload did: C{result} C{ok} or C{failed} (then C{why})."""

    result: str
    changed: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
    certificate: str = ""
    why: str = ""


def _kept_or_built(wanted: Sequence[str], running: Sequence[str],
                   checkers: Sequence[ICredentialsChecker]) -> list[ICredentialsChecker]:
    """The user stores of C{wanted}: the running one for a description
    that runs now (its connections, its file watch), else a new one."""
    spare: dict[str, list[ICredentialsChecker]] = {}
    for description, checker in zip(running, checkers, strict=True):
        spare.setdefault(description, []).append(checker)
    return [spare[d].pop(0) if spare.get(d) else build_checker(d) for d in wanted]


def prepare(parse: Parse, running: Config, checkers: Sequence[ICredentialsChecker],
            hostname: str, reactor: Any) -> Plan:
    """
    Parse the command line of C{running} again and build what the new
    configuration needs (blocking: run it in a thread).

    @param checkers: the running user stores, of C{running.auth}.
    @param hostname: the running host name.
    @raise usage.UsageError: in one line, what makes the new configuration
        unusable; nothing was changed.
    """
    new = dataclasses.replace(parse(running.argv), argv=running.argv, run_as=running.run_as)
    changed = [s.key for s in SETTINGS if getattr(new, s.key) != getattr(running, s.key)]
    live = tuple(key for key in changed if BY_KEY[key].live)
    restart_needed = tuple(key for key in changed if not BY_KEY[key].live)
    if "store" in restart_needed or "route" in restart_needed:
        build_store(new, reactor)  # only to refuse one that cannot work (nothing connects yet)
    config = dataclasses.replace(running, **{key: getattr(new, key) for key in live})
    if config.pop3s and not config.tls_cert:
        raise usage.UsageError("the --pop3s listeners need --tls-cert and --tls-key until "
                               "they are removed by a restart")
    kept = _kept_or_built(config.auth, running.auth, checkers)
    tls = build_tls(config)
    # Every file the user stores and the certificate use, readable by this
    # process (which runs as --uid by now): the checks of start-up,
    # without the listeners and the store, which a reload keeps.
    files = dataclasses.replace(config, run_as=None, store=None, pop3=(), pop3s=(), lmtp=())
    problems = startup_checks.problems(files, None, kept, tls)
    if problems:
        raise usage.UsageError(problems[0])
    if config.hostname:
        hostname = config.hostname
    elif running.hostname:
        hostname = socket.getfqdn()
    return Plan(config, live, restart_needed, kept, tls, hostname)


def apply(server: Server, plan: Plan, reactor: Any) -> None:
    """
    Put C{plan} in place in C{server} (reactor thread).  What could fail
    is built first; then only attributes change, so a failure leaves the
    server as it was.
    """
    config = plan.config
    portal = build_portal(server.store, plan.checkers, reactor,
                          (config.auth_cache_ttl, config.auth_cache_negative_ttl),
                          getattr(server, "oauth", None))
    settings = session_settings(config, plan.hostname)
    limits = exempt = None
    if set(plan.changed) & set(_LIMIT_KEYS):
        # Its line says what the limits are now.
        limits = build_limits(reactor, config.max_connections, config.max_connections_per_ip,
                              parse_networks(config.exempt_networks)).connections
        exempt = LoginPenalty(reactor, exempt_networks=config.exempt_networks).exempt_networks
    resolver = UserResolver.from_checkers(plan.checkers) if server.lmtp is not None else None

    server.portal.checkers = portal.checkers
    server.checkers = plan.checkers
    server.pop3.settings = settings
    if plan.tls is None or server.tls is None:
        if plan.tls is not None:
            plan.tls.share_tickets(server.tickets)
        server.tls = server.pop3.tls = plan.tls
    else:  # the POP3S listeners hold this one
        server.tls.use(plan.tls)
    if limits is not None and exempt is not None:
        live = server.limits.connections
        live.max_connections, live.max_per_ip = limits.max_connections, limits.max_per_ip
        live.exempt = limits.exempt
        server.penalty.exempt_networks = exempt
    if server.lmtp is not None and resolver is not None:
        server.lmtp.resolver = resolver
        server.lmtp.set_hostname(plan.hostname)
    server.config = config


def _certificate(tls: ServerTLS | None) -> str:
    """C{/etc/popgate/fullchain.pem, expires 2027-02-24T10:00:00Z}, or empty."""
    if tls is None:
        return ""
    if tls.expires is None:
        return tls.cert_path
    return f"{tls.cert_path}, expires {tls.expires:%Y-%m-%dT%H:%M:%SZ}"


def _run_inline(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class Reloader:
    """
    The reload of one server: L{hangup} is its L{popgate.hangup.HangupHook}
    callback.  Logs one C{config.reload} event per reload.

    @param parse: how start-up parsed the command line.
    @param run_blocking: runs L{prepare}; by default in C{reactor}'s thread
        pool, or inline when it has none (a memory reactor).
    """

    def __init__(self, server: Server, parse: Parse, reactor: Any,
                 run_blocking: RunBlocking | None = None) -> None:
        self.server = server
        self.parse = parse
        self.reactor = reactor
        if run_blocking is None:
            if IReactorThreads.providedBy(reactor):
                def run_blocking(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
                    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
            else:
                run_blocking = _run_inline
        self.run_blocking = run_blocking
        self._running = False
        self._waiting: list[defer.Deferred[Outcome]] = []

    def describe(self) -> str:
        """What a reload reads, for the start-up line."""
        config = self.server.config
        where = f"the config file {config.config}" if config.config else "the command line"
        tls = f", the TLS certificate {self.server.tls.describe()}" if self.server.tls else ""
        return f"{where}, the user stores{tls}"

    def hangup(self) -> defer.Deferred[str | None]:
        """The SIGHUP callback: reload; the C{config.reload} line says how
        it went, so the hook's line need not (None)."""
        done: defer.Deferred[str | None] = defer.Deferred()
        self.reload().addCallback(lambda outcome: done.callback(None))
        return done

    def reload(self) -> defer.Deferred[Outcome]:
        """
        Reload, after the one running if any (several asking meanwhile
        share one reload).

        @return: a Deferred firing with the L{Outcome}, never failing.
        """
        waiter: defer.Deferred[Outcome] = defer.Deferred()
        self._waiting.append(waiter)
        if not self._running:
            self._start()
        return waiter

    def _start(self) -> None:
        self._running = True
        waiters, self._waiting = self._waiting, []

        def done(outcome: Outcome) -> None:
            self._running = False
            for waiter in waiters:
                waiter.callback(outcome)
            if self._waiting:
                self._start()

        defer.Deferred.fromCoroutine(self._once()).addCallback(done)

    async def _once(self) -> Outcome:
        server = self.server
        old_level = server.config.log_level
        try:
            plan = await self.run_blocking(prepare, self.parse, server.config,
                                           list(server.checkers),
                                           server.pop3.settings.hostname, self.reactor)
            apply(server, plan, self.reactor)
        except usage.UsageError as e:
            outcome = Outcome("failed", why=str(e))
        except Exception as e:
            log.failure("bug in the reload")
            outcome = Outcome("failed", why=f"internal error ({type(e).__name__}: {e}), the "
                                            "traceback is logged above")
        else:
            outcome = Outcome("ok", plan.changed, plan.restart_needed, _certificate(server.tls))
        self._log(outcome, old_level, server.config.log_level)
        return outcome

    def _log(self, outcome: Outcome, old_level: str, new_level: str) -> None:
        """The C{config.reload} line, written at the more verbose of the
        old and new log levels, so a change of level is itself logged."""
        observer = self.server.log_observer
        more_verbose = LEVELS[new_level] < LEVELS[old_level]
        if observer is not None and more_verbose:
            observer.set_level(new_level)
        level = None
        if outcome.result == "ok" and outcome.restart_needed:
            level = LogLevel.warn
        emit(log, "config.reload", level=level, result=outcome.result,
             changed=",".join(outcome.changed), restart_needed=",".join(outcome.restart_needed),
             certificate=outcome.certificate, why=outcome.why)
        if observer is not None and not more_verbose:
            observer.set_level(new_level)


def install(server: Server, parse: Parse, reactor: Any,
            run_blocking: RunBlocking | None = None) -> Reloader:
    """Make SIGHUP reload C{server} (see L{Reloader}); twistd's entry point
    and each C{--workers} process call it once the server is built."""
    reloader = Reloader(server, parse, reactor, run_blocking)
    server.hangup.register(reloader.hangup, reloader.describe())
    return reloader
