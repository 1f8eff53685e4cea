"""
An adapter from Twisted's C{twisted.mail.pop3.IMailbox} to L{IMaildrop}, so
any mailbox written for Twisted's own POP3 server plugs into popgate.

popgate's semantics are kept whatever the mailbox does:

  - The message list is a snapshot taken once, by L{MailboxMaildrop.load}
    (the realm waits for it), and messages the mailbox lists with size 0
    (Twisted's mark for "deleted") are left out.
  - Sizes are exact: every message is read once and measured as sent (CRLF
    line ends), since Twisted mailboxes report file sizes.  Reading a real
    file happens in a thread; the mailbox's own methods are only ever called
    in the reactor thread, since nothing says they are thread-safe.
  - Messages are bytes, exactly as stored: a text-mode file (Twisted's
    C{MaildirMailbox} opens its files that way) is read through its binary
    C{buffer}, so no decoding error and no newline translation can happen.
  - C{deleteMessage} is called only at QUIT, for messages whose unique id is
    still the one the client saw, followed by C{sync}.
  - Dot-stuffing is done once, by popgate's protocol.

C{listMessages}, C{getMessage}, C{getUidl}, C{deleteMessage} and C{sync} may
return L{Deferred}s.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors, wire
from popgate.interfaces import ILoadingMaildrop, IMessageSource
from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.plural import plural

# Hand the reactor back after this many in-memory messages while loading.
_YIELD_EVERY = 64

log = Logger()


def uid_bytes(value: object) -> bytes:
    """A C{getUidl} result as bytes (Twisted's own mailboxes return str)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogateescape")


@implementer(IMessageSource)
class BinaryReader:
    """
    The bytes of whatever C{getMessage} returned: a binary file, a
    text-mode file (read through its C{buffer}: the stored bytes, not
    decoded, newlines not translated), or any other stream of str, encoded
    as UTF-8 with C{surrogateescape} (so text made with
    C{data.decode("utf-8", "surrogateescape")} gives back exactly C{data}).
    """

    def __init__(self, source: Any) -> None:
        self._source = source
        self._read = source.read
        if isinstance(source, io.TextIOBase):
            raw = getattr(source, "buffer", None)
            if raw is not None:
                self._read = raw.read
        self.blocking = self._has_descriptor()

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        if isinstance(data, str):
            return data.encode("utf-8", "surrogateescape")
        return bytes(data)

    def _has_descriptor(self) -> bool:
        """True when reading may wait for a disk (a real file descriptor)."""
        try:
            self._source.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BinaryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(reader: BinaryReader) -> int:
    """Octets of the message as sent (L{popgate.wire}), then close it."""
    with reader:
        return wire.measure(reader.read)


def _unique(uid: bytes, seen: set[bytes]) -> bytes:
    """
    A valid POP3 unique id for C{uid}, distinct from those in C{seen}:
    invalid ids (spaces, too long) become a SHA-1, and a repeated one (a
    content hash of two equal messages) gets a digest of its repetition
    count, which is stable as long as the mailbox order is.
    """
    candidate = uid if is_valid_uid(uid) else hashlib.sha1(uid).hexdigest().encode("ascii")
    n = 1
    while candidate in seen:
        n += 1
        candidate = hashlib.sha1(b"%s#%d" % (uid, n)).hexdigest().encode("ascii")
    seen.add(candidate)
    return candidate


@implementer(ILoadingMaildrop)
class MailboxMaildrop:
    """
    Wraps one Twisted C{IMailbox}: the adapter from C{IMailbox} to
    L{IMaildrop} (L{popgate.stores.adapters.as_maildrop}); the realm calls
    L{load} before the session sees it.

    @param reactor: its thread pool measures real files, its clock paces
        the load of a big mailbox.
    """

    def __init__(self, mailbox: Any, reactor: Any) -> None:
        self.mailbox = mailbox
        self._reactor = reactor
        self._indexes: list[int] = []
        self._raw_uids: list[bytes] = []
        self._infos: list[MessageInfo] = []
        self._loaded = False
        self._closed = False

    # -- ILoadingMaildrop

    def load(self) -> defer.Deferred[None]:
        if self._loaded:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self._load())

    async def _load(self) -> None:
        mailbox = self.mailbox
        sizes = list(await defer.maybeDeferred(mailbox.listMessages))
        seen: set[bytes] = set()
        for i, listed in enumerate(sizes):
            if not listed:
                continue  # Twisted lists deleted messages with size 0
            raw = uid_bytes(await defer.maybeDeferred(mailbox.getUidl, i))
            message = await defer.maybeDeferred(mailbox.getMessage, i)
            size = await self._measure(BinaryReader(message))
            self._indexes.append(i)
            self._raw_uids.append(raw)
            self._infos.append(MessageInfo(_unique(raw, seen), size))
            if len(self._indexes) % _YIELD_EVERY == 0:
                await deferLater(self._reactor, 0, lambda: None)
        self._loaded = True

    def _measure(self, reader: BinaryReader) -> defer.Deferred[int]:
        if not reader.blocking:
            return defer.maybeDeferred(measure, reader)
        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), measure, reader)

    # -- IMaildrop

    def list_messages(self) -> list[MessageInfo]:
        if not self._loaded:
            raise RuntimeError("MailboxMaildrop.load() has not finished")
        return self._infos

    def open_message(self, index: int) -> defer.Deferred[BinaryReader]:
        d = defer.maybeDeferred(self.mailbox.getMessage, self._indexes[index])
        return d.addCallback(BinaryReader)

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        if self._closed:
            return defer.fail(errors.PermanentFailure("maildrop already closed"))
        self._closed = True
        return defer.Deferred.fromCoroutine(self._commit(list(deleted)))

    async def _commit(self, deleted: list[int]) -> None:
        mailbox = self.mailbox
        failed = 0
        for index in deleted:
            i = self._indexes[index]
            try:
                current = uid_bytes(await defer.maybeDeferred(mailbox.getUidl, i))
                if current != self._raw_uids[index]:
                    # The mailbox renumbered under us: deleting message i
                    # now would delete a message the client never saw.
                    log.warn("message {n} changed during the session; not deleted", n=index + 1)
                    failed += 1
                    continue
                await defer.maybeDeferred(mailbox.deleteMessage, i)
            except Exception:
                log.failure("deleting message {n}", n=index + 1)
                failed += 1
        await defer.maybeDeferred(mailbox.sync)
        if failed:
            raise errors.TemporaryFailure(
                f"{failed} of {plural(len(deleted), 'message')} "
                f"{'was' if failed == 1 else 'were'} not deleted")

    def close(self) -> None:
        # Nothing to undo: the mailbox only hears of deletions at QUIT.
        self._closed = True
