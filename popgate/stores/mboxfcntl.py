"""
The fcntl lock Postfix local(8) and Exim take on a whole mbox spool after
the dotlock.  popgate's are Linux open file description locks
(C{F_OFD_SETLK}) where the platform has them: they conflict with the MTAs'
classic fcntl locks, and also between two descriptors of one process (an
LMTP delivery and a POP3 rewrite in the same popgate).  Blocks: call it in
a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys
import time

from popgate import errors
from popgate.stores.mboxlock import POLL, LockSettings, LockTimeout

_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (l_pid must be 0 for OFD locks), padded to 32.
_FLOCK = "hhqqi4x"
_USE_OFD = _OFD_SETLK is not None and sys.platform.startswith("linux") \
    and struct.calcsize("P") == 8


def _set_lock(fd: int, kind: int, wait: bool) -> None:
    if _USE_OFD and _OFD_SETLK is not None:  # (the first implies the second)
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
        time.sleep(POLL)


def unlock_fcntl(fd: int) -> None:
    _set_lock(fd, fcntl.F_UNLCK, wait=False)
