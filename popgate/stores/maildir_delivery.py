"""
Delivering into a Maildir the way Postfix, Exim and Dovecot do: write the
message to C{tmp/}, fsync it, link it into C{new/}, fsync C{new/}.  Only
then is the delivery acknowledged, so a crash never loses acknowledged
mail and never shows a half-written message.

File names follow the Maildir convention, C{time.M<usec>P<pid>Q<n>.host},
with C{,S=} (octets on disk) and C{,W=} (octets on the POP3 wire, CRLF line
ends) appended, so popgate's scanner never has to read the file to size it.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget
from popgate.wire import wire_size
from popgate.stores.maildir import ensure_maildir
from popgate.stores.durable import fsync_dir, write_all

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _host() -> str:
    """The host part of a Maildir name, with C{/} and C{:} escaped as the
    Maildir specification asks."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"


def unique_name(message: bytes, now: float | None = None) -> str:
    """C{time.M<usec>P<pid>Q<n>.host,S=<size>,W=<wire size>}."""
    now = time.time() if now is None else now
    seconds = int(now)
    usec = int((now - seconds) * 1_000_000)
    with _counter_lock:
        n = next(_counter)
    return (f"{seconds}.M{usec}P{os.getpid()}Q{n}.{_host()}"
            f",S={len(message)},W={wire_size(message)}")


def deliver_to_maildir(directory: str, message: bytes) -> str:
    """
    Store C{message} durably in the Maildir at C{directory} (created, mode
    0700, if missing).  Blocking: call it in a thread.

    @return: the new file's name in C{new/}.
    @raise errors.TemporaryFailure: for any I/O error: disk full, quota,
        permissions and I/O errors are all things an admin fixes while the
        MTA keeps the message queued, so none of them bounces mail.
    """
    try:
        ensure_maildir(directory)
        for _ in range(100):
            name = unique_name(message)
            tmp = os.path.join(directory, "tmp", name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            try:
                try:
                    write_all(fd, message)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                new = os.path.join(directory, "new", name)
                try:
                    os.link(tmp, new)
                except FileExistsError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                        raise
                    # No hard links on this file system: rename never
                    # overwrites here, since the name is unique.
                    os.rename(tmp, new)
                fsync_dir(os.path.join(directory, "new"))
                return name
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        raise errors.TemporaryFailure(f"no unique file name in {directory}")
    except errors.TemporaryFailure:
        raise
    except OSError as e:
        raise errors.TemporaryFailure(f"cannot deliver to {directory}: {e}") from e


@implementer(IDeliveryTarget)
class MaildirDeliveryTarget:
    """
    L{IDeliveryTarget} for a L{popgate.stores.maildir.MaildirStore}: the
    user's Maildir comes from the store's template, the writing happens in
    the reactor's thread pool.
    """

    def __init__(self, store: Any, reactor: Any = None) -> None:
        self.store = store
        self._reactor = reactor

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[str]:
        try:
            directory = os.path.abspath(self.store.maildir_for(user))
        except Exception:
            return defer.fail()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), deliver_to_maildir,
                                 directory, message)
