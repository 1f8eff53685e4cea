"""
UIDLs for mbox messages, which have no file names to take them from: an
C{X-UIDL:} header when wanted and unique, else a digest of the message,
with identical copies told apart by a small record kept beside the spool.
"""

from __future__ import annotations

import os
from collections import Counter

from twisted.logger import Logger

from popgate.stores.mboxfile import MboxEntry

log = Logger()


class DuplicateIds:
    """
    The UIDLs handed out to identical copies of a message (same From_ line,
    same bytes: the same digest), recorded on first sight in
    C{<spool>.popgate-uidl}, so that deleting one copy never renumbers the
    others and no id is ever reused.  The file exists only for spools that
    ever held such copies, and holds one line per digest:
    C{digest next-number uid uid ...}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids: dict[str, tuple[int, list[bytes]]] = {}
        self.dirty = False
        try:
            with open(path, "rb") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 2 and words[1].isdigit():
                        self.ids[words[0].decode("ascii", "replace")] = (int(words[1]), words[2:])
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("ignoring unreadable {path}: {e}", path=path, e=e)

    def assign(self, digest: str, occurrence: int, used: set[bytes]) -> bytes:
        """The id of the C{occurrence}-th (1-based) copy of C{digest} in
        spool order (called for 1, 2, 3, ... in turn)."""
        base = digest.encode("ascii")
        if digest not in self.ids:
            if occurrence == 1:
                return base  # the common case: a message with no twin, no record
            self.ids[digest] = (2, [base])  # the first copy's id, seen a moment ago
        next_n, uids = self.ids[digest]
        if occurrence <= len(uids):
            return uids[occurrence - 1]
        while True:
            uid = base + b"-%d" % next_n
            next_n += 1
            if uid not in used:
                break
        self.ids[digest] = (next_n, uids + [uid])
        self.dirty = True
        return uid

    def forget(self, digest: str, uid: bytes) -> None:
        """A copy was deleted: its id stays used (next-number is kept)."""
        if digest in self.ids:
            next_n, uids = self.ids[digest]
            self.ids[digest] = (next_n, [u for u in uids if u != uid])
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        lines = [b"%s %d %s\n" % (d.encode("ascii"), n, b" ".join(u))
                 for d, (n, u) in sorted(self.ids.items())]
        tmp = self.path + ".tmp"  # one left by a killed process is overwritten
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with open(fd, "wb") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.warn("cannot record duplicate message ids in {path}: {e}", path=self.path, e=e)
        self.dirty = False


def assign_uids(entries: list[MboxEntry], use_xuidl: bool,
                duplicates: DuplicateIds | None = None) -> list[bytes]:
    """
    One UIDL per message: its X-UIDL if wanted and unique, else the SHA-1
    of its From_ line and bytes; identical copies get C{-2}, C{-3}, ...,
    kept stable by L{DuplicateIds}.
    """
    duplicates = duplicates if duplicates is not None else DuplicateIds(os.devnull)
    uids: list[bytes] = []
    used: set[bytes] = set()
    seen: Counter[str] = Counter()
    for entry in entries:
        uid = entry.xuidl if use_xuidl else None
        if uid is None or uid in used:
            seen[entry.digest] += 1
            uid = duplicates.assign(entry.digest, seen[entry.digest], used)
            if uid in used:  # an X-UIDL took it: never hand out an id twice
                uid = entry.digest.encode("ascii") + b"-x%d" % len(uids)
        used.add(uid)
        uids.append(uid)
    return uids
