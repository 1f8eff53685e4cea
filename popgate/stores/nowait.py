"""
File access that never waits for the disk, for the reactor thread.

A trip to a pool thread and back costs about 50 microseconds of CPU; a
256 KiB read from the page cache costs 10.  So a read or an open whose data
the kernel already holds is done inline, and only one that would wait for
the disk goes to a thread.  Linux can promise that up front:

  - C{preadv2(..., RWF_NOWAIT)} reads only what is in the page cache and
    fails with C{EAGAIN} instead of waiting (Linux 4.14);
  - C{openat2(..., RESOLVE_CACHED)} opens a path only if every component is
    in the dentry cache and fails with C{EAGAIN} otherwise (Linux 5.12).

Each function here returns C{None} where it would have had to wait, or
where the kernel (or the platform) cannot make the promise: the caller
then does the blocking call in a thread.  Nothing here is worth a thread
of its own: each call returns at once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100
# openat2 has the same number wherever Linux uses the common syscall table.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437, "i686": 437, "armv7l": 437,
                "riscv64": 437, "ppc64le": 437, "s390x": 437}.get(platform.machine())
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM, errno.EOPNOTSUPP)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _load_syscall() -> ctypes._NamedFuncPointer | None:
    if sys.platform != "linux" or _SYS_OPENAT2 is None:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    return call


_syscall = _load_syscall()
_hows: dict[int, _OpenHow] = {}
_scratch = threading.local()


def open_cached(path: str, flags: int) -> int | None:
    """
    C{os.open(path, flags)} if the path is in the dentry cache, else
    C{None}.  C{flags} may not create or truncate.

    @raise OSError: as C{os.open} would (C{FileNotFoundError}...).
    """
    global _syscall
    if _syscall is None or _SYS_OPENAT2 is None:  # (the first implies the second)
        return None
    how = _hows.get(flags)
    if how is None:
        how = _hows[flags] = _OpenHow(flags, 0, _RESOLVE_CACHED)
    fd: int = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(_AT_FDCWD), os.fsencode(path),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code == errno.EAGAIN:
        return None
    if code in _UNSUPPORTED:
        _syscall = None  # an old kernel or a seccomp filter: threads from now on
        return None
    raise OSError(code, os.strerror(code), path)


def stat_cached(path: str) -> os.stat_result | None:
    """C{os.stat(path)} if the path is in the dentry cache, else C{None}."""
    fd = open_cached(path, os.O_PATH | os.O_CLOEXEC)
    if fd is None:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def pread_cached(fd: int, size: int, offset: int) -> bytes | None:
    """
    Up to C{size} octets of C{fd} at C{offset} that are in the page cache
    (C{b""} at the end of the file), or C{None} if the first of them are
    not.  Fewer than C{size} come back when only part of the range is
    cached.
    """
    if _RWF_NOWAIT is None:
        return None
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        # One buffer per thread, reused: a fresh 256 KiB allocation is
        # fresh pages for the kernel to fault in, which costs more than
        # the read.
        buf = _scratch.buf = bytearray(size)
    view = memoryview(buf)[:size]
    try:
        n = os.preadv(fd, [view], offset, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None  # a file system without RWF_NOWAIT
        raise
    return bytes(view[:n])
