"""
popgate's side of a UIDL import: one user's mailbox in the store popgate
serves, opened under the lock a POP3 session takes (so no session runs
while its UIDLs change: a busy mailbox is reported and can be imported
again later), read as L{popgate.uidl.message.Message}s with the UIDLs
popgate serves now, and given the imported UIDLs:

  - Maildir: C{popgate-uidls} in the Maildir (base name -> UIDL), read by
    the store's scan (L{popgate.stores.imported_uidls});
  - mbox: C{<spool>.popgate-imported-uidls} beside the session lock
    (popgate's own UIDL -> imported UIDL).  Not an C{X-UIDL:} header: that
    would mean rewriting the spool the MTA appends to and other programs
    read, and the header would change the very digest the message's own
    UIDL is made of; a side file leaves every message as it is;
  - PostgreSQL: C{popgate_messages.uidl} updated in one transaction, under
    the mailbox's advisory lock.

Blocking: the command calls these without a reactor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from popgate import errors
from popgate.migrate.target import TargetError as DatabaseError
from popgate.migrate.target import open_target as open_database
from popgate.stores import imported_uidls
from popgate.stores.maildir import MaildirStore
from popgate.stores.maildir_options import parse_argstring as parse_maildir
from popgate.stores.mbox import MboxStore, imported_uidls_path
from popgate.stores.mbox import parse_argstring as parse_mbox
from popgate.stores.mboxfile import MessageReader
from popgate.stores.pg_schema import new_uidl
from popgate.stores.pg_settings import parse_args as parse_postgresql
from popgate.uidl.message import Message, describe, describe_stream


class TargetError(Exception):
    """One user's mailbox cannot be opened or written; the message says why."""


class Mailbox(Protocol):
    messages: list[Message]

    def write(self, pairs: Mapping[str, bytes]) -> int:
        """Serve C{pairs} (key -> imported UIDL) from now on; the number of
        messages whose UIDL changed."""


def merge(current: Mapping[str, bytes], pairs: Mapping[str, bytes],
          present: set[str]) -> dict[str, bytes]:
    """
    What to keep: an earlier import's entries for messages still there,
    unless this import maps the message or gives its UIDL to another one,
    and this import's pairs (so a second run changes nothing).
    """
    taken = set(pairs.values())
    merged = {k: v for k, v in current.items()
              if k in present and k not in pairs and v not in taken}
    merged.update(pairs)
    return merged


class _FileMailbox:
    """A Maildir's or a spool's messages, with the side file for imports."""

    def __init__(self, messages: list[Message], path: str) -> None:
        self.messages = messages
        self.path = path

    def write(self, pairs: Mapping[str, bytes]) -> int:
        current = imported_uidls.read(self.path)
        merged = merge(current, pairs, {m.key for m in self.messages})
        if merged != current:
            imported_uidls.write(self.path, merged)
        return sum(1 for m in self.messages if m.key in pairs and pairs[m.key] != m.uidl)


def _locked(open_: Any) -> Any:
    """C{open_()}, its failures as L{TargetError}s."""
    try:
        return open_()
    except errors.MaildropInUse:
        raise TargetError("in use by a POP3 session; run again later") from None
    except (errors.PermanentFailure, errors.TemporaryFailure, ValueError) as e:
        raise TargetError(str(e)) from None


class MaildirTarget:
    def __init__(self, argstring: str) -> None:
        template, options = parse_maildir(argstring)
        self.store = MaildirStore(template, None, create=False, options=options)

    @contextmanager
    def open(self, user: str) -> Iterator[Mailbox]:
        directory = _locked(lambda: os.path.abspath(self.store.maildir_for(user)))
        fd, view = _locked(lambda: self.store._open(directory))
        try:
            messages = []
            for entry in view.entries:
                try:
                    with open(os.path.join(directory, entry.subdir, entry.name), "rb") as f:
                        messages.append(describe_stream(entry.base, entry.info.uid, f.read))
                except FileNotFoundError:
                    continue  # an IMAP server moved or expunged it
            yield _FileMailbox(messages, os.path.join(directory, imported_uidls.MAILDIR_FILE))
        finally:
            os.close(fd)
            self.store.forget(directory)


