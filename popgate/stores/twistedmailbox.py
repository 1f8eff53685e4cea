"""
An adapter from Twisted's C{twisted.mail.pop3.IMailbox} to L{IMaildrop}, so
any mailbox written for Twisted's own POP3 server plugs into popgate.

popgate's semantics are kept whatever the mailbox does: the message list is
a snapshot taken once, sizes are measured on the message bytes (CRLF line
ends), deletions reach the mailbox only at QUIT, and dot-stuffing is done
once, by popgate.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, BinaryIO, Iterable

from twisted.internet import defer
from zope.interface import implementer

from popgate.interfaces import IMaildrop
from popgate.maildrop import MessageInfo, is_valid_uid, wire_size


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return bytes(data)


def _read_all(source: Any) -> bytes:
    try:
        return _as_bytes(source.read())
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


@implementer(IMaildrop)
class MailboxMaildrop:
    """Wraps one Twisted C{IMailbox}."""

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox
        self._indexes: list[int] = []
        self._infos: list[MessageInfo] = []
        sizes = mailbox.listMessages()
        for i, listed in enumerate(sizes):
            if not listed:
                continue  # Twisted lists deleted messages with size 0
            data = _read_all(mailbox.getMessage(i))
            uid = _as_bytes(mailbox.getUidl(i))
            if not is_valid_uid(uid):
                uid = hashlib.sha1(uid).hexdigest().encode("ascii")
            self._indexes.append(i)
            self._infos.append(MessageInfo(uid, wire_size(data)))
        self._closed = False

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> BinaryIO:
        return io.BytesIO(_read_all(self.mailbox.getMessage(self._indexes[index])))

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[Any]:
        for index in deleted:
            self.mailbox.deleteMessage(self._indexes[index])
        d = defer.maybeDeferred(self.mailbox.sync)
        d.addBoth(self._closing)
        return d

    def _closing(self, result: object) -> object:
        self._closed = True
        return result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            undelete = getattr(self.mailbox, "undeleteMessages", None)
            if undelete is not None:
                undelete()
