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

import errno
import fcntl
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IMaildrop, IMailStore
from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.stores import mailpath
from popgate.stores.locks import SessionLocks
from popgate.stores.durable import fsync_dir

LOCK_FILE = "popgate-pop3.lock"
SIZE_CACHE = "popgate-sizes"
_W_SIZE = re.compile(r",W=(\d+)")
_TIME_PREFIX = re.compile(r"^(\d+)(?:\.M(\d+))?")
_READ_CHUNK = 1 << 16
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
    """Octets of the file once every bare LF is sent as CRLF."""
    size = 0
    previous_cr = False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _READ_CHUNK):
            crlf = chunk.count(b"\r\n") + (1 if previous_cr and chunk[:1] == b"\n" else 0)
            size += len(chunk) + chunk.count(b"\n") - crlf
            previous_cr = chunk[-1:] == b"\r"
    finally:
        os.close(fd)
    return size


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

    def get(self, directory: str, may_scan: bool = True) -> list[_Entry] | None:
        """
        A snapshot of C{directory}: the kept one if still valid, else a new
        scan (or C{None} when C{may_scan} is false).
        """
        stamp = _stamp(directory)
        with self._lock:
            kept = self._snapshots.get(directory)
            if kept is not None and stamp is not None and kept[0] == stamp:
                self._snapshots.move_to_end(directory)
                return kept[1]
        if not may_scan:
            return None
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


def ensure_maildir(directory: str) -> None:
    """Create an empty Maildir (mode 0700) where none exists yet."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)


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
class MaildirMaildrop:
    """An opened, locked snapshot of one Maildir."""

    def __init__(self, store: "MaildirStore", key: str, directory: str,
                 lock_fd: int, entries: list[_Entry]) -> None:
        self._store = store
        self._key = key
        self.directory = directory
        self._lock_fd: int | None = lock_fd
        self._entries = entries
        self._infos = [e.info for e in entries]

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> BinaryIO | defer.Deferred[BinaryIO]:
        entry = self._entries[index]
        try:
            return open(os.path.join(self.directory, entry.subdir, entry.name), "rb")
        except FileNotFoundError:
            # Renamed by another agent (flags, new/ -> cur/): finding it
            # means listing a directory that may hold 100,000 names, which
            # is no job for the reactor thread.
            return self._store._in_thread(self._open_moved, entry)

    def _open_moved(self, entry: _Entry) -> BinaryIO:
        moved = _find_moved(self.directory, entry)
        if moved is None:
            raise errors.PermanentFailure(f"message {entry.base} was removed")
        return open(moved, "rb")

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        gone = [self._entries[i] for i in deleted]
        if not gone:
            self.close()
            return defer.succeed(None)
        self._store._snapshots.forget(self.directory)
        d = self._store._in_thread(self._remove, gone)
        d.addBoth(self._release_passthrough)
        return d

    def _remove(self, gone: list[_Entry]) -> None:
        failed = 0
        touched: set[str] = set()
        for entry in gone:
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
            raise errors.TemporaryFailure(f"{failed} messages could not be removed")

    def _release_passthrough(self, result: object) -> object:
        self.close()
        return result

    def close(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # drops the flock
            self._store._locks.release(self._key)


@implementer(IMailStore)
class MaildirStore:
    """
    Users' Maildirs found by a template: C{%u} full user name, C{%n} local
    part, C{%d} domain (C{/var/mail/%d/%n}).
    """

    def __init__(self, template: str, reactor: Any = None, create: bool = True) -> None:
        self.template = mailpath.check_template(template)
        self.create = create
        self._reactor = reactor
        self._locks = SessionLocks()
        self._snapshots = SnapshotCache()

    def _in_thread(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def maildir_for(self, user: str) -> str:
        """
        The user's Maildir: the location the user store gave at login (an
        LDAP attribute, a SQL column; C{maildir:} prefix allowed), else the
        template expanded for C{user}.
        """
        location = getattr(user, "mail_location", None)
        if location:
            if location.startswith("maildir:"):
                location = location[len("maildir:"):]
            if not os.path.isabs(location):
                raise errors.PermanentFailure(f"mail location {location!r} is not an absolute path")
            return location
        return mailpath.expand(self.template, user)

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[MaildirMaildrop]:
        try:
            directory = os.path.abspath(self.maildir_for(avatar_id))
            self._locks.acquire(directory)
        except (errors.PermanentFailure, errors.MaildropInUse):
            return defer.fail()  # the interface promises a Deferred
        if self._snapshots.known(directory):
            # A kept snapshot: the open is a lock and two stat() calls,
            # cheaper here than the round trip to a thread and back.
            try:
                result = self._open(directory, may_scan=False)
            except BaseException:
                self._locks.release(directory)
                return defer.fail()
            if result is not None:
                return defer.succeed(MaildirMaildrop(self, directory, directory, *result))
        d = self._in_thread(self._open, directory)

        def opened(result: tuple[int, list[_Entry]]) -> MaildirMaildrop:
            fd, entries = result
            return MaildirMaildrop(self, directory, directory, fd, entries)

        def failed(failure: Any) -> Any:
            self._locks.release(directory)
            return failure

        return d.addCallbacks(opened, failed)

    def _open(self, directory: str, may_scan: bool = True) -> tuple[int, list[_Entry]] | None:
        """
        Lock and scan (in a thread).  With C{may_scan=False}, only a kept
        snapshot will do: C{None} (and no lock) when it is stale.
        """
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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise errors.MaildropInUse(directory) from e
            raise errors.TemporaryFailure(f"cannot lock {directory}: {e}") from e
        try:
            if not may_scan:
                entries = self._snapshots.get(directory, may_scan=False)
                if entries is None:
                    os.close(fd)
                    return None
                return fd, entries
            return fd, self._snapshots.get(directory)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise errors.TemporaryFailure(f"cannot read {directory}: {e}") from e
            raise


def make_store(argstring: str) -> MaildirStore:
    """
    The C{maildir:TEMPLATE[,shared=yes]} store plugin.  A template without
    C{%u}/C{%n} is refused unless C{shared=yes}: every user would read
    everyone's mail.

    @raise ValueError: with a one-line reason.
    """
    if not argstring:
        raise ValueError("maildir: needs a location template, e.g. maildir:/var/mail/%d/%n")
    template, shared = mailpath.pop_shared(argstring, "maildir")
    mailpath.check_template(template)
    mailpath.check_per_user(template, "maildir", shared)
    return MaildirStore(template)
