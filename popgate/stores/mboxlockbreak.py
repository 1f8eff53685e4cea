"""
Breaking a left-over mbox dotlock safely against other breakers and new
holders: popgate's breakers of one host take turns, and a lock is moved
aside and checked again before it is deleted.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.logger import Logger

from popgate.stores.mboxlock import LockSettings
from popgate.stores.mboxlockowner import Host, stale_at

log = Logger(namespace="popgate.stores.mboxlock")


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


def break_stale(path: str, settings: LockSettings, host: Host) -> str | None:
    """
    Remove a left-over lock, rename-then-check: move it aside, look again
    at the file moved (no one else can change it under that name), and
    delete it only if it is still left over; a live lock, taken since we
    looked, is linked back (never over a newer one).

    @return: why it was removed, or C{None} if nothing was.
    """
    with _breaking(os.path.dirname(path) or ".") as our_turn:
        if not our_turn or stale_at(path, settings, host) is None:
            return None
        aside = f"{path}.popgate-stale.{host.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        try:
            why = stale_at(aside, settings, host)
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
