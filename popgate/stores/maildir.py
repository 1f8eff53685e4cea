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
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors, wire
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore
from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.plural import plural
from popgate.stores import mailpath, nowait
from popgate.stores.base import LockedMaildrop, LockingStore, take_flock
from popgate.stores.durable import fsync_dir
from popgate.stores.maildir_delivery import deliver_to_maildir, ensure_maildir
from popgate.stores.sources import FileSource

LOCK_FILE = "popgate-pop3.lock"
SIZE_CACHE = "popgate-sizes"
_W_SIZE = re.compile(r",W=(\d+)")
_TIME_PREFIX = re.compile(r"^(\d+)(?:\.M(\d+))?")
# A snapshot is reused only if the directories have not changed since, and
# had not changed for this long before it was taken (file system time stamps
# are coarse: a delivery in the same tick must not go unseen).
_SNAPSHOT_SETTLE_NS = 2_000_000_000
# Snapshots kept per process, counted in messages.
_SNAPSHOT_BUDGET = 1_000_000

log = Logger()


@dataclass(slots=True)
class _Entry:
    subdir: str
    name: str
    base: str
    info: MessageInfo


def base_name(filename: str) -> str:
    """The part of a Maildir file name that never changes: no C{:2,flags}."""
    return filename.split(":", 1)[0]


def unique_id(base: str) -> bytes:
    """
    The UIDL of a message: its base file name when that is a valid POP3
    unique id (1-70 printable octets), else a digest of it.
    """
    if len(base) <= 70 and base.isascii() and base.isprintable() and " " not in base:
        return base.encode("ascii")
    raw = base.encode("utf-8", "surrogateescape")
    if is_valid_uid(raw):
        return raw
    return hashlib.sha1(raw).hexdigest().encode("ascii")


def file_wire_size(path: str) -> int:
    """L{popgate.wire.wire_size} of a file, read in pieces.  Blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return wire.measure(lambda n: os.read(fd, n))
    finally:
        os.close(fd)


def _order_key(base: str) -> tuple[int, int, str]:
    match = _TIME_PREFIX.match(base)
    if match is None:
        return (1 << 62, 0, base)
    return (int(match.group(1)), int(match.group(2) or 0), base)


class _SizeCache:
    """C{base size} lines in the Maildir: sizes computed once, kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sizes: dict[str, int] = {}
        self.dirty = False
        try:
            with open(path, "rb") as f:
                for line in f:
                    base, _, size = line.rstrip(b"\n").rpartition(b" ")
                    if base and size.isdigit():
                        self.sizes[base.decode("utf-8", "surrogateescape")] = int(size)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("ignoring unreadable size cache {path}: {e}", path=path, e=e)

    def save(self, live: Iterable[str]) -> None:
        """Write the cache, keeping only the messages still present."""
        live_set = set(live)
        stale = len(self.sizes) - len(live_set & self.sizes.keys())
        if not self.dirty and stale * 4 <= len(self.sizes):
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        # A name with a newline would read back as another message's line.
        lines = [f"{b} {s}\n".encode("utf-8", "surrogateescape")
                 for b, s in self.sizes.items() if b in live_set and "\n" not in b]
        try:
            with open(tmp, "wb") as f:
                f.writelines(lines)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warn("cannot write size cache {path}: {e}", path=self.path, e=e)


def scan(directory: str) -> list[_Entry]:
    """List C{new/} and C{cur/} into snapshot entries, oldest first."""
    cache = _SizeCache(os.path.join(directory, SIZE_CACHE))
    sizes = cache.sizes
    found: list[tuple[str, str, str, int]] = []
    unknown: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for subdir in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(directory, subdir))
        except FileNotFoundError:
            continue
        for name in names:
            if name[:1] == ".":
                continue
            base = name.partition(":")[0]
            if base in seen:
                continue  # the same message seen in new/ and cur/ mid-rename
            seen.add(base)
            size = None
            if ",W=" in base:
                match = _W_SIZE.search(base)
                if match is not None:
                    size = int(match.group(1))
            if size is None:
                size = sizes.get(base)
            if size is None:
                unknown.append((subdir, name, base))
            else:
                found.append((subdir, name, base, size))
    if unknown:
        # A first scan of a big Maildir is mostly these open/read/close
        # calls.  (Threads do not help: the GIL hand-offs cost more than the
        # overlap gains, measured on 40,000 files.)
        for subdir, name, base in unknown:
            try:
                size = file_wire_size(os.path.join(directory, subdir, name))
            except FileNotFoundError:
                seen.discard(base)  # moved or expunged while we scanned
                continue
            sizes[base] = size
            found.append((subdir, name, base, size))
        cache.dirty = True
    cache.save(seen)
    found.sort(key=lambda f: _order_key(f[2]))
    unchecked = MessageInfo.unchecked
    return [_Entry(subdir, name, base, unchecked(unique_id(base), size))
            for subdir, name, base, size in found]


