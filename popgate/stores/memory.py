"""
An in-memory mail store: for demos, tests, and as the smallest example of a
store.  Contents are lost when the process ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from twisted.internet import defer
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore
from popgate.maildrop import MessageInfo
from popgate.stores.base import SessionLocks
from popgate.stores.sources import BytesSource
from popgate.wire import wire_size


class _StoredMessage:
    __slots__ = ("uid", "data")

    def __init__(self, uid: bytes, data: bytes) -> None:
        self.uid = uid
        self.data = data


@implementer(IMailStore, IDeliveryTarget)
class MemoryStore:
    """Mailboxes kept in a dict: user name -> list of messages."""

    def __init__(self) -> None:
        self._boxes: dict[str, list[_StoredMessage]] = {}
        self._locks = SessionLocks()
        self._serial = 0

    def add_message(self, user: str, data: bytes) -> bytes:
        """Append C{data} to C{user}'s mailbox; return its unique id."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a message is bytes, not {type(data).__name__}")
        data = bytes(data)
        self._serial += 1
        digest = hashlib.sha1(data).hexdigest()[:16]
        uid = b"%d.%s" % (self._serial, digest.encode("ascii"))
        self._boxes.setdefault(user, []).append(_StoredMessage(uid, data))
        return uid

    def messages(self, user: str) -> list[bytes]:
        """The messages of C{user}, oldest first."""
        return [m.data for m in self._boxes.get(user, [])]

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[None]:
        self.add_message(user, message)
        return defer.succeed(None)

    def open_maildrop(self, avatar_id: str) -> MemoryMaildrop:
        self._locks.acquire(avatar_id)
        return MemoryMaildrop(self, avatar_id, list(self._boxes.get(avatar_id, [])))

    def _commit(self, user: str, gone: Iterable[_StoredMessage]) -> None:
        gone_ids = {id(m) for m in gone}
        box = self._boxes.get(user, [])
        self._boxes[user] = [m for m in box if id(m) not in gone_ids]

    def _release(self, user: str) -> None:
        self._locks.release(user)


@implementer(IMaildrop)
class MemoryMaildrop:
    """A snapshot of one L{MemoryStore} mailbox."""

    def __init__(self, store: MemoryStore, user: str, snapshot: list[_StoredMessage]) -> None:
        self._store = store
        self._user = user
        self._snapshot = snapshot
        self._open = True
        self._infos = [MessageInfo(m.uid, wire_size(m.data)) for m in snapshot]

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> BytesSource:
        return BytesSource(self._snapshot[index].data)

    def commit(self, deleted: Iterable[int]) -> None:
        if not self._open:
            raise errors.PermanentFailure("maildrop already closed")
        self._store._commit(self._user, [self._snapshot[i] for i in deleted])
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._store._release(self._user)


def make_store(argstring: str) -> MemoryStore:
    """The C{memory:} store plugin: an empty in-memory store.  It needs
    no reactor (no threads, no timers), so it takes none: the registry
    calls a maker with the argument string alone when that is all it
    takes."""
    if argstring:
        raise ValueError("memory: takes no arguments")
    return MemoryStore()
