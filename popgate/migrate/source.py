"""
The old store, as C{popgate migrate} reads it: built from the same
C{TYPE:ARGS} string C{--store} takes (so a Maildir's UIDLs come from its
file names and an mbox's from its X-UIDL headers or digests, exactly as
POP3 clients saw them), a user's maildrop opened and locked as a POP3
login opens it, each message read as RETR reads it, and the maildrop
closed without a commit, so nothing is ever deleted.

A maildrop stays open, and so locked, while its user is copied: a POP3
session on the old server cannot delete a message half-way through (it
gets C{[IN-USE]}), and a session that is open already makes the copy of
that user wait for the next run.  Opening creates what a POP3 login would
(popgate's lock file and size cache in a Maildir, the session lock and
UIDL record beside an mbox spool); the messages are not touched.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from popgate.realm import ready_maildrop
from popgate.stores import registry
from popgate.stores.maildir import MaildirStore
from popgate.stores.mbox import MboxStore

__all__ = ["READ_SIZE", "build_store", "mailbox_path", "open_maildrop", "read_message",
           "template_of"]

#: Octets asked of a message source per read.
READ_SIZE = 1 << 20


def build_store(description: str, reactor: Any) -> Any:
    """
    The store C{description} names, on C{reactor}.  A Maildir store is
    told never to create a Maildir: a migration that finds none copies
    nothing and makes nothing.

    @raise ValueError: with a one-line reason.
    """
    store = registry.make_store(description, reactor)
    if isinstance(store, MaildirStore):
        store.create = False
    return store


def template_of(store: Any) -> tuple[str, str] | None:
    """The store's kind (C{maildir}, C{mbox}) and location template, or
    C{None} for a store whose mailboxes cannot be listed from a path."""
    if isinstance(store, MaildirStore):
        return "maildir", store.template
    if isinstance(store, MboxStore):
        return "mbox", store.settings.template
    return None


def mailbox_path(store: Any, user: str) -> str | None:
    """
    Where the store keeps C{user}'s mail, or C{None} when it does not say
    (a third-party store).

    @raise popgate.errors.InvalidUserName: the name cannot name a mailbox.
    """
    if isinstance(store, MaildirStore):
        return os.path.abspath(store.maildir_for(user))
    if isinstance(store, MboxStore):
        return store.spool_for(user)
    return None


async def open_maildrop(store: Any, user: str, reactor: Any) -> Any:
    """
    C{user}'s maildrop, opened and locked as a login opens it (adapted to
    L{popgate.interfaces.IMaildrop} and loaded, as the realm does).

    @raise popgate.errors.MaildropInUse: a POP3 session holds it.
    """
    opened = await defer.maybeDeferred(store.open_maildrop, user)
    return await ready_maildrop(opened, reactor)


def read_all(source: Any) -> bytearray:
    """
    The rest of C{source}, read L{READ_SIZE} octets at a time into one
    buffer: the message is held once, never as pieces and a joined copy.
    Blocking if the source is.
    """
    data = bytearray()
    while chunk := source.read(READ_SIZE):
        data += chunk
    return data


async def read_message(maildrop: Any, index: int, reactor: Any) -> bytearray:
    """
    Message C{index} as the store serves it to RETR (before line-end
    conversion and dot-stuffing), read in C{reactor}'s thread pool when
    the source blocks (a file), in the reactor thread when it does not
    (a message in memory).  The source is closed, in the reactor thread.
    """
    source = await defer.maybeDeferred(maildrop.open_message, index)
    try:
        if getattr(source, "blocking", True):  # a plain file object blocks
            return await deferToThreadPool(reactor, reactor.getThreadPool(), read_all, source)
        return read_all(source)
    finally:
        source.close()
