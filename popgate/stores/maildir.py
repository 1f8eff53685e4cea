"""
Maildir mailboxes, as Postfix, Exim and Dovecot write them (the INBOX:
C{new/} and C{cur/}).

At login the directory is scanned once, in a thread, into a snapshot:
order by delivery time, unique ids from the file names (stable across
sessions, restarts and flag changes), sizes from C{,W=} in the name or from
a size cache kept in the Maildir, so the second login to a big Maildir
reads no message.  Mail delivered during the session is not in the
snapshot and is never deleted by it.  Deletions are applied at QUIT only.

The maildrop lock is an C{flock} on a file in the Maildir: it works across
worker processes, and the kernel drops it when a process dies, so a crash
never leaves a mailbox locked.

This module is the store and its maildrop; the scan (file names, sizes,
the size cache) is L{popgate.stores.maildir_scan}, the kept snapshots
L{popgate.stores.maildir_snapshots}, delivery
L{popgate.stores.maildir_delivery}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore
from popgate.maildrop import MessageInfo
from popgate.plural import plural
from popgate.stores import mailpath, nowait
from popgate.stores.base import LockedMaildrop, LockingStore, take_flock
from popgate.stores.durable import fsync_dir
from popgate.stores.maildir_delivery import deliver_to_maildir, ensure_maildir
from popgate.stores.maildir_scan import Entry, base_name
from popgate.stores.maildir_snapshots import SnapshotCache
from popgate.stores.sources import FileSource

LOCK_FILE = "popgate-pop3.lock"
log = Logger()


def _find_moved(directory: str, entry: Entry) -> str | None:
    """Where a message went after another agent renamed it (flags, new->cur)."""
    for subdir in ("cur", "new"):
        try:
            for name in os.listdir(os.path.join(directory, subdir)):
                if base_name(name) == entry.base:
                    return os.path.join(directory, subdir, name)
        except FileNotFoundError:
            continue
    return None


@implementer(IMaildrop)
class MaildirMaildrop(LockedMaildrop):
    """An opened, locked snapshot of one Maildir."""

    def __init__(self, store: MaildirStore, directory: str, lock_fd: int,
                 entries: list[Entry]) -> None:
        super().__init__(store, directory, lock_fd)
        self._store = store
        self.directory = directory
        self._entries = entries
        self._infos = [e.info for e in entries]

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> FileSource | defer.Deferred[FileSource]:
        entry = self._entries[index]
        try:
            fd = nowait.open_cached(os.path.join(self.directory, entry.subdir, entry.name),
                                    os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None  # renamed by another agent, perhaps: the thread finds out
        if fd is not None:
            return FileSource(fd)
        return self._store.in_thread(self._open_file, entry)

    def _open_file(self, entry: Entry) -> FileSource:
        """Open a message, wherever another agent moved it (flags, new/ ->
        cur/): finding it means listing a directory that may hold 100,000
        names.  Blocking."""
        path = os.path.join(self.directory, entry.subdir, entry.name)
        try:
            return FileSource(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            moved = _find_moved(self.directory, entry)
            if moved is None:
                raise errors.PermanentFailure(f"message {entry.base} was removed") from None
            return FileSource(os.open(moved, os.O_RDONLY | os.O_CLOEXEC))

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        deleted = list(deleted)
        if deleted:
            self._store._snapshots.forget(self.directory)
        return super().commit(deleted)

    def apply(self, deleted: list[int]) -> None:
        failed = 0
        touched: set[str] = set()
        for entry in (self._entries[i] for i in deleted):
            path = os.path.join(self.directory, entry.subdir, entry.name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                moved = _find_moved(self.directory, entry)
                if moved is None:
                    continue  # already gone: what the user wanted
                try:
                    os.unlink(moved)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.error("cannot remove {path}: {e}", path=moved, e=e)
                    failed += 1
                    continue
                touched.add(os.path.dirname(moved))
                continue
            except OSError as e:
                log.error("cannot remove {path}: {e}", path=path, e=e)
                failed += 1
                continue
            touched.add(os.path.join(self.directory, entry.subdir))
        for path in touched:
            fsync_dir(path)
        if failed:
            raise errors.TemporaryFailure(f"{plural(failed, 'message')} could not be removed")


@implementer(IMailStore, IDeliveryTarget)
class MaildirStore(LockingStore):
    """
    Users' Maildirs found by a template: C{%u} full user name, C{%n} local
    part, C{%d} domain (C{/var/mail/%d/%n}).  Mail is delivered into them
    (LMTP, C{popgate deliver}) in C{reactor}'s thread pool, as
    L{popgate.stores.maildir_delivery} writes it.
    """

    def __init__(self, template: str, reactor: Any, create: bool = True) -> None:
        super().__init__(reactor)
        self.template = mailpath.check_template(template)
        self.create = create
        self._snapshots = SnapshotCache()

    def maildir_for(self, user: str) -> str:
        """
        The user's Maildir: the location the user store gave at login (an
        LDAP attribute, a SQL column; C{maildir:} prefix allowed), else the
        template expanded for C{user}.
        """
        location: str | None = getattr(user, "mail_location", None)  # an AvatarId's
        if location:
            if location.startswith("maildir:"):
                location = location[len("maildir:"):]
            if not os.path.isabs(location):
                raise errors.PermanentFailure(f"mail location {location!r} is not an absolute path")
            return location
        return mailpath.expand(self.template, user)

    # IDeliveryTarget

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[str]:
        """Write C{message} durably into C{user}'s Maildir (in a thread);
        fires with the new file's name."""
        try:
            directory = os.path.abspath(self.maildir_for(user))
        except Exception:
            return defer.fail()
        return self.in_thread(deliver_to_maildir, directory, message)

    # IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[MaildirMaildrop]:
        try:
            directory = os.path.abspath(self.maildir_for(avatar_id))
        except errors.PermanentFailure:
            return defer.fail()

        def wrap(opened: tuple[int, list[Entry]]) -> MaildirMaildrop:
            return MaildirMaildrop(self, directory, *opened)

        # A kept snapshot whose lock file and directories are in the
        # kernel's caches: the open is a lock and two fstat() calls, cheaper
        # here than the round trip to a thread and back.
        return self.open_locked(directory, lambda: self._open(directory), wrap,
                                open_inline=lambda: self._open_kept(directory))

    def _open_kept(self, directory: str) -> tuple[int, list[Entry]] | None:
        """The lock and the kept snapshot, without waiting for the disk;
        C{None} (and no lock) when that cannot be done."""
        if not self._snapshots.known(directory):
            return None
        try:
            fd = nowait.open_cached(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None  # the thread will say what is wrong
        if fd is None:
            return None
        take_flock(fd, directory, directory)
        entries = self._snapshots.kept(directory)
        if entries is None:
            os.close(fd)
            return None
        return fd, entries

    def _open(self, directory: str) -> tuple[int, list[Entry]]:
        """Lock and scan.  Blocking."""
        lock_path = os.path.join(directory, LOCK_FILE)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(lock_path, flags, 0o600)
            except FileNotFoundError:
                if not self.create:
                    raise
                ensure_maildir(directory)
                fd = os.open(lock_path, flags, 0o600)
        except PermissionError as e:
            raise errors.PermanentFailure(f"cannot open {directory}: {e}") from e
        except FileNotFoundError as e:
            raise errors.PermanentFailure(f"no maildir at {directory}") from e
        except OSError as e:
            raise errors.TemporaryFailure(f"cannot open {directory}: {e}") from e
        take_flock(fd, directory, directory)
        try:
            return fd, self._snapshots.get(directory)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise errors.TemporaryFailure(f"cannot read {directory}: {e}") from e
            raise


def make_store(argstring: str, reactor: Any) -> MaildirStore:
    """
    The C{maildir:TEMPLATE[,shared=yes]} store plugin, on C{reactor}.  A
    template without C{%u}/C{%n} is refused unless C{shared=yes}: every
    user would read everyone's mail.

    @raise ValueError: with a one-line reason.
    """
    if not argstring:
        raise ValueError("maildir: needs a location template, e.g. maildir:/var/mail/%d/%n")
    template, shared = mailpath.pop_shared(argstring, "maildir")
    mailpath.check_template(template)
    mailpath.check_per_user(template, "maildir", shared)
    return MaildirStore(template, reactor)
