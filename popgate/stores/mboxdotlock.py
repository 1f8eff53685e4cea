"""
The dotlock Postfix local(8) and Exim take on an mbox spool
(C{/var/mail/user.lock}, created exclusively): taking it, waiting while
another program holds it, and releasing only our own.  Blocks: call it in
a thread.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from twisted.logger import Logger

from popgate import errors
from popgate.stores.durable import write_all
from popgate.stores.mboxlock import POLL, LockSettings, LockTimeout
from popgate.stores.mboxlockbreak import break_stale
from popgate.stores.mboxlockowner import (
    Host,
    lock_content,
    parse_owner,
    read_lock,
    stale_at,
    this_host,
)

log = Logger(namespace="popgate.stores.mboxlock")
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)


@dataclass(frozen=True, slots=True)
class Dotlock:
    """A dotlock this process holds: its path, and what tells the file it
    created from one made there later (inode numbers are reused at once)."""

    path: str
    dev: int
    ino: int
    ctime_ns: int
    content: bytes

    def is_at_path(self) -> bool:
        found = read_lock(self.path)
        if found is None:
            return False
        data, st = found
        return (st.st_dev, st.st_ino, st.st_ctime_ns, data) == \
            (self.dev, self.ino, self.ctime_ns, self.content)


def dotlock_path(spool: str) -> str:
    return spool + ".lock"


def acquire_dotlock(spool: str, settings: LockSettings) -> Dotlock | None:
    """
    Create C{spool.lock} exclusively, waiting while another program holds
    it, and breaking it when it is left over (L{stale_reason}).

    @return: the lock, to pass to L{release_dotlock}; C{None} when
        dotlocking is off.
    @raise LockTimeout: the lock stayed held.
    @raise errors.TemporaryFailure: it cannot be created (permissions).
    """
    if not settings.dotlock:
        return None
    path = dotlock_path(spool)
    host = this_host()
    content = lock_content(host)
    deadline = time.monotonic() + settings.timeout
    while True:
        try:
            return _create(path, content)
        except FileExistsError:
            pass
        except OSError as e:
            hint = (" (popgate needs write access to the spool directory, e.g. group mail "
                    "on /var/mail)" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "")
            raise errors.TemporaryFailure(
                f"cannot create the dotlock {path}: {e.strerror}{hint}") from e
        if stale_at(path, settings, host) is not None:
            try:
                why = break_stale(path, settings, host)
            except OSError as e:
                raise errors.TemporaryFailure(f"cannot remove the stale dotlock {path}: "
                                              f"{e.strerror}") from e
            if why is not None:
                log.warn("removed the dotlock {path}: {why}", path=path, why=why)
                if time.monotonic() < deadline:
                    continue  # take it at once
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is held by {_holder(path, host)}")
        time.sleep(POLL)


def _create(path: str, content: bytes) -> Dotlock:
    """
    Create the lock file with its content in one step: written to an
    unnamed file (C{O_TMPFILE}) and linked in, so that a process killed at
    any point leaves either no lock or one naming it, never an empty one.
    Where the file system has no C{O_TMPFILE}, C{O_EXCL} then a write.

    @raise FileExistsError: the lock is held.
    """
    directory = os.path.dirname(path) or "."
    if _O_TMPFILE and os.path.isdir("/proc/self/fd"):
        dir_fd = os.open(directory, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fd = os.open(".", _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
            else:
                try:
                    write_all(fd, content)
                    # linkat(AT_SYMLINK_FOLLOW), which os.link only does given a dir_fd
                    os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=dir_fd)
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                return Dotlock(path, st.st_dev, st.st_ino, st.st_ctime_ns, content)
        finally:
            os.close(dir_fd)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, content)
        except OSError:
            os.ftruncate(fd, 0)  # an empty lock file is still a lock (Postfix writes none)
            content = b""
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return Dotlock(path, st.st_dev, st.st_ino, st.st_ctime_ns, content)


def release_dotlock(lock: Dotlock | None) -> None:
    """Remove our dotlock, unless another program replaced it meanwhile
    (broke it as stale and took it): that one is theirs."""
    if lock is None:
        return
    try:
        ours = lock.is_at_path()
    except OSError:
        ours = True  # cannot tell: far likelier ours than a replacement
    if not ours:
        log.warn("the dotlock {path} was removed or replaced by another program while held",
                 path=lock.path)
        return
    try:
        os.unlink(lock.path)
    except FileNotFoundError:
        pass
    except OSError as e:  # this live process's lock: nothing else will remove it
        log.error("cannot remove the dotlock {path}: {e}", path=lock.path, e=e)


def _holder(path: str, host: Host) -> str:
    found = read_lock(path)
    if found is None:
        return "another program"
    owner = parse_owner(found[0])
    if owner.pid is None:
        return "another program (it names no owner)"
    if owner.host == host.name:
        return f"process {owner.pid}"
    return f"process {owner.pid} on host {owner.host or '(not named)'}"
