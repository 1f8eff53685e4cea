"""
C{popgate check-config [--uid USER] [--gid GROUP] [server options]}: what
start-up would refuse, and what it would only find out at the first
login, in one line per problem; exit 0 (with an "ok" summary) or 1.

The options are parsed by twistd's own C{ServerOptions} and popgate's
L{popgate.tap.Options}, exactly as C{twistd --uid USER popgate ...} would
parse them.  Then what L{popgate.build.build_server} builds is built, but
nothing listens: the mail store, each user store, the certificate and
key, each listener's endpoint, the LMTP side; the files are tried as the
C{--uid} user (L{popgate.startup_checks}; as this process without
C{--uid}); and each user store is probed (L{popgate.probes}: the file
read, the directory connected to and bound, the queries run), and so is
the mail store when it can be (L{IReachable}: the PostgreSQL store
connects and checks its schema, so a wrong DSN or a database without
C{popgate db init} shows here, not at the first login).

Each part is checked even when another failed, so one run lists every
problem.  The building is done before the reactor runs; the probes run
on it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, endpoints
from twisted.python import usage

from popgate import startup_checks
from popgate.admin.options import parse_as_twistd
from popgate.backends import build_checker, build_store
from popgate.build import build_tls
from popgate.delivery.service import lmtp_factory
from popgate.i18n.offer import language_offer
from popgate.interfaces import IReachable
from popgate.limits.listener import prepare_listener
from popgate.probes import one_line, probe_all, probe_one
from popgate.settings import Config

__all__ = ["Findings", "build_parts", "check_config", "probe_mail_store", "probe_stores"]

#: A certificate that expires sooner than this is a warning.
EXPIRY_WARNING = datetime.timedelta(days=14)


@dataclass
class Findings:
    """What a check found: problems (exit 1), warnings, and what is fine."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)
    store: Any = None
    checkers: list[tuple[str, Any]] = field(default_factory=list)

    def attempt(self, step: Callable[[], Any]) -> Any:
        """C{step()}, or C{None} with its one-line error recorded."""
        try:
            return step()
        except (usage.UsageError, ValueError, OSError) as e:
            self.problems.append(one_line(e))
            return None


def build_parts(config: Config, reactor: Any, now: datetime.datetime | None = None) -> Findings:
    """Build everything the server would, listening nowhere (blocking: call
    it before the reactor runs)."""
    found = Findings()
    found.store = found.attempt(lambda: build_store(config, reactor))
    if found.store is not None:
        found.fine.append(f"store {(config.store or '').partition(':')[0]}")
    for description in config.auth:
        checker = found.attempt(lambda d=description: build_checker(d))  # type: ignore[misc]
        if checker is not None:
            found.checkers.append((description, checker))
    tls = found.attempt(lambda: build_tls(config))
    if tls is not None:
        _check_expiry(found, tls, now or datetime.datetime.now(datetime.UTC))
    _check_listeners(found, config, reactor)
    # A language without a catalog, a catalog that does not load.
    found.attempt(lambda: language_offer(config.languages, config.preferred_language,
                                         config.locale_dir))
    if config.lmtp and found.store is not None:
        hostname = config.hostname or socket.getfqdn()
        found.attempt(lambda: lmtp_factory(found.store, [c for _, c in found.checkers],
                                           hostname, reactor))
    if config.admin_socket:
        directory = os.path.dirname(os.path.abspath(config.admin_socket))
        if not os.path.isdir(directory):
            found.problems.append(f"--admin-socket {config.admin_socket}: no directory "
                                  f"{directory}")
    # The files as the --uid user: the store's, the certificate's and the
    # sockets' at once, then each user store's, so that one whose file is
    # missing is not probed too (one problem, one line).
    found.problems += found.attempt(lambda: startup_checks.problems(
        config, found.store, [], tls)) or []
    alone = dataclasses.replace(config, pop3=(), pop3s=(), lmtp=())
    usable = []
    for description, checker in found.checkers:
        files = found.attempt(lambda c=checker: startup_checks.problems(  # type: ignore[misc]
            alone, None, [c], None))
        found.problems += files or []
        if not files:
            usable.append((description, checker))
    found.checkers = usable
    return found