class MboxTarget:
    def __init__(self, argstring: str) -> None:
        self.store = MboxStore(parse_mbox(argstring), None)

    @contextmanager
    def open(self, user: str) -> Iterator[Mailbox]:
        spool = _locked(lambda: self.store.spool_for(user))
        opened = _locked(lambda: self.store._open(spool))
        try:
            served = opened.served if opened.served is not None else opened.uids
            messages = []
            for own, uid, entry in zip(opened.uids, served, opened.snapshot.entries,
                                       strict=True):
                with MessageReader(opened.snapshot.fd, entry) as reader:
                    messages.append(describe_stream(own.decode("ascii", "surrogateescape"),
                                                    uid, reader.read))
            yield _FileMailbox(messages,
                               imported_uidls_path(spool, self.store.settings.lockdir))
        finally:
            for fd in (opened.snapshot.fd, opened.lock_fd):
                if fd is not None:
                    os.close(fd)


class PostgresTarget:
    def __init__(self, argstring: str) -> None:
        try:
            self.target = open_database(parse_postgresql(argstring))
        except (DatabaseError, ValueError) as e:
            raise TargetError(str(e)) from None

    @contextmanager
    def open(self, user: str) -> Iterator[Mailbox]:
        target = self.target
        mailbox = target.mailbox(user, create=False)
        if mailbox is None:
            yield _PGMailbox(target, None, [])
            return
        if not target.lock(mailbox):
            raise TargetError("in use by a POP3 session; run again later")
        try:
            yield _PGMailbox(target, mailbox, _pg_messages(target._connection, mailbox))
        finally:
            target._connection.rollback()
            target.unlock(mailbox)

    def close(self) -> None:
        self.target.close()


def _pg_messages(connection: Any, mailbox: int) -> list[Message]:
    messages = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, uidl FROM popgate_messages WHERE mailbox_id = %s "
                       "ORDER BY id", (mailbox,))
        rows = cursor.fetchall()
        for row_id, uidl in rows:
            cursor.execute("SELECT data FROM popgate_chunks WHERE message_id = %s "
                           "ORDER BY seq", (row_id,))
            data = b"".join(bytes(chunk) for (chunk,) in cursor)
            messages.append(describe(str(row_id), uidl.encode("ascii"), data))
    connection.commit()
    return messages


class _PGMailbox:
    def __init__(self, target: Any, mailbox: int | None, messages: list[Message]) -> None:
        self.target = target
        self.mailbox = mailbox
        self.messages = messages

    def write(self, pairs: Mapping[str, bytes]) -> int:
        """One transaction: the imported UIDLs, and a new own UIDL for an
        unmatched message that held one of them (UNIQUE (mailbox, uidl))."""
        taken = set(pairs.values())
        final: dict[int, bytes] = {}
        for m in self.messages:
            uidl = pairs.get(m.key, m.uidl)
            if m.key not in pairs and uidl in taken:
                uidl = new_uidl(int(m.key))
            if uidl != m.uidl:
                final[int(m.key)] = uidl
        if not final:
            return 0
        connection = self.target._connection
        with connection.transaction(), connection.cursor() as cursor:
            # Out of the way first: two messages may swap UIDLs.
            cursor.executemany("UPDATE popgate_messages SET uidl = %s WHERE id = %s "
                               "AND mailbox_id = %s",
                               [(f"~import.{i}", i, self.mailbox) for i in final])
            cursor.executemany("UPDATE popgate_messages SET uidl = %s WHERE id = %s "
                               "AND mailbox_id = %s",
                               [(u.decode("ascii"), i, self.mailbox) for i, u in final.items()])
        return len(final)


def open_target(store: str) -> MaildirTarget | MboxTarget | PostgresTarget:
    """
    The store popgate serves, as the server's C{--store} names it.

    @raise ValueError: not C{maildir:}, C{mbox:} or C{postgresql:}, or bad
        options (one line).
    @raise TargetError: the database cannot be used.
    """
    kind, colon, argstring = store.partition(":")
    if not colon:
        raise ValueError(f"--store {store!r}: maildir:TEMPLATE, mbox:TEMPLATE or "
                         "postgresql:dsn=DSN")
    if kind == "maildir":
        return MaildirTarget(argstring)
    if kind == "mbox":
        return MboxTarget(argstring)
    if kind == "postgresql":
        return PostgresTarget(argstring)
    raise ValueError(f"--store {kind}: only maildir, mbox and postgresql stores keep UIDLs")
