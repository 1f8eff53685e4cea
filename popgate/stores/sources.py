"""
The two L{IMessageSource}s most stores need: a message in memory, and a
message in a file of its own (Maildir, and any store that keeps one file
per message).
"""

from __future__ import annotations

import os

from zope.interface import implementer

from popgate.interfaces import ICachedMessageSource, IMessageSource
from popgate.stores import nowait


@implementer(IMessageSource)
class BytesSource:
    """A message held in memory: reading never blocks."""

    blocking = False

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        start = self._pos
        end = len(self._data) if size < 0 else min(len(self._data), start + size)
        self._pos = end
        return self._data[start:end]

    def close(self) -> None:
        self._data = b""
        self._pos = 0


@implementer(ICachedMessageSource)
class FileSource:
    """
    A message that is a whole file, read by offset from a descriptor the
    source owns: C{read} in a pool thread, L{read_cached} in the reactor
    thread for what the page cache holds.
    """

    blocking = True

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def read_cached(self, size: int) -> bytes | None:
        data = nowait.pread_cached(self._fd, size, self._pos)
        if data is not None:
            self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