def _check_expiry(found: Findings, tls: Any, now: datetime.datetime) -> None:
    expires = tls.expires
    if expires is None:
        found.fine.append("TLS certificate and key")
        return
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    if expires <= now:
        found.problems.append(f"--tls-cert {tls.cert_path}: the certificate expired on {when}")
    elif expires - now < EXPIRY_WARNING:
        found.warnings.append(f"--tls-cert {tls.cert_path}: the certificate expires on {when}")
    else:
        found.fine.append(f"TLS certificate (expires {expires:%Y-%m-%d})")


def _check_listeners(found: Findings, config: Config, reactor: Any) -> None:
    count = 0
    for kind, descriptions in (("pop3", config.pop3), ("pop3s", config.pop3s),
                               ("lmtp", config.lmtp)):
        for description in descriptions:
            try:
                inner, _ = prepare_listener(description, None, reactor)
                endpoints.serverFromString(reactor, inner)
            except Exception as e:  # whatever the endpoint parser raises
                found.problems.append(f"--{kind} {description}: {one_line(e)}")
            else:
                count += 1
    if count:
        found.fine.append(f"{count} listener{'s' if count != 1 else ''}")


async def probe_stores(found: Findings, reactor: Any) -> None:
    """Probe every user store built; record what each said."""
    descriptions = [d for d, _ in found.checkers]
    answers = await probe_all(descriptions, [c for _, c in found.checkers], reactor)
    for answer in answers:
        if answer.ok is None:
            found.warnings.append(f"{answer.label}: {answer.text}")
        elif answer.ok:
            found.fine.append(f"{answer.label[len('--auth '):]} ({answer.text})")
        else:
            found.problems.append(f"{answer.label}: {answer.text}")


async def probe_mail_store(found: Findings, description: str, reactor: Any) -> None:
    """
    Probe the mail store built, if it provides L{IReachable} (the
    directory stores' files were checked by L{build_parts}); what it said
    goes with its C{store TYPE} entry, or replaces it with one problem
    line: placed where the problems ended when the probe began, so that it
    comes before those of user stores probed meanwhile, whichever answers
    first.
    """
    if found.store is None or not IReachable.providedBy(found.store):
        return
    kind = description.partition(":")[0]
    entry = f"store {kind}"
    position = len(found.problems)
    answer = await probe_one(f"--store {kind}", found.store, reactor)
    if answer.ok:
        found.fine = [f"{entry} ({answer.text})" if f == entry else f for f in found.fine]
    else:
        found.fine = [f for f in found.fine if f != entry]
        found.problems.insert(position, f"{answer.label}: {answer.text}")


def report(found: Findings, write: Callable[[str], Any]) -> int:
    """Write the findings; the exit status."""
    for problem in found.problems:
        write(problem + "\n")
    for warning in found.warnings:
        write(f"warning: {warning}\n")
    if found.problems:
        count = len(found.problems)
        write(f"popgate check-config: {count} problem{'s' if count != 1 else ''}\n")
        return 1
    write(f"popgate check-config: ok: {', '.join(found.fine)}\n")
    return 0


def check_config(args: Sequence[str], reactor: Any) -> tuple[Findings, Any]:
    """
    Parse and build (before the reactor runs).

    @return: the findings so far, and the probes to run on the reactor
        (C{None} when the options did not parse).
    """
    try:
        options = parse_as_twistd(args)
    except usage.UsageError as e:
        return Findings(problems=[one_line(e)]), None
    config = options.config
    found = build_parts(config, reactor)
    if options.parent.get("uid") is not None and os.geteuid() != 0:
        found.warnings.append("--uid: not root, so the files were checked as this user, not "
                              "as the --uid user")

    async def probes() -> Findings:
        # At once: a database and a directory that are both down cost one timeout.
        await defer.gatherResults([
            defer.Deferred.fromCoroutine(probe_mail_store(found, config.store or "", reactor)),
            defer.Deferred.fromCoroutine(probe_stores(found, reactor))])
        return found

    return found, probes
