"""
The lock-and-commit sequence every store that locks a maildrop follows,
written once.

A POP3 session holds its maildrop from login to QUIT (RFC 1939 section 8:
the maildrop is locked for the session).  Every store does the same five
things around that lock, in the same order:

  1. take the in-process lock (L{SessionLocks}), so two sessions in one
     process refuse each other at once, without a thread;
  2. in a thread, take the store's own lock (an C{flock}, a database row
     lock, an IMAP C{SELECT} on the upstream server...) and read the
     snapshot, answering L{errors.MaildropInUse} if another process holds
     it;
  3. release the in-process lock if anything in 2 failed;
  4. at QUIT, apply the deletions in a thread, durably, I{then} release;
  5. on a session that ends without QUIT, release without changing
     anything, once, however often C{close} is called.

L{LockingStore} does 1-3 (L{LockingStore.open_locked}) and
L{LockedMaildrop} does 4-5; a store writes only its own lock, its snapshot
and its deletion, as blocking functions.  Maildir and mbox use them; a
PostgreSQL store would pass a function that runs C{SELECT ... FOR UPDATE
NOWAIT} as C{open_in_thread} (or override L{LockingStore.in_thread} to use
its connection pool instead of threads), a proxy or IMAP store one that
logs in upstream.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from popgate import errors

T = TypeVar("T")
M = TypeVar("M")


class SessionLocks:
    """A set of held mailbox keys; acquiring a held key raises
    L{errors.MaildropInUse}."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, key: str) -> None:
        if key in self._held:
            raise errors.MaildropInUse(key)
        self._held.add(key)

    def release(self, key: str) -> None:
        self._held.discard(key)


def take_flock(fd: int, key: str, path: str) -> None:
    """
    An exclusive, non-blocking C{flock} on C{fd}: held until C{fd} is
    closed, dropped by the kernel if the process dies.  On failure C{fd}
    is closed.

    @raise errors.MaildropInUse: another process holds it.
    @raise errors.TemporaryFailure: the lock could not be taken.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise errors.MaildropInUse(key) from e
        raise errors.TemporaryFailure(f"cannot lock {path}: {e}") from e


class LockingStore:
    """
    Base of a store whose maildrops are locked for a session.

    @param reactor: provides C{getThreadPool} and C{callFromThread}: the
        server's (the composition root hands it to the store plugin).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.sessions = SessionLocks()

    def in_thread(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run blocking C{f} in the reactor's thread pool."""
        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def open_locked(self, key: str, open_in_thread: Callable[[], T], wrap: Callable[[T], M],
                    open_inline: Callable[[], T | None] | None = None) -> defer.Deferred[M]:
        """
        Steps 1-3: lock C{key} in this process, then C{open_in_thread()}
        (lock and snapshot, blocking) in a thread, and C{wrap} its result
        into the maildrop; a failure releases C{key}.

        @param open_inline: tried first, in the reactor thread, for an open
            that can be done without waiting (a kept snapshot whose files
            are in the kernel's caches); C{None} from it means "go to the
            thread".
        """
        try:
            self.sessions.acquire(key)
        except errors.MaildropInUse:
            return defer.fail()  # the interface promises a Deferred
        if open_inline is not None:
            try:
                opened = open_inline()
            except BaseException:
                self.sessions.release(key)
                return defer.fail()
            if opened is not None:
                return defer.succeed(wrap(opened))

        def failed(failure: Any) -> Any:
            self.sessions.release(key)
            return failure

        return self.in_thread(open_in_thread).addCallbacks(wrap, failed)


class LockedMaildrop:
    """
    Base of a maildrop opened by L{LockingStore.open_locked}: steps 4-5.

    Subclasses implement L{apply} and may extend L{release_resources}.

    @param lock_fd: the descriptor holding the store's C{flock}, closed on
        release; C{None} for a store whose lock is elsewhere.
    """

    def __init__(self, store: LockingStore, key: str, lock_fd: int | None) -> None:
        self._locking_store = store
        self._key = key
        self._lock_fd = lock_fd
        self._held = True

    def apply(self, deleted: list[int]) -> None:
        """Remove the messages at C{deleted} (sorted indexes), durably.
        Blocking: runs in a thread, under the lock."""
        raise NotImplementedError

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        gone = sorted(set(deleted))
        if not self._held:
            return defer.fail(errors.PermanentFailure("maildrop already closed"))
        if not gone:
            self.close()
            return defer.succeed(None)
        d = self._locking_store.in_thread(self.apply, gone)

        def release(result: object) -> object:
            self.close()
            return result

        return d.addBoth(release)

    def release_resources(self) -> None:
        """Close what the snapshot holds open (called once, by L{close},
        before the lock goes)."""

    def close(self) -> defer.Deferred[None] | None:
        """Release (idempotent).  A subclass with work to finish first may
        return a L{Deferred}; this one returns C{None}."""
        if not self._held:
            return None
        self._held = False
        try:
            self.release_resources()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            try:
                if fd is not None:
                    os.close(fd)  # drops the flock
            finally:
                self._locking_store.sessions.release(self._key)
        return None
