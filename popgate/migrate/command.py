"""
The C{popgate migrate} entry point: parse, build the old store, find the
users and connect to the database while nothing else runs (a mistake is
one line before anything is opened), then copy user after user with
L{twisted.internet.task.react}, printing a line for each.

Exit status: 0 every user copied and verified (or, with C{--dry-run},
counted); 1 a user was not copied or does not match, or the database
cannot be used; 2 a bad command line; 130 interrupted (what was committed
is kept: run again).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.python import usage

from popgate.cred.names import normalize_user
from popgate.migrate import options, source, users
from popgate.migrate.copy import migrate_user
from popgate.migrate.report import UserResult, summary, user_line
from popgate.migrate.target import Target, TargetError, open_target
from popgate.plural import plural
from popgate.probes import one_line

__all__ = ["add_subcommand", "migrate_all", "run"]

EX_OK, EX_FAILED, EX_USAGE, EX_INTERRUPTED = 0, 1, 2, 130

Write = Callable[[str], Any]


def add_subcommand(subparsers: Any) -> None:
    """Register C{migrate} with the C{popgate} command."""
    p = subparsers.add_parser(
        "migrate", help="copy Maildir or mbox mailboxes into the PostgreSQL store, "
                        "keeping UIDLs (a copy: the old mailboxes are not changed)",
        description=options.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_arguments(p)
    p.set_defaults(func=run)


def _reactor() -> Any:
    """The command's reactor: the global one, looked up here only."""
    from twisted.internet import reactor

    return reactor


def _fail(message: object, status: int = EX_FAILED) -> int:
    sys.stderr.write(f"popgate migrate: {one_line(message)}\n")
    return status


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def select_users(plan: options.Plan, store: Any, warn: Write) -> list[str]:
    """
    The users to copy: those named, those in C{--users-from}, and with
    C{--all} those the store's template finds.  Blocking.

    @raise users.EnumerationRefused: C{--all} cannot be done with this store.
    @raise OSError: the users file cannot be read.
    """
    found: list[str] = []
    if plan.all:
        kind_template = source.template_of(store)
        if kind_template is None:
            raise users.EnumerationRefused(
                "--all needs a maildir: or mbox: source, whose template can be searched; "
                "name the users (USER... or --users-from FILE)")
        found, left_out = users.enumerate_users(kind_template[1], kind_template[0])
        for why in left_out:
            warn(f"popgate migrate: skipping {why}\n")
    listed = users.read_users_file(plan.users_from) if plan.users_from else []
    return users.merge(plan.users, listed, found)


async def migrate_all(reactor: Any, store: Any, target: Target, names: Sequence[str],
                      dry_run: bool, write: Write) -> int:
    """Copy each user in turn, a line each, then the summary; the exit
    status."""
    results: list[UserResult] = []
    for position, name in enumerate(names):
        try:
            result = await migrate_user(reactor, store, target, name, dry_run)
        except Exception as e:  # the database failed: not an expected outcome
            result = UserResult(normalize_user(name), "not copied",
                                problems=[f"database error: {one_line(e)}"])
        results.append(result)
        write(user_line(result) + "\n")
        if target.broken:
            left = len(names) - position - 1
            write(f"the database connection was lost: stopped, {plural(left, 'user')} not "
                  "tried; what was committed is kept, run again to go on\n")
            results += [UserResult(normalize_user(n), "not copied") for n in names[position + 1:]]
            break
    write(summary(results, dry_run) + "\n")
    return EX_OK if all(r.ok for r in results) else EX_FAILED


def run(args: argparse.Namespace) -> int:
    """C{popgate migrate}: see the module docstring for the exit status."""
    try:
        plan = options.plan_from(args)
    except usage.UsageError as e:
        return _fail(e, EX_USAGE)
    reactor = _reactor()
    try:
        store = source.build_store(plan.source, reactor)
    except ValueError as e:
        return _fail(f"--from: {one_line(e)}", EX_USAGE)
    try:
        names = select_users(plan, store, sys.stderr.write)
    except users.EnumerationRefused as e:
        return _fail(e, EX_USAGE)
    except OSError as e:
        return _fail(f"cannot read the users: {one_line(e)}", EX_USAGE)
    if not names:
        searched = source.template_of(store)
        return _fail("no users to copy" + (f": no mailbox matches {searched[1]}"
                                           if plan.all and searched else ""))
    try:
        target = open_target(plan.target, plan.dry_run)
    except TargetError as e:
        return _fail(e)
    try:
        return _react(lambda reactor: migrate_all(reactor, store, target, names, plan.dry_run,
                                                  _write))
    finally:
        target.close()


def _react(work: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    """
    Run C{work(reactor)} and return its status.  An interrupt (Ctrl-C,
    SIGTERM) stops the reactor once the statement in progress is done:
    what was committed stays, and the status says it was interrupted.
    """
    state = {"done": False, "interrupted": False}

    async def main(reactor: Any) -> None:
        def stopping() -> None:
            state["interrupted"] = not state["done"]

        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        try:
            status = await work(reactor)
        except Exception as e:
            status = _fail(f"unexpected error: {type(e).__name__}: {one_line(e)}")
        state["done"] = True
        raise SystemExit(status)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if state["interrupted"]:
            return _fail("interrupted: the messages committed so far are kept; run again to "
                         "copy the rest", EX_INTERRUPTED)
        return int(e.code or 0) if not isinstance(e.code, str) else EX_FAILED
    return EX_FAILED  # react always exits; never reached
