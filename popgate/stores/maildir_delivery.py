"""
Delivering into a Maildir the way Postfix, Exim and Dovecot do: write the
message to C{tmp/}, fsync it, link it into C{new/}, fsync C{new/}.  Only
then is the delivery acknowledged, so a crash never loses acknowledged
mail and never shows a half-written message.

File names follow the Maildir convention, C{time.M<usec>P<pid>Q<n>.host},
with C{,S=} (octets on disk) and C{,W=} (octets on the POP3 wire, CRLF line
ends) appended, so popgate's scanner never has to read the file to size it.

Blocking functions only: L{popgate.stores.maildir.MaildirStore.deliver}
runs them in the server's thread pool.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time

from popgate import errors
from popgate.stores.durable import fsync_dir, write_all
from popgate.wire import wire_size

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def ensure_maildir(directory: str) -> None:
    """Create an empty Maildir (mode 0700) where none exists yet."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)


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
