"""
C{popgate deliver -u USER [-f SENDER]}: a local delivery agent.  Reads one
message on standard input and delivers it the way LMTP does, for Postfix
(C{pipe} transport, C{mailbox_command}) and Exim (C{pipe} transport).

The exit code is a sysexits(3) code, which the MTAs act on:

- 0: delivered (durably);
- 67 (EX_NOUSER): no such user: the MTA bounces the message;
- 75 (EX_TEMPFAIL): a temporary failure (disk full, a lock held too long,
  a user store that is down) and also any configuration error: the MTA
  keeps the message queued and retries, so an admin's typo never bounces
  mail (Dovecot's LDA does the same);
- 64 (EX_USAGE): a malformed command line (no C{-u}, an unknown option).

Users are checked with the user stores given with C{--auth} (or in the
C{--config} file) that can look users up (htpasswd, passwd-file, LDAP,
SQL); if none can, every user is accepted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger, LogLevel, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure

from popgate import config, errors, settings
from popgate.backends import build_checkers, build_store
from popgate.delivery.message import add_trace_headers, split_from_line
from popgate.delivery.target import delivery_target
from popgate.delivery.users import UserResolver
from popgate.events import emit
from popgate.logs import FORMATS, LEVELS, file_log

log = Logger()

EX_OK = 0
EX_USAGE = 64
EX_NOUSER = 67
EX_CANTCREAT = 73
EX_TEMPFAIL = 75

DEFAULT_TIMEOUT = 600.0


class ConfigError(Exception):
    """A configuration that cannot work: exit with EX_TEMPFAIL."""


class _DeliverArgumentParser(argparse.ArgumentParser):
    """Usage errors exit with EX_USAGE (64), not argparse's 2."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EX_USAGE)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error("unrecognized arguments: " + " ".join(extras))
        return namespace, []


def add_subcommand(subparsers: Any) -> None:
    """Register C{deliver} with the C{popgate} command."""
    p = subparsers.add_parser(
        "deliver", help="deliver a message from standard input (for Postfix and Exim)",
        description="Deliver one message from standard input into the user's mailbox. "
                    "Exit codes: 0 delivered, 67 unknown user, 75 temporary failure "
                    "(retry), 64 bad command line.")
    p.__class__ = _DeliverArgumentParser
    p.add_argument("-u", "--user", required=True, help="the recipient (user name or address)")
    p.add_argument("-f", "--from", dest="sender",
                   help="the envelope sender (default: from a From_ line on the message)")
    p.add_argument("-c", "--config", help="popgate's TOML configuration file (store and auth)")
    p.add_argument("--store", help="the mail store, TYPE:ARGS, as for twistd popgate")
    p.add_argument("--auth", action="append", default=[],
                   help="a user store, TYPE:ARGS (repeatable), as for twistd popgate")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"give up (exit 75) after this many seconds (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--log-level", choices=list(LEVELS), default="warn",
                   help="the least severe events written to standard error (default warn; "
                        "info adds a line per delivery)")
    p.add_argument("--log-format", choices=list(FORMATS), default="text",
                   help="text or json (see popgate/events.py)")
    p.set_defaults(func=run)


def _fail(message: str) -> None:
    sys.stderr.write(f"popgate deliver: {message}\n")


def build(args: argparse.Namespace, reactor: Any) -> tuple[Any, list[Any]]:
    """
    The mail store (on C{reactor}) and the checkers the options and config
    file name, as twistd popgate builds them.

    @raise ConfigError: with a one-line reason.
    """
    try:
        values = config.load(args.config) if args.config else {}
        parsed = settings.resolve({"store": args.store, "auth": args.auth}, values)
        if not parsed.store:
            raise ConfigError("no mail store: give --store TYPE:ARGS or --config FILE")
        return build_store(parsed, reactor), build_checkers(parsed)
    except usage.UsageError as e:
        raise ConfigError(str(e)) from None


