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

LOCK_FILE = "popgate-pop3.lock"
SIZE_CACHE = "popgate-sizes"
_W_SIZE = re.compile(r",W=(\d+)")
_TIME_PREFIX = re.compile(r"^(\d+)(?:\.M(\d+))?")
_READ_CHUNK = 1 << 16

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
    raw = base.encode("utf-8", "surrogateescape")
    if is_valid_uid(raw):
        return raw
    return hashlib.sha1(raw).hexdigest().encode("ascii")


def file_wire_size(path: str) -> int:
    """Octets of the file once every bare LF is sent as CRLF."""
    size = 0
    previous_cr = False
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crlf = chunk.count(b"\r\n") + (1 if previous_cr and chunk[:1] == b"\n" else 0)
            size += len(chunk) + chunk.count(b"\n") - crlf
            previous_cr = chunk[-1:] == b"\r"
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
    entries: list[_Entry] = []
    seen: set[str] = set()
    for subdir in ("cur", "new"):
        path = os.path.join(directory, subdir)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            base = base_name(name)
            if base in seen:
                continue  # the same message seen in new/ and cur/ mid-rename
            match = _W_SIZE.search(base)
            if match is not None:
                size = int(match.group(1))
            else:
                cached = cache.sizes.get(base)
                if cached is None:
                    try:
                        cached = file_wire_size(os.path.join(path, name))
                    except FileNotFoundError:
                        continue  # moved or expunged while we scanned
                    cache.sizes[base] = cached
                    cache.dirty = True
                size = cached
            seen.add(base)
            entries.append(_Entry(subdir, name, base, MessageInfo(unique_id(base), size)))
    cache.save(seen)
    entries.sort(key=lambda e: _order_key(e.base))
    return entries


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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def open_message(self, index: int) -> BinaryIO:
        entry = self._entries[index]
        try:
            return open(os.path.join(self.directory, entry.subdir, entry.name), "rb")
        except FileNotFoundError:
            moved = _find_moved(self.directory, entry)
            if moved is None:
                raise errors.PermanentFailure(f"message {entry.base} was removed")
            return open(moved, "rb")

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        gone = [self._entries[i] for i in deleted]
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
            _fsync_dir(path)
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
        directory = os.path.abspath(self.maildir_for(avatar_id))
        self._locks.acquire(directory)
        d = self._in_thread(self._open, directory)

        def opened(result: tuple[int, list[_Entry]]) -> MaildirMaildrop:
            fd, entries = result
            return MaildirMaildrop(self, directory, directory, fd, entries)

        def failed(failure: Any) -> Any:
            self._locks.release(directory)
            return failure

        return d.addCallbacks(opened, failed)

    def _open(self, directory: str) -> tuple[int, list[_Entry]]:
        """Lock and scan; runs in a thread."""
        try:
            if self.create:
                ensure_maildir(directory)
            fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
            return fd, scan(directory)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise errors.TemporaryFailure(f"cannot read {directory}: {e}") from e
            raise


def make_store(argstring: str) -> MaildirStore:
    """The C{maildir:TEMPLATE} store plugin."""
    if not argstring:
        raise ValueError("maildir: needs a location template, e.g. maildir:/var/mail/%d/%n")
    return MaildirStore(argstring)
