"""
Delivery into an mbox spool the way Postfix local(8) does it: append under
the MTA's locks, fsync, and cut the spool back on any error.  Blocking:
call it in a thread.
"""

from __future__ import annotations

import os
import pwd
import stat

from popgate import errors
from popgate.stores import mboxdotlock, mboxfcntl, mboxfile
from popgate.stores.durable import fsync_dir, write_all
from popgate.stores.mboxlock import LockSettings


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
        dotlock = mboxdotlock.acquire_dotlock(spool, locks)
        try:
            for _ in range(10):
                if _append_once(spool, message, sender, locks, owner):
                    return
            raise errors.TemporaryFailure(f"{spool} keeps being replaced")
        finally:
            mboxdotlock.release_dotlock(dotlock)
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
        mboxfcntl.lock_fcntl(fd, True, locks)
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
