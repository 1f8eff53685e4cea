"""
The admin commands that need the reactor (C{check-config}, C{auth},
C{who}, C{kick}): each parses and builds what it needs first, reading
files and asking for a password while nothing else runs, then runs its
asynchronous part with L{twisted.internet.task.react}, which exits with
the command's status.  Errors are one line on standard error, never a
traceback.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from twisted.internet import defer, task
from twisted.python import usage

from popgate import config as config_file
from popgate.admin import auth, check, client, expire
from popgate.admin.options import parse_server_options
from popgate.backends import build_checkers, build_store
from popgate.build import build_portal
from popgate.probes import one_line

__all__ = ["ask", "run_auth", "run_check_config", "run_expire", "run_kick", "run_who"]

EX_USAGE = 2

Work = Callable[[Any], Coroutine[Any, Any, int]]


def _reactor() -> Any:
    """The entry points' reactor: the global one, looked up once here."""
    from twisted.internet import reactor

    return reactor


def ask(prompt: str) -> str:
    """
    A password from the terminal, without echo; from a pipe (a script), the
    next line of standard input, without a prompt.

    @raise EOFError: standard input ended.
    """
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def fail(command: str, message: object, status: int = 1) -> int:
    sys.stderr.write(f"popgate {command}: {one_line(message)}\n")
    return status


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _react(work: Work, command: str) -> NoReturn:
    """Run C{work(reactor)} and exit with its status (an unexpected error:
    one line, status 1)."""

    async def main(reactor: Any) -> None:
        try:
            status = await work(reactor)
        except client.AdminError as e:
            status = fail(command, e)
        except Exception as e:
            status = fail(command, f"unexpected error: {type(e).__name__}: {e}")
        raise SystemExit(status)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    raise SystemExit(1)  # react exits itself; never reached


# -- check-config


def run_check_config(args: Sequence[str]) -> int:
    reactor = _reactor()
    found, probes = check.check_config(args, reactor)
    if probes is None:
        return check.report(found, _write)

    async def work(reactor: Any) -> int:
        return check.report(await probes(), _write)

    _react(work, "check-config")


# -- auth test, auth lookup

AUTH_USAGE = ("usage: popgate auth test [server options] USER [PASSWORD]\n"
              "       popgate auth lookup [server options] USER\n"
              "server options: --config FILE, or twistd popgate's (--auth, --store, ...)")


def run_auth(args: Sequence[str]) -> int:
    if not args or args[0] not in ("test", "lookup"):
        if args and args[0] in ("-h", "--help"):
            _write(AUTH_USAGE + "\n")
            return 0
        return fail("auth", "give test or lookup: " + AUTH_USAGE.splitlines()[0][7:], EX_USAGE)
    what, rest = args[0], list(args[1:])
    command = f"auth {what}"
    if rest[:1] in (["-h"], ["--help"]):
        _write(AUTH_USAGE + "\n")
        return 0
    try:
        names = ["USER", "PASSWORD"] if what == "test" else ["USER"]
        options, arguments = parse_server_options(rest, names, required=1)
    except usage.UsageError as e:
        return fail(command, e, EX_USAGE)
    user = arguments[0]
    if what == "test":
        if len(arguments) > 1:
            password = arguments[1]
        else:
            try:
                password = ask(f"Password for {user}: ")
            except EOFError:
                return fail(command, "no password given (standard input ended)", EX_USAGE)
    reactor = _reactor()
    config = options.config
    try:
        store = build_store(config, reactor)
        checkers = build_checkers(config)
    except usage.UsageError as e:
        return fail(command, e, auth.EX_ERROR)
    if what == "test":
        portal = build_portal(store, checkers, reactor)  # no auth cache

        def work(reactor: Any) -> Coroutine[Any, Any, int]:
            return auth.auth_test(portal, store, user, password, _write)
    else:
        def work(reactor: Any) -> Coroutine[Any, Any, int]:
            return auth.auth_lookup(config.auth, checkers, store, user, _write)

    _react(work, command)


# -- expire

EXPIRE_USAGE = ("usage: popgate expire [--dry-run] [server options] (--all | USER...)\n"
                "server options: --config FILE, or twistd popgate's (--auth, --store, "
                "--expire, ...)")


def run_expire(args: Sequence[str]) -> int:
    """C{popgate expire}: L{popgate.admin.expire}."""
    if list(args[:1]) in (["-h"], ["--help"]):
        _write(EXPIRE_USAGE + "\n")
        return 0
    options = expire.ExpireOptions()
    try:
        options.parseOptions(list(args))
    except usage.UsageError as e:
        return fail("expire", e, EX_USAGE)
    reactor = _reactor()
    config = options.config
    try:
        store = build_store(config, reactor)
        checkers = build_checkers(config)
        users = options.users or expire.store_users(store)
    except usage.UsageError as e:
        return fail("expire", e, expire.EX_FAILED)

    def work(reactor: Any) -> Coroutine[Any, Any, int]:
        return expire.expire_mailboxes(store, checkers, users, config.expire,
                                       bool(options["dry-run"]), reactor, _write)

    _react(work, "expire")


# -- who, kick


def admin_socket(socket: str | None, config: str | None) -> str:
    """
    The admin socket's path: C{--socket}, else the C{admin_socket} of the
    server's configuration file.

    @raise usage.UsageError: neither gives one.
    """
    if socket:
        return socket
    if config:
        path = config_file.load(config).get("admin_socket")
        if not path:
            raise usage.UsageError(f"{config} sets no admin_socket (the server's "
                                   "--admin-socket)")
        return str(path)
    raise usage.UsageError("give the server's admin socket: --socket PATH, or --config FILE "
                           "(its admin_socket)")


def _admin(command: str, socket: str | None, config: str | None,
           call: Callable[[Any, str], Coroutine[Any, Any, int]]) -> int:
    try:
        path = admin_socket(socket, config)
    except usage.UsageError as e:
        return fail(command, e, EX_USAGE)
    _react(lambda reactor: call(reactor, path), command)


def run_who(socket: str | None, config: str | None, match: str) -> int:
    return _admin("who", socket, config,
                  lambda reactor, path: client.who(reactor, path, match, _write))


def run_kick(socket: str | None, config: str | None, match: str) -> int:
    if not match.strip():
        return fail("kick", "say whom: a user, an address or a network", EX_USAGE)
    return _admin("kick", socket, config,
                  lambda reactor, path: client.kick(reactor, path, match, _write))
