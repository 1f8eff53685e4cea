"""
The last snapshot of each Maildir, kept in memory and reused while its
directories are unchanged, so a client polling a big Maildir costs two
stat() calls instead of a scan (L{popgate.stores.maildir_scan.scan}).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

from popgate.stores import nowait
from popgate.stores.imported_uidls import MAILDIR_FILE
from popgate.stores.maildir_scan import Entry, scan

# A snapshot is reused only if the directories have not changed since, and
# had not changed for this long before it was taken (file system time stamps
# are coarse: a delivery in the same tick must not go unseen).
_SNAPSHOT_SETTLE_NS = 2_000_000_000
# Snapshots kept per process, counted in messages.
_SNAPSHOT_BUDGET = 1_000_000


Stamp = tuple[int, int, int]


def _imported_stamp(st: os.stat_result | None) -> int:
    return 0 if st is None else st.st_mtime_ns ^ st.st_ino


def _stamp(directory: str) -> Stamp | None:
    """The change times of C{cur/} and C{new/} (C{None} if one is missing)
    and of the imported UIDLs (L{popgate.stores.imported_uidls})."""
    try:
        cur = os.stat(os.path.join(directory, "cur")).st_mtime_ns
        new = os.stat(os.path.join(directory, "new")).st_mtime_ns
    except FileNotFoundError:
        return None
    try:
        imported: os.stat_result | None = os.stat(os.path.join(directory, MAILDIR_FILE))
    except FileNotFoundError:
        imported = None
    return (cur, new, _imported_stamp(imported))


def _cached_stamp(directory: str) -> Stamp | None:
    """L{_stamp} from the kernel's caches only: C{None} if it would wait
    for the disk (or a directory is missing)."""
    try:
        cur = nowait.stat_cached(os.path.join(directory, "cur"))
        new = nowait.stat_cached(os.path.join(directory, "new"))
    except OSError:
        return None
    if cur is None or new is None:
        return None
    try:
        imported = nowait.stat_cached(os.path.join(directory, MAILDIR_FILE))
        if imported is None:
            return None  # it would wait for the disk
    except FileNotFoundError:
        imported = None
    except OSError:
        return None
    return (cur.st_mtime_ns, new.st_mtime_ns, _imported_stamp(imported))


class SnapshotCache:
    """
    The last snapshot of each Maildir, reused while C{cur/} and C{new/} are
    unchanged: a client polling a 100,000-message Maildir costs two stat()
    calls instead of a directory scan.  Bounded by a total message count.
    """

    def __init__(self, budget: int = _SNAPSHOT_BUDGET) -> None:
        self._budget = budget
        self._held = 0
        self._snapshots: OrderedDict[str, tuple[Stamp, list[Entry]]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, directory: str) -> bool:
        """Whether a snapshot of C{directory} is kept (perhaps stale)."""
        return directory in self._snapshots

    def kept(self, directory: str) -> list[Entry] | None:
        """
        The kept snapshot of C{directory} if it is still valid, checked
        without waiting for the disk (for the reactor thread): C{None} if
        there is none, it is stale, or checking would mean a disk read.
        """
        stamp = _cached_stamp(directory)
        with self._lock:
            kept = self._snapshots.get(directory)
            if kept is not None and stamp is not None and kept[0] == stamp:
                self._snapshots.move_to_end(directory)
                return kept[1]
        return None

    def get(self, directory: str) -> list[Entry]:
        """A snapshot of C{directory}: the kept one if still valid, else a
        new scan.  Blocking."""
        stamp = _stamp(directory)
        with self._lock:
            kept = self._snapshots.get(directory)
            if kept is not None and stamp is not None and kept[0] == stamp:
                self._snapshots.move_to_end(directory)
                return kept[1]
        started = time.time_ns()
        entries = scan(directory)
        if stamp is not None and _stamp(directory) == stamp \
                and started - max(stamp[:2]) > _SNAPSHOT_SETTLE_NS:
            self._keep(directory, stamp, entries)
        else:
            self.forget(directory)
        return entries

    def _keep(self, directory: str, stamp: Stamp, entries: list[Entry]) -> None:
        with self._lock:
            old = self._snapshots.pop(directory, None)
            if old is not None:
                self._held -= len(old[1])
            if len(entries) > self._budget:
                return
            self._snapshots[directory] = (stamp, entries)
            self._held += len(entries)
            while self._held > self._budget:
                _, (_, dropped) = self._snapshots.popitem(last=False)
                self._held -= len(dropped)

    def forget(self, directory: str) -> None:
        with self._lock:
            old = self._snapshots.pop(directory, None)
            if old is not None:
                self._held -= len(old[1])
