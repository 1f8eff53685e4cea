"""
Copying one user: open (and lock) the old maildrop, take the new
mailbox's session lock, write every message of the snapshot whose UIDL
the target does not have yet, in snapshot order (so message numbers stay
the same on the new store), then verify the target against the snapshot
and close the old maildrop without a commit.

Memory: one message is held at a time, once (L{source.read_all} reads it
into one buffer that is handed to the insert as it is); the database
driver buffers the chunk rows it sends besides.  A 100 MB message needs
about 100 MB while it is copied, then none.

Everything blocking (reading files, every database call) runs in the
reactor's thread pool; the target's calls one at a time, so one
connection serves them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from popgate import errors
from popgate.cred.names import normalize_user
from popgate.maildrop import MessageInfo
from popgate.migrate import source
from popgate.migrate.report import UserResult
from popgate.migrate.target import Target
from popgate.migrate.verify import compare
from popgate.probes import one_line

__all__ = ["migrate_user"]

T = TypeVar("T")
log = Logger()


class _Runner:
    """Blocking calls in C{reactor}'s thread pool."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def __call__(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)


async def migrate_user(reactor: Any, store: Any, target: Target, user: str,
                       dry_run: bool = False) -> UserResult:
    """
    Copy (or, in a C{dry_run}, count) C{user}'s mail from C{store} into
    C{target}.  Expected failures (a mailbox in use, unreadable, a
    mismatch) are in the result; a database failure is raised
    (L{Target.broken} tells whether the run can go on).
    """
    in_thread = _Runner(reactor)
    name = normalize_user(user)  # the avatar id, as the realm gives it to a store
    try:
        path = source.mailbox_path(store, name)
    except errors.PermanentFailure as e:
        return UserResult(name, "not copied", problems=[one_line(e)])
    if path is not None and not await in_thread(_exists, path):
        return UserResult(name, "no mailbox", where=path)
    try:
        maildrop = await source.open_maildrop(store, name, reactor)
    except errors.MaildropInUse:
        return UserResult(name, "in use")
    except (errors.PermanentFailure, errors.TemporaryFailure, OSError) as e:
        return UserResult(name, "not copied", problems=[one_line(e)])
    try:
        snapshot = list(maildrop.list_messages())
        if dry_run:
            return await _count(in_thread, target, name, snapshot)
        return await _copy(reactor, in_thread, target, name, maildrop, snapshot)
    finally:
        try:
            await defer.maybeDeferred(maildrop.close)  # never commit: nothing is deleted
        except Exception as e:
            log.warn("closing the old maildrop of {user}: {e}", user=name, e=one_line(e))


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def _count(in_thread: _Runner, target: Target, name: str,
                 snapshot: Sequence[MessageInfo]) -> UserResult:
    mailbox = await in_thread(target.mailbox, name, False)
    there = await in_thread(target.existing, mailbox)
    result = UserResult(name, "dry run")
    for info in snapshot:
        if info.uid in there:
            result.skipped += 1
        else:
            result.copied += 1
            result.copied_octets += info.size
    return result


async def _copy(reactor: Any, in_thread: _Runner, target: Target, name: str, maildrop: Any,
                snapshot: Sequence[MessageInfo]) -> UserResult:
    mailbox = await in_thread(target.mailbox, name, True)
    assert mailbox is not None  # created
    if not await in_thread(target.lock, mailbox):
        return UserResult(name, "not copied", problems=[
            "the new mailbox is in use (a POP3 session on the PostgreSQL store, or another "
            "popgate migrate): run again when it has ended"])
    result = UserResult(name, "verified")
    failed: set[bytes] = set()  # said why already: not "missing" again
    try:
        there = await in_thread(target.existing, mailbox)
        for index, info in enumerate(snapshot):
            if info.uid in there:
                result.skipped += 1
                continue
            try:
                data = await source.read_message(maildrop, index, reactor)
            except (errors.PermanentFailure, errors.TemporaryFailure, OSError) as e:
                result.unreadable += 1
                failed.add(info.uid)
                result.problems.append(f"UIDL {info.uid.decode('ascii')} cannot be read: "
                                       f"{one_line(e)}")
                continue
            try:
                added = await in_thread(target.add, mailbox, info.uid, data)
            except ValueError as e:  # an invalid UIDL: no store could have served it
                failed.add(info.uid)
                result.problems.append(one_line(e))
                continue
            finally:
                del data
            if added:
                result.copied += 1
                result.copied_octets += info.size
            else:
                result.skipped += 1
        await in_thread(target.finish)
        rows = await in_thread(target.rows, mailbox)  # still locked: nothing changes them
    finally:
        if not target.broken:
            await in_thread(target.finish)  # after a failure: keep what was copied
            await in_thread(target.unlock, mailbox)
    check = compare([info for info in snapshot if info.uid not in failed], rows)
    result.only_in_target = check.only_in_target
    result.problems += check.problems
    if result.problems:
        result.outcome = "not verified"
    return result
