"""
The two small files the Maildir and mbox stores keep beside a user's mail
for LOGIN-DELAY and EXPIRE (L{popgate.stores.history} says where).  Every
function blocks: call it in a thread.

  - the last login: one line, the POSIX time of the user's last successful
    login.  Replaced by a rename (written under a temporary name in the
    same directory, then C{os.replace}), so a reader on any process or
    node sees the old time or the new, never half of one.  Not fsynced: a
    crash can lose the last time, which lets one login in early, and a
    login should not wait for a disk flush.
  - the retrievals: one line per message of the maildrop that was
    retrieved, C{KEY TIME} (the Maildir unique name, the part before
    C{:}, or the mbox UIDL; the time of its first RETR).  Written in full,
    fsynced, renamed over the old one and the directory fsynced: after a
    crash it is the old record or the new.  Each write keeps only the
    messages of the session's snapshot, so a message deleted by anyone
    (another client, an IMAP server, C{rm}) loses its line at the next
    write, and the file never outgrows the mailbox.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.logger import Logger

from popgate.stores.durable import fsync_dir, replace_file

__all__ = ["LAST_LOGIN", "RETRIEVED", "read_retrievals", "read_time", "write_retrievals",
           "write_time"]

#: The names in a Maildir (an mbox's are beside the spool: <spool>.NAME).
LAST_LOGIN = "popgate-lastlogin"
RETRIEVED = "popgate-retrieved"
#: A record larger than this is not ours (or broken): ignored.
_MAX_SIZE = 64 * 1024 * 1024

log = Logger()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIZE + 1)
    except FileNotFoundError:
        return None
    if len(data) > _MAX_SIZE:
        log.warn("ignoring {path}: larger than {size} octets", path=path, size=_MAX_SIZE)
        return None
    return data


def read_time(path: str) -> float | None:
    """The time in a last-login file; C{None} if there is none (or it is
    not a number: a broken file lets the user in)."""
    data = _read(path)
    if data is None:
        return None
    try:
        return float(data.strip())
    except ValueError:
        log.warn("ignoring {path}: not a time", path=path)
        return None


def write_time(path: str, when: float) -> None:
    """Replace the last-login file with C{when}.  Nothing is written when
    the directory does not exist (an mbox user with no spool yet)."""
    if not os.path.isdir(os.path.dirname(path) or "."):
        return
    # Written only by the session holding the mailbox's lock: one
    # temporary name serves, and one a killed process left is overwritten.
    replace_file(path, b"%.3f\n" % when, durable=False, tmp=f"{path}.tmp")


def read_retrievals(path: str) -> dict[str, float]:
    """The record: first-retrieval time by key (malformed lines skipped)."""
    data = _read(path)
    found: dict[str, float] = {}
    for line in (data or b"").split(b"\n"):
        key, _, when = line.rpartition(b" ")
        if not key:
            continue
        try:
            found[key.decode("utf-8", "surrogateescape")] = float(when)
        except ValueError:
            continue
    return found


def write_retrievals(path: str, times: Mapping[str, float]) -> None:
    """Replace the record with C{times}, durably; an empty one removes it."""
    if not times:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(path) or ".")
        return
    # A key with a line end would read back as two lines: not kept.
    lines = [b"%s %.3f\n" % (key.encode("utf-8", "surrogateescape"), when)
             for key, when in times.items() if "\n" not in key and "\r" not in key]
    replace_file(path, b"".join(lines), durable=True, tmp=f"{path}.tmp")
