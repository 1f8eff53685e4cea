"""
Where the Maildir and mbox stores keep LOGIN-DELAY's last logins and
EXPIRE's retrievals (L{popgate.interfaces.ILoginHistory},
L{popgate.interfaces.IRetrievalRecord}): adapters, registered here with
Twisted's registry, over the files of L{popgate.stores.history_files}.

  - Maildir: C{popgate-lastlogin} and C{popgate-retrieved} in the user's
    Maildir (beside C{cur/}, C{new/} and popgate's lock), the retrievals
    keyed by each message's unique name, the part of its file name before
    C{:}, so flag changes and the move from C{new/} to C{cur/} (popgate's
    or another program's) keep its line;
  - mbox: C{<spool>.popgate-lastlogin} and C{<spool>.popgate-retrieved}
    beside the session lock (in C{lockdir=} when given), keyed by UIDL.

Being in the mail store, they are shared by every C{--workers} process
and every node using the same mail, and survive restarts.  A third-party
store provides the interfaces itself, or registers its own adapters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python.components import registerAdapter
from zope.interface import implementer

from popgate.interfaces import ILoginHistory, IRetrievalRecord
from popgate.stores.history_files import (
    LAST_LOGIN,
    RETRIEVED,
    read_retrievals,
    read_time,
    write_retrievals,
    write_time,
)
from popgate.stores.maildir import MaildirMaildrop, MaildirStore
from popgate.stores.mbox import SESSION_LOCK_SUFFIX, MboxMaildrop, MboxStore, session_lock_path

__all__ = ["login_history", "mbox_file", "retrieval_record"]

InThread = Callable[..., "defer.Deferred[Any]"]


def login_history(store: object) -> ILoginHistory | None:
    """C{store}'s login history, if it keeps one."""
    return ILoginHistory(store, None)


def retrieval_record(maildrop: object) -> IRetrievalRecord | None:
    """An open maildrop's retrieval record, if its store keeps one."""
    return IRetrievalRecord(maildrop, None)


def mbox_file(spool: str, lockdir: str | None, name: str) -> str:
    """Where an mbox's C{name} file goes: beside its session lock."""
    return session_lock_path(spool, lockdir)[:-len(SESSION_LOCK_SUFFIX)] + "." + name


class _FileLoginHistory:
    """A last-login file per user, found by C{path(user)}."""

    def __init__(self, path: Callable[[str], str], in_thread: InThread) -> None:
        self._path = path
        self._in_thread = in_thread

    def last_login(self, user: str) -> defer.Deferred[float | None]:
        try:
            path = self._path(user)
        except Exception:
            return defer.fail()
        return self._in_thread(read_time, path)

    def record_login(self, user: str, when: float) -> defer.Deferred[None]:
        try:
            path = self._path(user)
        except Exception:
            return defer.fail()
        return self._in_thread(write_time, path, when)


@implementer(ILoginHistory)
class MaildirLoginHistory(_FileLoginHistory):
    """C{popgate-lastlogin} in the user's Maildir."""

    def __init__(self, store: MaildirStore) -> None:
        super().__init__(
            lambda user: os.path.join(os.path.abspath(store.maildir_for(user)), LAST_LOGIN),
            store.in_thread)


@implementer(ILoginHistory)
class MboxLoginHistory(_FileLoginHistory):
    """C{<spool>.popgate-lastlogin}, beside the session lock."""

    def __init__(self, store: MboxStore) -> None:
        super().__init__(
            lambda user: mbox_file(store.spool_for(user), store.settings.lockdir, LAST_LOGIN),
            store.in_thread)


@implementer(IRetrievalRecord)
class FileRetrievalRecord:
    """
    The retrievals file of one open maildrop.

    @param keys: each message's key, in snapshot order.
    """

    def __init__(self, path: str, keys: Sequence[str], in_thread: InThread) -> None:
        self.path = path
        self.keys = list(keys)
        self._in_thread = in_thread

    def load(self) -> defer.Deferred[list[float | None]]:
        return self._in_thread(self._load)

    def _load(self) -> list[float | None]:
        recorded = read_retrievals(self.path) if self.keys else {}
        return [recorded.get(key) for key in self.keys]

    def save(self, times: Sequence[float | None]) -> defer.Deferred[None]:
        kept = {key: when for key, when in zip(self.keys, times, strict=True) if when is not None}
        return self._in_thread(write_retrievals, self.path, kept)


def maildir_record(maildrop: MaildirMaildrop) -> FileRetrievalRecord:
    """C{popgate-retrieved} in the Maildir, keyed by unique name."""
    return FileRetrievalRecord(os.path.join(maildrop.directory, RETRIEVED),
                               [entry.base for entry in maildrop._entries],
                               maildrop._store.in_thread)


def mbox_record(maildrop: MboxMaildrop) -> FileRetrievalRecord:
    """C{<spool>.popgate-retrieved}, keyed by UIDL."""
    store = maildrop._store
    return FileRetrievalRecord(mbox_file(maildrop.spool, store.settings.lockdir, RETRIEVED),
                               [m.uid.decode("ascii") for m in maildrop.list_messages()],
                               store.in_thread)


registerAdapter(MaildirLoginHistory, MaildirStore, ILoginHistory)
registerAdapter(MboxLoginHistory, MboxStore, ILoginHistory)
registerAdapter(maildir_record, MaildirMaildrop, IRetrievalRecord)
registerAdapter(mbox_record, MboxMaildrop, IRetrievalRecord)
