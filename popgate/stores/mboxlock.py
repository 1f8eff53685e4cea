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
its owner (see L{popgate.stores.mboxlockowner.lock_content}) and one
whose owner is a dead process of this host is broken at once (see
L{popgate.stores.mboxlockowner.stale_reason}); one from another host, or
one naming no owner (Postfix writes an empty file), only once it is older
than C{stale_lock}.

This module has what they share (the settings, the timeout); the locks
are L{popgate.stores.mboxdotlock} (with L{popgate.stores.mboxlockowner},
who holds one, and L{popgate.stores.mboxlockbreak}, breaking a left-over
one) and L{popgate.stores.mboxfcntl}.  All their functions block (they
poll while a lock is held elsewhere): call them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from popgate import errors

POLL = 0.05  # seconds between two tries at a lock held elsewhere


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
