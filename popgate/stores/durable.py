"""
The system-call idioms every store needs to make a change durable
before it is acknowledged: write all of a buffer, fsync a directory after
creating, renaming or removing a name in it, and replace a small file
whole.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make the names in directory C{path} (new, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """C{os.write} until all of C{data} is written (it may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(path: str, data: bytes, durable: bool = True, tmp: str | None = None) -> None:
    """
    Write C{data} under a temporary name beside C{path}, then rename it
    over C{path}: a reader sees the old file or the new one, never half of
    one.  If C{durable}, the file is fsynced before the rename and the
    directory after it.  Blocking.

    @param tmp: the temporary name; by default this process's (two
        writers never share one).  A writer that holds a lock may give a
        fixed one, so that one left by a killed process is overwritten.
    """
    tmp = tmp or f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(os.path.dirname(path) or ".")