async def deliver_message(store: Any, checkers: list[Any], user: str,
                          sender: str | None, raw: bytes,
                          now: Callable[[], float] = time.monotonic) -> int:
    """
    Deliver C{raw} for C{user}; the sysexits code to exit with.  Every
    outcome is a C{deliver.delivery} event (C{now} times it); a failure
    is also said on standard error, in the words the MTA passes on.
    """
    started = now()
    name: str | None = None
    size = 0

    def outcome(code: int, result: str, reason: str = "", why: str = "") -> int:
        if why:
            _fail(why)
        emit(log, "deliver.delivery", result=result, reason=reason, recipient=user,
             user=name or "", sender=sender or "", size=size, duration=now() - started,
             why=why, exit=code)
        return code

    try:
        target = delivery_target(store)
    except ValueError as e:
        return outcome(EX_TEMPFAIL, "tempfail", "permanent", str(e))
    envelope_sender, message = split_from_line(raw)
    if sender is None:
        sender = envelope_sender
    elif sender.upper() == "MAILER-DAEMON":
        sender = ""  # how Postfix's pipe spells the null sender unless null_sender= is set
    try:
        name = await UserResolver.from_checkers(checkers).resolve(user)
    except errors.TemporaryFailure as e:
        return outcome(EX_TEMPFAIL, "tempfail", "user-lookup", f"cannot look up {user}: {e}")
    if name is None:
        return outcome(EX_NOUSER, "failed", "unknown-user", f"no such user: {user}")
    message = add_trace_headers(message, sender, user, only_missing=True)
    size = len(message)
    try:
        await defer.maybeDeferred(target.deliver, name, message, sender)
    except errors.InvalidUserName as e:
        return outcome(EX_NOUSER, "failed", "bad-mailbox", str(e))
    except errors.TemporaryFailure as e:
        emit(log, "store.error", level=LogLevel.debug, op="deliver", kind="temporary",
             user=name, why=str(e), session="-")
        return outcome(EX_TEMPFAIL, "tempfail", "temporary", f"temporary failure: {e}")
    except errors.PermanentFailure as e:
        emit(log, "store.error", level=LogLevel.debug, op="deliver", kind="permanent",
             user=name, why=str(e), session="-")
        return outcome(EX_CANTCREAT, "failed", "permanent", f"cannot deliver: {e}")
    return outcome(EX_OK, "ok")


def run_in_reactor(reactor: Any, work: Callable[[], Coroutine[Any, Any, int]],
                   timeout: float) -> int:
    """Run C{work()} on C{reactor}; its result, or EX_TEMPFAIL for an error
    or a timeout."""
    outcome: list[Any] = []

    def start() -> None:
        d = defer.Deferred.fromCoroutine(work())
        d.addTimeout(timeout, reactor)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    result = outcome[0] if outcome else None
    if isinstance(result, Failure):
        if result.check(defer.TimeoutError, defer.CancelledError):
            _fail(f"timed out after {timeout:g} seconds")
        else:
            _fail(f"internal error: {result.getErrorMessage()}")
            result.printTraceback(file=sys.stderr)
        return EX_TEMPFAIL
    return int(result) if result is not None else EX_TEMPFAIL


def _log_to_stderr(level: str = "warn", log_format: str = "text") -> None:
    """Warnings and errors go to stderr, which the MTA puts in its log
    (C{--log-level info} adds each delivery's line)."""
    globalLogBeginner.beginLoggingTo([file_log(sys.stderr, log_format, level)],
                                     redirectStandardIO=False)


def run(args: argparse.Namespace) -> int:
    """The C{popgate deliver} command: the entry point, so it takes the
    global reactor, once."""
    from twisted.internet import reactor

    _log_to_stderr(args.log_level, args.log_format)
    try:
        store, checkers = build(args, reactor)
    except ConfigError as e:
        _fail(f"configuration error: {e}")
        return EX_TEMPFAIL
    try:
        raw = sys.stdin.buffer.read()
    except OSError as e:
        _fail(f"cannot read the message: {e}")
        return EX_TEMPFAIL
    return run_in_reactor(
        reactor, lambda: deliver_message(store, checkers, args.user, args.sender, raw),
        args.timeout)

