"""
The two system-call idioms every store needs to make a change durable
before it is acknowledged: write all of a buffer, and fsync a directory
after creating, renaming or removing a name in it.
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
