"""
mbox spools (C{/var/mail/alice}) as Postfix local(8) and Exim write them
on Debian: C{--store mbox:/var/mail/%u}.

Locking, like Dovecot and qpopper:

- a POP3 session holds popgate's own lock for its whole length (the
  sequence of L{popgate.stores.base}): the in-process lock and an
  C{flock} on C{<spool>.popgate-lock} (or a file in C{lockdir=}), so a
  second session gets C{[IN-USE]} but the MTA is never kept waiting by a
  session;
- the MTA's locks (dotlock, then fcntl; see L{popgate.stores.mboxlock}) are
  taken only for a moment: while the snapshot is read at login, while a
  delivery appends, and while QUIT rewrites the spool.

The snapshot is byte offsets: mail the MTA appends during the session lies
after them, is not shown, and is copied unchanged by the rewrite.

Deleting at QUIT writes the new spool to a temporary file in the same
directory (kept messages, then everything appended since the snapshot),
fsyncs it, gives it the old file's owner and mode, renames it over the
spool and fsyncs the directory, all while holding the dotlock and the fcntl
lock.  If popgate dies at any point, the spool is either the old file or
the new one, so every message that was not deleted is there exactly once;
what it leaves behind does not hold up the next login: the dotlock names
its dead owner and is broken at once (L{mboxlock.stale_reason}), and the
temporary file is deleted (L{remove_leftover_rewrite}).

The rename gives the spool a new inode; that is safe against Postfix and
Exim because both take the dotlock before they open the spool, and popgate
holds it until the new file is in place.  See docs/postfix.md.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore
from popgate.maildrop import MessageInfo
from popgate.stores import mailpath, mboxfile, mboxlock
from popgate.stores.base import LockedMaildrop, LockingStore, take_flock
from popgate.stores.durable import fsync_dir, write_all
from popgate.stores.mboxfile import MboxEntry, MessageReader, NotAnMbox
from popgate.stores.mboxlock import LockSettings
from popgate.stores.mboxuidl import DuplicateIds, assign_uids

log = Logger()

SESSION_LOCK_SUFFIX = ".popgate-lock"
REWRITE_SUFFIX = ".popgate-rewrite"
_COPY_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class MboxSettings:
    """
    @ivar template: the spool's location, C{%u}/C{%n}/C{%d} expanded.
    @ivar lockdir: where the POP3 session lock files live (default: next
        to the spool, as C{<spool>.popgate-lock}).
    @ivar xuidl: use an C{X-UIDL:} header as the UIDL when a message has
        one (what qpopper and UW wrote), so clients keep their state.
    """

    template: str
    lockdir: str | None = None
    locks: LockSettings = field(default_factory=LockSettings)
    xuidl: bool = True


@dataclass(slots=True)
class Snapshot:
    """What a session saw at login: the spool's identity and contents."""

    fd: int | None
    dev: int
    ino: int
    length: int
    digest: str
    entries: list[MboxEntry]


