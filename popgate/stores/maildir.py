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

A RETR marks its message read (the C{S} flag, moving it to C{cur/}) when
the session ends, as Dovecot's POP3 does; beside Dovecot IMAP the store
can serve Dovecot's UIDLs and soft-delete with a keyword
(L{popgate.stores.maildir_dovecot}).

This module is the store and its maildrop; the scan (file names, sizes,
the size cache) is L{popgate.stores.maildir_scan}, the kept snapshots
L{popgate.stores.maildir_snapshots}, delivery
L{popgate.stores.maildir_delivery}, flag changes
L{popgate.stores.maildir_flags}, the options
L{popgate.stores.maildir_options}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore, ISeenMaildrop
from popgate.maildrop import MessageInfo
from popgate.plural import plural
from popgate.stores import maildir_dovecot, mailpath, nowait
from popgate.stores.base import LockedMaildrop, LockingStore, take_flock
from popgate.stores.durable import fsync_dir
from popgate.stores.maildir_delivery import deliver_to_maildir, ensure_maildir
from popgate.stores.maildir_dovecot import View, ViewCache
from popgate.stores.maildir_flags import Locator, Outcome, add_flags, find_current, flags_of
from popgate.stores.maildir_options import MaildirOptions, parse_argstring
from popgate.stores.maildir_scan import Entry
from popgate.stores.maildir_snapshots import SnapshotCache
from popgate.stores.sources import FileSource

LOCK_FILE = "popgate-pop3.lock"
log = Logger()


def _find_moved(directory: str, entry: Entry) -> str | None:
    """Where a message went after another agent renamed it (flags, new->cur)."""
    found = find_current(directory, entry.base)
    return None if found is None else os.path.join(directory, *found)


