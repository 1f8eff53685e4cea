"""
Who holds an mbox dotlock: what popgate writes into its own (L{lock_content}),
what it reads from any (L{parse_owner}), and whether that owner is still
running (L{owner_state}), so a lock left by a dead process of this host is
broken at once and any other only once it is stale (L{stale_reason}).
"""

from __future__ import annotations

import enum
import os
import re
import socket
import time
from dataclasses import dataclass

from popgate.stores.mboxlock import LockSettings

# How much later than a lock's mtime a process may have started and still
# be the one that wrote it: /proc/stat's boot time is whole seconds.
_REUSE_SLACK = 2.0


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


def read_lock(path: str) -> tuple[bytes, os.stat_result] | None:
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


def stale_at(path: str, settings: LockSettings, host: Host) -> str | None:
    """Why the lock at C{path} is left over, or C{None} (held, or gone)."""
    found = read_lock(path)
    return None if found is None else stale_reason(found[0], found[1].st_mtime, settings, host)
