"""
The locks Postfix local(8) and Exim take on an mbox spool on Debian, taken
the same way and in the same order: a dotlock file (C{/var/mail/user.lock},
created with C{O_EXCL}, removed when older than a few minutes), then an
fcntl lock on the whole spool.

popgate's fcntl locks are Linux open file description locks
(C{F_OFD_SETLK}) where the platform has them: they conflict with the
classic fcntl locks the MTAs take, but, unlike those, they also conflict
between two descriptors of one process (an LMTP delivery and a POP3
rewrite in the same popgate) and are not dropped when some other
descriptor of the file is closed.

All functions block (they poll while a lock is held elsewhere): call them
in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys
import time
from dataclasses import dataclass

from popgate import errors

_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (l_pid must be 0 for OFD locks), padded to 32.
_FLOCK = "hhqqi4x"
_USE_OFD = _OFD_SETLK is not None and sys.platform.startswith("linux") \
    and struct.calcsize("P") == 8
_POLL = 0.05


class LockTimeout(errors.TemporaryFailure):
    """A lock stayed held elsewhere for longer than the timeout."""


@dataclass(frozen=True, slots=True)
class LockSettings:
    """
    @ivar timeout: seconds to wait for a lock before giving up (the MTA
        then retries the delivery; a POP3 client gets C{[SYS/TEMP]}).
    @ivar stale_after: a dotlock older than this is left over from a crash
        and is removed (Postfix: C{stale_lock_time}, 500 s).
    @ivar dotlock: take the dotlock at all (it needs write access to the
        spool directory, on Debian group C{mail}).
    """

    timeout: float = 20.0
    stale_after: float = 600.0
    dotlock: bool = True


def dotlock_path(spool: str) -> str:
    return spool + ".lock"


def acquire_dotlock(spool: str, settings: LockSettings) -> str | None:
    """
    Create C{spool.lock} exclusively, waiting while another program holds
    it, and removing it when it is stale.

    @return: the lock's path, to pass to L{release_dotlock}; C{None} when
        dotlocking is off.
    @raise LockTimeout: the lock stayed held.
    @raise errors.TemporaryFailure: it cannot be created (permissions).
    """
    if not settings.dotlock:
        return None
    path = dotlock_path(spool)
    deadline = time.monotonic() + settings.timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            _remove_if_stale(path, settings.stale_after)
        except OSError as e:
            raise errors.TemporaryFailure(
                f"cannot create the dotlock {path}: {e.strerror} (popgate needs write "
                "access to the spool directory, e.g. group mail on /var/mail)") from e
        else:
            try:
                os.write(fd, b"%d\n" % os.getpid())
            except OSError:
                pass  # an empty lock file is still a lock (Postfix writes none)
            finally:
                os.close(fd)
            return path
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is held by another program")
        time.sleep(_POLL)


def _remove_if_stale(path: str, stale_after: float) -> None:
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return
    if age > stale_after:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def release_dotlock(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _set_lock(fd: int, kind: int, wait: bool) -> None:
    if _USE_OFD:
        cmd = _OFD_SETLK
        fcntl.fcntl(fd, cmd, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    else:  # pragma: no cover - not Linux
        op = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX,
              fcntl.F_UNLCK: fcntl.LOCK_UN}[kind]
        fcntl.lockf(fd, op if wait or kind == fcntl.F_UNLCK else op | fcntl.LOCK_NB)


def lock_fcntl(fd: int, exclusive: bool, settings: LockSettings) -> None:
    """
    Take a whole-file fcntl lock on C{fd}: a write lock (C{exclusive}) to
    change the spool, a read lock to read it.

    @raise LockTimeout: the lock stayed held.
    """
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    deadline = time.monotonic() + settings.timeout
    while True:
        try:
            _set_lock(fd, kind, wait=False)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise errors.TemporaryFailure(f"cannot lock the mailbox: {e.strerror}") from e
        if time.monotonic() >= deadline:
            raise LockTimeout("the mailbox is locked by another program")
        time.sleep(_POLL)


def unlock_fcntl(fd: int) -> None:
    _set_lock(fd, fcntl.F_UNLCK, wait=False)