@implementer(IMaildrop, ISeenMaildrop)
class MaildirMaildrop(LockedMaildrop):
    """An opened, locked snapshot of one Maildir."""

    def __init__(self, store: MaildirStore, directory: str, lock_fd: int,
                 view: View | list[Entry]) -> None:
        super().__init__(store, directory, lock_fd)
        self._store = store
        self.directory = directory
        entries = view.entries if isinstance(view, View) else view
        self._entries = entries
        self._infos = [e.info for e in entries]
        self._retrieved: set[int] = set()
        self._closing = False

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    # ISeenMaildrop

    def retrieved(self, index: int) -> None:
        if not self._store.options.flag_updates:
            return
        entry = self._entries[index]
        # Seen already when the session began: left alone, as Dovecot
        # marks only the messages that were not \Seen at RETR.
        if entry.subdir != "cur" or "S" not in flags_of(entry.name):
            self._retrieved.add(index)

    def forget_retrieved(self) -> None:
        self._retrieved.clear()

    def last_seen(self) -> int:
        last = 0
        for number, entry in enumerate(self._entries, 1):
            if "S" in flags_of(entry.name):
                last = number
        return last

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
        """UPDATE: the deletions (files removed, or the soft-delete keyword
        set), then the read marks of the messages kept, in one thread job;
        the lock goes once both are done."""
        gone = sorted(set(deleted))
        if not self._held:
            return defer.fail(errors.PermanentFailure("maildrop already closed"))
        seen = sorted(self._retrieved.difference(gone))
        self._retrieved.clear()
        if not gone and not seen:
            self.close()
            return defer.succeed(None)
        self._store.forget(self.directory)
        d = self._store.in_thread(self._update, gone, seen)

        def release(result: object) -> object:
            self.close()
            return result

        return d.addBoth(release)

    def close(self) -> defer.Deferred[None] | None:
        """Release; a session that ends without QUIT still gets its read
        marks (as in Dovecot), in a thread, before the lock goes."""
        if self._closing:
            return None
        if not (self._held and self._retrieved):
            super().close()
            return None
        self._closing = True
        seen = sorted(self._retrieved)
        self._retrieved.clear()
        self._store.forget(self.directory)
        d = self._store.in_thread(self._update, [], seen)
        d.addErrback(lambda f: log.failure("marking messages read in {directory}", f,
                                           directory=self.directory))
        d.addBoth(lambda _: LockedMaildrop.close(self))
        return d

    def _update(self, deleted: list[int], seen: list[int]) -> None:
        """Delete (or soft-delete), then mark read.  Blocking."""
        keyword = self._store.options.dovecot.deleted_keyword
        try:
            if deleted and keyword is not None:
                self._soft_delete(deleted, keyword)
            elif deleted:
                self.apply(deleted)
        finally:
            if seen:
                self._mark_read(seen)

    def _mark_read(self, seen: list[int]) -> None:
        """
        The C{S} flag, and the move to C{cur/}.  Not made durable (no
        C{fsync} of the directory, as Dovecot's default C{fsync_mode}
        does not for flags): a mark lost in a crash only shows the message
        unread again, and a QUIT should not wait for the disk for that.
        Blocking.
        """
        locator = Locator(self.directory)
        for entry in (self._entries[i] for i in seen):
            try:
                add_flags(self.directory, entry.subdir, entry.name, "S", locator=locator)
            except OSError as e:
                # A read mark is worth a log line, not a failed QUIT.
                log.warn("cannot mark {base} read in {directory}: {e}", base=entry.base,
                         directory=self.directory, e=e)
                continue

    def _soft_delete(self, deleted: list[int], keyword: str) -> None:
        """
        Give the deleted messages the keyword's letter instead of removing
        them (Dovecot's C{pop3_deleted_flag}): IMAP keeps them, POP3 no
        longer lists them.  A keyword Dovecot has not given a letter yet
        fails the whole QUIT: a letter popgate picked would read back in
        Dovecot as some other keyword, or as "unknown-N".  Blocking.
        """
        path = os.path.join(self.directory, maildir_dovecot.KEYWORDS)
        letter = maildir_dovecot.read_keywords(path).get(keyword.lower())
        if letter is None:
            raise errors.TemporaryFailure(
                f"the keyword {keyword} has no letter in {path}: nothing deleted (set it once "
                "on any message over IMAP so that Dovecot registers it)")
        failed = 0
        locator = Locator(self.directory)
        for entry in (self._entries[i] for i in deleted):
            try:
                outcome = add_flags(self.directory, entry.subdir, entry.name, letter,
                                    locator=locator)
            except OSError as e:
                log.error("cannot flag {base} deleted in {directory}: {e}", base=entry.base,
                          directory=self.directory, e=e)
                failed += 1
                continue
            if outcome in (Outcome.SKIPPED, Outcome.RACING):
                failed += 1
        for subdir in ("cur", "new"):
            fsync_dir(os.path.join(self.directory, subdir))
        if failed:
            raise errors.TemporaryFailure(f"{plural(failed, 'message')} could not be flagged "
                                          "deleted")

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

    def __init__(self, template: str, reactor: Any, create: bool = True,
                 options: MaildirOptions | None = None) -> None:
        super().__init__(reactor)
        self.template = mailpath.check_template(template)
        self.create = create
        self.options = options or MaildirOptions()
        self._snapshots = SnapshotCache()
        self._views = ViewCache()

    def forget(self, directory: str) -> None:
        """Drop what is kept of C{directory}: this process changes it."""
        self._snapshots.forget(directory)
        self._views.forget(directory)

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

        def wrap(opened: tuple[int, View]) -> MaildirMaildrop:
            return MaildirMaildrop(self, directory, *opened)

        # A kept snapshot whose lock file and directories are in the
        # kernel's caches: the open is a lock and two fstat() calls, cheaper
        # here than the round trip to a thread and back.
        return self.open_locked(directory, lambda: self._open(directory), wrap,
                                open_inline=lambda: self._open_kept(directory))

    def _open_kept(self, directory: str) -> tuple[int, View] | None:
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
        view = None if entries is None else self._kept_view(directory, entries)
        if view is None:
            os.close(fd)
            return None
        return fd, view

    def _kept_view(self, directory: str, entries: list[Entry]) -> View | None:
        """The view of a kept snapshot, if it is kept too and Dovecot's
        files are unchanged, told without waiting for the disk."""
        dovecot = self.options.dovecot
        if not dovecot.active:
            return View(entries)
        signatures = []
        for wanted, name in ((dovecot.uidl, maildir_dovecot.UIDLIST),
                             (dovecot.deleted_keyword, maildir_dovecot.KEYWORDS)):
            signature = maildir_dovecot.cached_signature(os.path.join(directory, name)) \
                if wanted is not None else None
            if signature is False:
                return None
            signatures.append(signature)
        return self._views.kept(directory, entries, *signatures)  # type: ignore[arg-type]

    def _view(self, directory: str, entries: list[Entry]) -> View:
        """What a session sees of a snapshot: Dovecot's UIDLs and order,
        soft-deleted messages left out.  Blocking."""
        dovecot = self.options.dovecot
        if not dovecot.active:
            return View(entries)
        uidlist_path = os.path.join(directory, maildir_dovecot.UIDLIST)
        keywords_path = os.path.join(directory, maildir_dovecot.KEYWORDS)
        uidlist_sig = maildir_dovecot.signature(uidlist_path) if dovecot.uidl else None
        keywords_sig = maildir_dovecot.signature(keywords_path) \
            if dovecot.deleted_keyword else None
        view = self._views.kept(directory, entries, uidlist_sig, keywords_sig)
        if view is not None:
            return view
        letter = None
        if dovecot.deleted_keyword is not None:
            keywords = maildir_dovecot.read_keywords(keywords_path)
            letter = keywords.get(dovecot.deleted_keyword.lower())
        uidlist = None
        if dovecot.uidl is not None and uidlist_sig is not None:
            uidlist = maildir_dovecot.read_uidlist(uidlist_path, {e.base for e in entries})
        view = maildir_dovecot.build_view(entries, uidlist, dovecot, letter)
        if view.unlisted and dovecot.uidl is not None:
            log.debug("{directory}: {n} not in {uidlist} yet, served with their own UIDL",
                      directory=directory, n=view.unlisted, uidlist=maildir_dovecot.UIDLIST)
        self._views.keep(directory, entries, uidlist_sig, keywords_sig, view)
        return view

    def _open(self, directory: str) -> tuple[int, View]:
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
            return fd, self._view(directory, self._snapshots.get(directory))
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise errors.TemporaryFailure(f"cannot read {directory}: {e}") from e
            raise


def make_store(argstring: str, reactor: Any) -> MaildirStore:
    """
    The C{maildir:TEMPLATE[,options][,shared=yes]} store plugin, on
    C{reactor} (the options: L{popgate.stores.maildir_options}).  A
    template without C{%u}/C{%n} is refused unless C{shared=yes}: every
    user would read everyone's mail.

    @raise ValueError: with a one-line reason.
    """
    template, options = parse_argstring(argstring)
    return MaildirStore(template, reactor, options=options)