def _stamp(directory: str) -> tuple[int, int] | None:
    """The change times of C{cur/} and C{new/}, or C{None} if one is missing."""
    try:
        return (os.stat(os.path.join(directory, "cur")).st_mtime_ns,
                os.stat(os.path.join(directory, "new")).st_mtime_ns)
    except FileNotFoundError:
        return None


def _cached_stamp(directory: str) -> tuple[int, int] | None:
    """L{_stamp} from the kernel's caches only: C{None} if it would wait
    for the disk (or a directory is missing)."""
    try:
        cur = nowait.stat_cached(os.path.join(directory, "cur"))
        new = nowait.stat_cached(os.path.join(directory, "new"))
    except OSError:
        return None
    if cur is None or new is None:
        return None
    return (cur.st_mtime_ns, new.st_mtime_ns)


class SnapshotCache:
    """
    The last snapshot of each Maildir, reused while C{cur/} and C{new/} are
    unchanged: a client polling a 100,000-message Maildir costs two stat()
    calls instead of a directory scan.  Bounded by a total message count.
    """

    def __init__(self, budget: int = _SNAPSHOT_BUDGET) -> None:
        self._budget = budget
        self._held = 0
        self._snapshots: OrderedDict[str, tuple[tuple[int, int], list[_Entry]]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, directory: str) -> bool:
        """Whether a snapshot of C{directory} is kept (perhaps stale)."""
        return directory in self._snapshots

    def kept(self, directory: str) -> list[_Entry] | None:
        """
        The kept snapshot of C{directory} if it is still valid, checked
        without waiting for the disk (for the reactor thread): C{None} if
        there is none, it is stale, or checking would mean a disk read.
        """
        stamp = _cached_stamp(directory)
        with self._lock:
            kept = self._snapshots.get(directory)
            if kept is not None and stamp is not None and kept[0] == stamp:
                self._snapshots.move_to_end(directory)
                return kept[1]
        return None

    def get(self, directory: str) -> list[_Entry]:
        """A snapshot of C{directory}: the kept one if still valid, else a
        new scan.  Blocking."""
        stamp = _stamp(directory)
        with self._lock:
            kept = self._snapshots.get(directory)
            if kept is not None and stamp is not None and kept[0] == stamp:
                self._snapshots.move_to_end(directory)
                return kept[1]
        started = time.time_ns()
        entries = scan(directory)
        if stamp is not None and _stamp(directory) == stamp \
                and started - max(stamp) > _SNAPSHOT_SETTLE_NS:
            self._keep(directory, stamp, entries)
        else:
            self.forget(directory)
        return entries

    def _keep(self, directory: str, stamp: tuple[int, int], entries: list[_Entry]) -> None:
        with self._lock:
            old = self._snapshots.pop(directory, None)
            if old is not None:
                self._held -= len(old[1])
            if len(entries) > self._budget:
                return
            self._snapshots[directory] = (stamp, entries)
            self._held += len(entries)
            while self._held > self._budget:
                _, (_, dropped) = self._snapshots.popitem(last=False)
                self._held -= len(dropped)

    def forget(self, directory: str) -> None:
        with self._lock:
            old = self._snapshots.pop(directory, None)
            if old is not None:
                self._held -= len(old[1])


def _find_moved(directory: str, entry: _Entry) -> str | None:
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
                 entries: list[_Entry]) -> None:
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

    def _open_file(self, entry: _Entry) -> FileSource:
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

        def wrap(opened: tuple[int, list[_Entry]]) -> MaildirMaildrop:
            return MaildirMaildrop(self, directory, *opened)

        # A kept snapshot whose lock file and directories are in the
        # kernel's caches: the open is a lock and two fstat() calls, cheaper
        # here than the round trip to a thread and back.
        return self.open_locked(directory, lambda: self._open(directory), wrap,
                                open_inline=lambda: self._open_kept(directory))

    def _open_kept(self, directory: str) -> tuple[int, list[_Entry]] | None:
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

    def _open(self, directory: str) -> tuple[int, list[_Entry]]:
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