def session_lock_path(spool: str, lockdir: str | None) -> str:
    """C{<spool>.popgate-lock}, or a file named after the spool's path in
    C{lockdir}."""
    if lockdir is None:
        return spool + SESSION_LOCK_SUFFIX
    flat = spool.strip("/").replace("%", "%25").replace("/", "%2F")
    if len(flat.encode("utf-8", "surrogateescape")) > 200:
        flat = hashlib.sha1(spool.encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(lockdir, flat + SESSION_LOCK_SUFFIX)


def uidl_record_path(spool: str, lockdir: str | None) -> str:
    """Where L{DuplicateIds} keeps its record: beside the session lock."""
    return session_lock_path(spool, lockdir)[:-len(SESSION_LOCK_SUFFIX)] + ".popgate-uidl"


def rewrite_path(spool: str) -> str:
    directory, name = os.path.split(spool)
    return os.path.join(directory, f".{name}{REWRITE_SUFFIX}")


def remove_leftover_rewrite(spool: str) -> None:
    """
    Delete the temporary file of a QUIT rewrite that was killed before
    its rename: it only ever holds copies of what the spool still holds.
    Call it while no rewrite can run: holding the session lock (every
    rewrite runs inside a session) and, unless C{dotlock=no}, the dotlock.
    """
    tmp = rewrite_path(spool)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        return
    except OSError as e:
        log.warn("cannot remove {tmp}, left over from an interrupted QUIT: {e}", tmp=tmp, e=e)
        return
    log.info("removed {tmp}, left over from an interrupted QUIT (the spool is intact)", tmp=tmp)


def read_snapshot(spool: str, locks: LockSettings) -> Snapshot:
    """
    Read the spool under the MTA's locks (dotlock, fcntl read lock), then
    let go of them; the returned descriptor stays open for RETR.  A
    rewrite's leftover temporary file is removed on the way.
    Blocking: call it in a thread.
    """
    dotlock = mboxlock.acquire_dotlock(spool, locks)
    try:
        remove_leftover_rewrite(spool)
        try:
            fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return Snapshot(None, 0, 0, 0, hashlib.sha1().hexdigest(), [])
        try:
            mboxlock.lock_fcntl(fd, False, locks)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.PermanentFailure(f"{spool} is not a regular file")
            digest = hashlib.sha1()
            entries = mboxfile.parse(fd, st.st_size, digest)
            mboxlock.unlock_fcntl(fd)
        except BaseException:
            os.close(fd)
            raise
        return Snapshot(fd, st.st_dev, st.st_ino, st.st_size, digest.hexdigest(), entries)
    finally:
        mboxlock.release_dotlock(dotlock)


def rewrite_spool(spool: str, snapshot: Snapshot, deleted: set[int], locks: LockSettings) -> None:
    """
    Remove the messages C{deleted} (indexes into the snapshot) from the
    spool, crash-safely (see the module docstring).  Blocking.

    @raise errors.TemporaryFailure: nothing was changed (a lock timed out,
        the disk is full, someone else rewrote the spool since the
        snapshot), or the new spool is in place but its directory could
        not be synced.
    """
    dotlock = mboxlock.acquire_dotlock(spool, locks)
    tmp: str | None = None
    try:
        fd = os.open(spool, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mboxlock.lock_fcntl(fd, True, locks)
            st = os.fstat(fd)
            if ((st.st_dev, st.st_ino) != (snapshot.dev, snapshot.ino)
                    or st.st_size < snapshot.length):
                raise errors.TemporaryFailure(f"{spool} was replaced since login; nothing deleted")
            tmp = rewrite_path(spool)
            try:
                os.unlink(tmp)  # left over from a crash
            except FileNotFoundError:
                pass
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600)
            try:
                _copy_kept(fd, out, snapshot, deleted)
                _copy(fd, out, snapshot.length, st.st_size, None)  # appended since login
                _match_owner(out, st, spool)
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(tmp, spool)
            tmp = None
            fsync_dir(os.path.dirname(spool) or ".")
        finally:
            os.close(fd)  # drops the fcntl lock
    except OSError as e:
        raise errors.TemporaryFailure(f"cannot rewrite {spool}: {e}") from e
    finally:
        try:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        finally:
            mboxlock.release_dotlock(dotlock)


def _copy(src: int, dst: int, start: int, end: int, digest: Any) -> None:
    pos = start
    while pos < end:
        data = os.pread(src, min(_COPY_CHUNK, end - pos), pos)
        if not data:
            raise errors.TemporaryFailure("the spool shrank while it was being rewritten")
        if digest is not None:
            digest.update(data)
        if dst >= 0:
            write_all(dst, data)
        pos += len(data)


def _copy_kept(src: int, dst: int, snapshot: Snapshot, deleted: set[int]) -> None:
    """Copy the snapshot's messages but the deleted ones, checking on the
    way that the snapshot's bytes are still what login saw."""
    digest = hashlib.sha1()
    first = snapshot.entries[0].start if snapshot.entries else snapshot.length
    _copy(src, dst, 0, first, digest)
    for index, entry in enumerate(snapshot.entries):
        _copy(src, -1 if index in deleted else dst, entry.start, entry.end, digest)
    if digest.hexdigest() != snapshot.digest:
        raise errors.TemporaryFailure("the spool was changed by another program since login; "
                                      "nothing deleted")


def _match_owner(fd: int, original: os.stat_result, spool: str) -> None:
    """Give the new spool the old one's owner, group and mode, or fail:
    a spool the MTA can no longer write to would defer all mail."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (original.st_uid, original.st_gid):
        try:
            os.fchown(fd, original.st_uid, original.st_gid)
        except PermissionError as e:
            raise errors.TemporaryFailure(
                f"cannot give the rewritten {spool} its owner {original.st_uid}:{original.st_gid}: "
                "run popgate as root or as the spool's owner") from e
    os.fchmod(fd, stat.S_IMODE(original.st_mode))


def append_to_spool(spool: str, message: bytes, sender: str | None, locks: LockSettings,
                    owner: str | None = None) -> None:
    """
    Append one message under the MTA's locks, fsync it, and on any error
    cut the spool back to where it was (as Postfix does).  Blocking.

    @param owner: a system user name: a spool created here gets that
        user's uid and the spool directory's group, mode 0660, the way
        Debian's MTAs create C{/var/mail/user} (when popgate runs as root).
    """
    directory = os.path.dirname(spool) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dotlock = mboxlock.acquire_dotlock(spool, locks)
        try:
            for _ in range(10):
                if _append_once(spool, message, sender, locks, owner):
                    return
            raise errors.TemporaryFailure(f"{spool} keeps being replaced")
        finally:
            mboxlock.release_dotlock(dotlock)
    except OSError as e:
        raise errors.TemporaryFailure(f"cannot deliver to {spool}: {e}") from e


def _append_once(spool: str, message: bytes, sender: str | None, locks: LockSettings,
                 owner: str | None) -> bool:
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(spool, flags | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        fd = os.open(spool, flags)
        created = False
    try:
        mboxlock.lock_fcntl(fd, True, locks)
        st = os.fstat(fd)
        try:
            now = os.stat(spool, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False  # renamed over while we waited for the lock: retry
        if not stat.S_ISREG(st.st_mode):
            raise errors.PermanentFailure(f"{spool} is not a regular file")
        if created and owner is not None:
            _give_to(fd, owner, os.path.dirname(spool) or ".")
        tail = os.pread(fd, min(2, st.st_size), max(0, st.st_size - 2))
        data = mboxfile.entry_for_append(message, sender, tail)
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, st.st_size)
            except OSError:
                pass
            raise
        if created:
            fsync_dir(os.path.dirname(spool) or ".")
        return True
    finally:
        os.close(fd)


def _give_to(fd: int, user: str, directory: str) -> None:
    if os.geteuid() != 0:
        return
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    os.fchown(fd, uid, os.stat(directory).st_gid)
    os.fchmod(fd, 0o660)


@implementer(IMaildrop)
class MboxMaildrop(LockedMaildrop):
    """One session's snapshot of a spool, holding popgate's session lock."""

    def __init__(self, store: MboxStore, spool: str, opened: _Opened) -> None:
        super().__init__(store, spool, opened.lock_fd)
        self._store = store
        self.spool = spool
        self._snapshot = opened.snapshot
        self._uids = opened.uids
        self._duplicates = opened.duplicates
        self._infos = [MessageInfo(uid, e.size)
                       for uid, e in zip(opened.uids, opened.snapshot.entries, strict=True)]

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> MessageReader:
        if self._snapshot.fd is None:
            raise errors.PermanentFailure("maildrop closed")
        return MessageReader(self._snapshot.fd, self._snapshot.entries[index])

    def apply(self, deleted: list[int]) -> None:
        """Rewrite the spool, then retire the deleted copies' ids."""
        rewrite_spool(self.spool, self._snapshot, set(deleted), self._store.settings.locks)
        for index in deleted:
            self._duplicates.forget(self._snapshot.entries[index].digest, self._uids[index])
        self._duplicates.save()

    def release_resources(self) -> None:
        if self._snapshot.fd is not None:
            fd, self._snapshot.fd = self._snapshot.fd, None
            os.close(fd)


@dataclass(slots=True)
class _Opened:
    lock_fd: int | None
    snapshot: Snapshot
    uids: list[bytes]
    duplicates: DuplicateIds


@implementer(IMailStore, IDeliveryTarget)
class MboxStore(LockingStore):
    """Spools found by a template: C{/var/mail/%u}, C{/var/mail/%d/%n}."""

    def __init__(self, settings: MboxSettings, reactor: Any) -> None:
        super().__init__(reactor)
        mailpath.check_template(settings.template)
        self.settings = settings

    def spool_for(self, user: str) -> str:
        return os.path.abspath(mailpath.expand(self.settings.template, user))

    # IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[MboxMaildrop]:
        try:
            spool = self.spool_for(avatar_id)
        except Exception:
            return defer.fail()
        return self.open_locked(spool, lambda: self._open(spool),
                                lambda opened: MboxMaildrop(self, spool, opened))

    def _open(self, spool: str) -> _Opened:
        """Take the session lock, read the snapshot.  Blocking."""
        path = session_lock_path(spool, self.settings.lockdir)
        if not os.path.isdir(os.path.dirname(path)) and not os.path.lexists(spool):
            # No spool, and nowhere to put a lock (a virtual domain's first
            # user): an empty maildrop, locked in this process only, since
            # there is nothing to delete.
            empty = Snapshot(None, 0, 0, 0, hashlib.sha1().hexdigest(), [])
            return _Opened(None, empty, [], DuplicateIds(os.devnull))
        try:
            lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise errors.TemporaryFailure(f"cannot open the session lock {path}: {e}") from e
        take_flock(lock_fd, spool, path)
        try:
            try:
                snapshot = read_snapshot(spool, self.settings.locks)
            except NotAnMbox as e:
                log.error("{spool} is not an mbox: {why}", spool=spool, why=str(e))
                raise errors.PermanentFailure(f"{spool} is not an mbox") from e
            except PermissionError as e:
                raise errors.PermanentFailure(f"cannot read {spool}: {e}") from e
            except OSError as e:
                raise errors.TemporaryFailure(f"cannot read {spool}: {e}") from e
        except BaseException:
            os.close(lock_fd)
            raise
        duplicates = DuplicateIds(uidl_record_path(spool, self.settings.lockdir))
        uids = assign_uids(snapshot.entries, self.settings.xuidl, duplicates)
        duplicates.save()
        return _Opened(lock_fd, snapshot, uids, duplicates)

    # IDeliveryTarget

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[None]:
        try:
            spool = self.spool_for(user)
        except Exception:
            return defer.fail()
        owner = user if "@" not in user else None  # a system user, as in /var/mail/%u
        return self.in_thread(append_to_spool, spool, message, sender, self.settings.locks, owner)


_BOOLEAN = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse_argstring(argstring: str) -> MboxSettings:
    """
    C{TEMPLATE[,lockdir=DIR][,lock_timeout=SECONDS][,stale_lock=SECONDS]
    [,dotlock=yes|no][,xuidl=yes|no]}.

    @raise ValueError: with a one-line reason.
    """
    if not argstring:
        raise ValueError("mbox: needs a spool location, e.g. mbox:/var/mail/%u")
    first, *rest = argstring.split(",")
    template = first[len("path="):] if first.startswith("path=") else first
    values: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"mbox: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    locks: dict[str, Any] = {}
    lockdir = values.pop("lockdir", None) or None
    xuidl = True
    try:
        if "lock_timeout" in values:
            locks["timeout"] = float(values.pop("lock_timeout"))
        if "stale_lock" in values:
            locks["stale_after"] = float(values.pop("stale_lock"))
    except ValueError:
        raise ValueError("mbox: lock_timeout and stale_lock are numbers of seconds") from None
    for key in ("dotlock", "xuidl"):
        if key in values:
            text = values.pop(key).lower()
            if text not in _BOOLEAN:
                raise ValueError(f"mbox: {key} must be yes or no")
            if key == "dotlock":
                locks["dotlock"] = _BOOLEAN[text]
            else:
                xuidl = _BOOLEAN[text]
    if values:
        raise ValueError(f"mbox: unknown option {sorted(values)[0]!r} "
                         "(known: lockdir, lock_timeout, stale_lock, dotlock, xuidl)")
    mailpath.check_template(template)
    return MboxSettings(template, lockdir, LockSettings(**locks), xuidl)


def make_store(argstring: str, reactor: Any) -> MboxStore:
    """The C{mbox:TEMPLATE[,options][,shared=yes]} store plugin, on
    C{reactor}; a template without C{%u}/C{%n} needs C{shared=yes}
    (L{mailpath.check_per_user})."""
    argstring, shared = mailpath.pop_shared(argstring, "mbox")
    settings = parse_argstring(argstring)
    mailpath.check_per_user(settings.template, "mbox", shared)
    return MboxStore(settings, reactor)
