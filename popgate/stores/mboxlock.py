"""
The locks Postfix local(8) and Exim take on an mbox spool on Debian, taken
the same way and in the same order: a dotlock file (C{/var/mail/user.lock},
created exclusively), then an fcntl lock on the whole spool.

popgate's fcntl locks are Linux open file description locks
(C{F_OFD_SETLK}) where the platform has them: they conflict with the
classic fcntl locks the MTAs take, but, unlike those, they also conflict
between two descriptors of one process (an LMTP delivery and a POP3
rewrite in the same popgate) and are not dropped when some other
descriptor of the file is closed.

A dotlock outlives a process killed while holding it, so popgate's names
its owner (see L{lock_content}) and one whose owner is a dead process of
this host is broken at once (see L{stale_reason}); one from another host,
or one naming no owner (Postfix writes an empty file), only once it is
older than C{stale_lock}.

All functions block (they poll while a lock is held elsewhere): call them
in a thread.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.logger import Logger

from popgate import errors
from popgate.stores.durable import write_all

log = Logger()

_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (l_pid must be 0 for OFD locks), padded to 32.
_FLOCK = "hhqqi4x"
_USE_OFD = _OFD_SETLK is not None and sys.platform.startswith("linux") \
    and struct.calcsize("P") == 8
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_POLL = 0.05
# How much later than a lock's mtime a process may have started and still
# be the one that wrote it: /proc/stat's boot time is whole seconds.
_REUSE_SLACK = 2.0


class LockTimeout(errors.TemporaryFailure):
    """A lock stayed held elsewhere for longer than the timeout."""


@dataclass(frozen=True, slots=True)
class LockSettings:
    """
    @ivar timeout: seconds to wait for a lock before giving up (the MTA
        then retries the delivery; a POP3 client gets C{[SYS/TEMP]}).
    @ivar stale_after: a dotlock whose owner cannot be checked (another
        host's, or one naming no process) older than this is left over
        from a crash and is removed (Postfix: C{stale_lock_time}, 500 s).
        One naming a dead process of this host is removed at once, one
        naming a live one never.
    @ivar dotlock: take the dotlock at all (it needs write access to the
        spool directory, on Debian group C{mail}).
    """

    timeout: float = 20.0
    stale_after: float = 600.0
    dotlock: bool = True


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
        found = _read_lock(self.path)
        if found is None:
            return False
        data, st = found
        return (st.st_dev, st.st_ino, st.st_ctime_ns, data) == \
            (self.dev, self.ino, self.ctime_ns, self.content)


# -- who holds a lock


@dataclass(frozen=True, slots=True)
class Host:
    """
    What tells this host's processes apart from others': what popgate
    writes into its dotlocks, and what it checks theirs against.

    @ivar boot_id: the kernel's random id for this boot.
    @ivar booted_at: when this host booted (wall clock).
    @ivar pid_ns: the PID namespace (a container has its own).
    @ivar start: this process's start time, in clock ticks since boot.
    """

    name: str
    boot_id: str | None = None
    booted_at: float | None = None
    pid_ns: str | None = None
    clock_ticks: int = 100
    start: int | None = None


_hosts: dict[int, Host] = {}  # by pid: a forked child is another process


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "localhost"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return None


def this_host() -> Host:
    """This host and process, as L{lock_content} names them."""
    pid = os.getpid()
    name = _safe_name(socket.gethostname())
    host = _hosts.get(pid)
    if host is None or host.name != name:
        boot_id = (_read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None
        btime = re.search(r"^btime (\d+)$", _read_text("/proc/stat") or "", re.MULTILINE)
        try:
            pid_ns: str | None = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or None
        except OSError:
            pid_ns = None
        try:
            ticks = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError):
            ticks = 100
        mine = process_state(pid)
        host = Host(name, boot_id, float(btime.group(1)) if btime else None, pid_ns,
                    ticks, mine[1] if mine else None)
        _hosts[pid] = host
    return host


def process_state(pid: int) -> tuple[str, int] | None:
    """The state letter (C{R}, C{S}, C{Z}...) and start time (ticks since
    boot) of process C{pid} from C{/proc/PID/stat}, or C{None} where that
    cannot be read (no /proc, C{hidepid}, or no such process)."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def lock_content(host: Host) -> bytes:
    """
    What popgate writes into its dotlocks: C{PID:HOSTNAME} on the first
    line (a leading decimal PID is what liblockfile and Exim read; Dovecot
    writes C{PID:HOSTNAME} too), then a line of its own with the boot id,
    the PID namespace and the process's start time, which tell a dead
    owner from a live process that got the same PID later.
    """
    text = f"{os.getpid()}:{host.name}\n"
    extras = [f"{key}={value}" for key, value in
              (("boot", host.boot_id), ("pidns", host.pid_ns), ("start", host.start))
              if value is not None]
    if extras:
        text += "popgate " + " ".join(extras) + "\n"
    return text.encode("ascii")


@dataclass(frozen=True, slots=True)
class LockOwner:
    """What a dotlock says about who holds it (all optional)."""

    pid: int | None = None
    host: str | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    start: int | None = None


_FIRST_LINE = re.compile(rb"\s*(\d{1,10})(?::([A-Za-z0-9._-]+))?\s*")


def parse_owner(data: bytes) -> LockOwner:
    """Read C{PID}, C{PID:HOST} (Dovecot, popgate) and popgate's second
    line; anything else names no owner."""
    first, _, rest = data.partition(b"\n")
    match = _FIRST_LINE.fullmatch(first)
    if match is None or not 0 < int(match.group(1)) < 1 << 31:
        return LockOwner()
    host = match.group(2).decode("ascii") if match.group(2) else None
    extras: dict[str, str] = {}
    second, newline, _ = rest.partition(b"\n")
    if newline and second.startswith(b"popgate "):  # only a whole line counts
        for word in second.split()[1:]:
            key, eq, value = word.decode("ascii", "replace").partition("=")
            if eq:
                extras[key] = value
    start = extras.get("start", "")
    return LockOwner(int(match.group(1)), host, extras.get("boot"), extras.get("pidns"),
                     int(start) if start.isdigit() else None)


class Owner(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


def owner_state(owner: LockOwner, mtime: float, host: Host) -> tuple[Owner, str]:
    """
    Whether the process a lock names is still running, with the reason.

    A lock of this host (same name, boot and PID namespace) names a dead
    owner if no such process exists or it is a zombie, or if the process
    with that PID is another one: its start time differs from the one the
    lock records (popgate's locks), or, for a lock that records none, it
    started after the lock's mtime.  C{kill(pid, 0)} failing with EPERM
    means the process exists (another user's).
    """
    if owner.pid is None:
        return Owner.UNKNOWN, "it names no owner"
    if owner.host is None:
        return Owner.UNKNOWN, f"it names process {owner.pid} but no host"
    if owner.host != host.name:
        return Owner.UNKNOWN, f"it belongs to host {owner.host}"
    if owner.boot_id and host.boot_id and owner.boot_id != host.boot_id:
        if host.booted_at is not None and mtime < host.booted_at - _REUSE_SLACK:
            return Owner.DEAD, "it was taken before this host last booted"
        return Owner.UNKNOWN, f"it belongs to another boot of host {owner.host}"
    if owner.pid_ns and host.pid_ns and owner.pid_ns != host.pid_ns:
        return Owner.UNKNOWN, "it belongs to another PID namespace (container)"
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return Owner.DEAD, f"its owner, process {owner.pid}, is gone"
    except PermissionError:
        pass  # it exists, as another user
    except (OverflowError, OSError):
        return Owner.UNKNOWN, f"process {owner.pid} cannot be checked"
    state = process_state(owner.pid)
    if state is None:
        return Owner.ALIVE, f"process {owner.pid} is running"
    letter, started = state
    if letter in ("Z", "X"):
        return Owner.DEAD, f"its owner, process {owner.pid}, has exited"
    if owner.start is not None:
        if owner.start != started:
            return Owner.DEAD, f"its owner is gone: process {owner.pid} is another process now"
        return Owner.ALIVE, f"process {owner.pid} is running"
    if (host.booted_at is not None
            and host.booted_at + started / host.clock_ticks > mtime + _REUSE_SLACK):
        return Owner.DEAD, (f"its owner is gone: process {owner.pid} started after the lock "
                            "was taken")
    return Owner.ALIVE, f"process {owner.pid} is running"


def stale_reason(data: bytes, mtime: float, settings: LockSettings, host: Host,
                 now: float | None = None) -> str | None:
    """Why a dotlock with content C{data} is left over and may be broken,
    or C{None} while it holds."""
    state, why = owner_state(parse_owner(data), mtime, host)
    if state is Owner.DEAD:
        return why
    if state is Owner.ALIVE:
        return None
    age = (time.time() if now is None else now) - mtime
    if age > settings.stale_after:
        return f"{why} and is {age:.0f} s old (stale_lock={settings.stale_after:g})"
    return None


def _read_lock(path: str) -> tuple[bytes, os.stat_result] | None:
    """A lock file's first bytes and status; C{None} if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # a symbolic link, unreadable: its owner cannot be told
        try:
            return b"", os.lstat(path)
        except FileNotFoundError:
            return None
    try:
        return os.read(fd, 1024), os.fstat(fd)
    finally:
        os.close(fd)


def _stale_at(path: str, settings: LockSettings, host: Host) -> str | None:
    found = _read_lock(path)
    return None if found is None else stale_reason(found[0], found[1].st_mtime, settings, host)


def _holder(path: str, host: Host) -> str:
    found = _read_lock(path)
    if found is None:
        return "another program"
    owner = parse_owner(found[0])
    if owner.pid is None:
        return "another program (it names no owner)"
    if owner.host == host.name:
        return f"process {owner.pid}"
    return f"process {owner.pid} on host {owner.host or '(not named)'}"


# -- taking and breaking dotlocks


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
        if _stale_at(path, settings, host) is not None:
            try:
                why = _break(path, settings, host)
            except OSError as e:
                raise errors.TemporaryFailure(f"cannot remove the stale dotlock {path}: "
                                              f"{e.strerror}") from e
            if why is not None:
                log.warn("removed the dotlock {path}: {why}", path=path, why=why)
                if time.monotonic() < deadline:
                    continue  # take it at once
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is held by {_holder(path, host)}")
        time.sleep(_POLL)


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


@contextmanager
def _breaking(directory: str) -> Iterator[bool]:
    """
    popgate's breakers of one host take turns: an flock on the spool
    directory, so that a second one, coming after the first broke a lock
    and someone took it anew, looks again and finds it live.  Yields
    whether it is our turn (if the directory cannot be flocked, it is).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            yield True
            return
        yield True
    finally:
        os.close(fd)  # drops the flock


def _break(path: str, settings: LockSettings, host: Host) -> str | None:
    """
    Remove a left-over lock, rename-then-check: move it aside, look again
    at the file moved (no one else can change it under that name), and
    delete it only if it is still left over; a live lock, taken since we
    looked, is linked back (never over a newer one).

    @return: why it was removed, or C{None} if nothing was.
    """
    with _breaking(os.path.dirname(path) or ".") as our_turn:
        if not our_turn or _stale_at(path, settings, host) is None:
            return None
        aside = f"{path}.popgate-stale.{host.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        try:
            why = _stale_at(aside, settings, host)
            if why is None:
                try:
                    os.link(aside, path)
                except FileExistsError:
                    log.warn("the live dotlock {path} was replaced while being checked",
                             path=path)
                except OSError:
                    os.rename(aside, path)
            return why
        finally:
            try:
                os.unlink(aside)
            except FileNotFoundError:
                pass


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


# -- fcntl locks


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
        time.sleep(_POLL)


def unlock_fcntl(fd: int) -> None:
    _set_lock(fd, fcntl.F_UNLCK, wait=False)
