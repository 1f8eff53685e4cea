"""
An mbox spool under the MTA's locks (dotlock, then fcntl): the snapshot a
session reads at login (L{read_snapshot}) and the crash-safe rewrite that
removes its deleted messages at QUIT (L{rewrite_spool}); see
L{popgate.stores.mbox} for why the rewrite is safe against the MTAs.
Blocking: call these in a thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from popgate import errors
from popgate.stores import mboxdotlock, mboxfcntl, mboxfile
from popgate.stores.durable import fsync_dir, write_all
from popgate.stores.mboxfile import MboxEntry
from popgate.stores.mboxlock import LockSettings

log = Logger(namespace="popgate.stores.mbox")

REWRITE_SUFFIX = ".popgate-rewrite"
_COPY_CHUNK = 1 << 16


@dataclass(slots=True)
class Snapshot:
    """What a session saw at login: the spool's identity and contents."""

    fd: int | None
    dev: int
    ino: int
    length: int
    digest: str
    entries: list[MboxEntry]


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
    dotlock = mboxdotlock.acquire_dotlock(spool, locks)
    try:
        remove_leftover_rewrite(spool)
        try:
            fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return Snapshot(None, 0, 0, 0, hashlib.sha1().hexdigest(), [])
        try:
            mboxfcntl.lock_fcntl(fd, False, locks)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.PermanentFailure(f"{spool} is not a regular file")
            digest = hashlib.sha1()
            entries = mboxfile.parse(fd, st.st_size, digest)
            mboxfcntl.unlock_fcntl(fd)
        except BaseException:
            os.close(fd)
            raise
        return Snapshot(fd, st.st_dev, st.st_ino, st.st_size, digest.hexdigest(), entries)
    finally:
        mboxdotlock.release_dotlock(dotlock)


def rewrite_spool(spool: str, snapshot: Snapshot, deleted: set[int], locks: LockSettings) -> None:
    """
    Remove the messages C{deleted} (indexes into the snapshot) from the
    spool, crash-safely (see the module docstring).  Blocking.

    @raise errors.TemporaryFailure: nothing was changed (a lock timed out,
        the disk is full, someone else rewrote the spool since the
        snapshot), or the new spool is in place but its directory could
        not be synced.
    """
    dotlock = mboxdotlock.acquire_dotlock(spool, locks)
    tmp: str | None = None
    try:
        fd = os.open(spool, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mboxfcntl.lock_fcntl(fd, True, locks)
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
            mboxdotlock.release_dotlock(dotlock)


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
