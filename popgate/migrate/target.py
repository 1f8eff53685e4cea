"""
The PostgreSQL side of C{popgate migrate}: one connection, used by one
pool thread at a time (the copy awaits each call), writing only through
L{popgate.stores.pg_schema.insert_message}, so a migrated message is
stored exactly as a delivered one.

Why it is written this way:

  - The schema is never created or upgraded here: that is C{popgate db
    init}'s job, and a migration that quietly created tables in the wrong
    database would look like it worked.
  - Messages are committed in batches (L{BATCH_MESSAGES} or
    L{BATCH_OCTETS}, whichever comes first) and at the end of each user:
    an interrupted run keeps every batch it finished, and a run that is
    repeated skips what is there (C{UNIQUE (mailbox_id, uidl)}), so the
    worst an interruption costs is one batch copied again.  Each message
    has its own savepoint: one that cannot be written (a UIDL the source
    gives twice) loses only itself.
  - While a user is copied, the session lock a POP3 session on the new
    store takes (C{pg_try_advisory_lock(LOCK_CLASS, mailbox id)}) is held:
    a client cannot log in to, and delete from, a half-copied mailbox.

Blocking: every method runs in the reactor's thread pool (or before the
reactor runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from popgate.errors import TemporaryFailure
from popgate.optional import is_missing_dependency, missing_library
from popgate.probes import one_line
from popgate.stores import pg_schema
from popgate.stores.pg_settings import PGSettings

if TYPE_CHECKING:
    import psycopg

__all__ = ["BATCH_MESSAGES", "BATCH_OCTETS", "StoredRow", "Target", "TargetError", "open_target"]

#: A commit after this many messages...
BATCH_MESSAGES = 100
#: ...or this many octets, whichever comes first.
BATCH_OCTETS = 32 << 20


class TargetError(Exception):
    """The database cannot be used (one line: why, and what to do)."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """
    One message as the target holds it, for verification.

    @ivar chunk_octets: the octets its chunk rows hold (should be
        C{stored_size}).
    @ivar chunks: how many chunk rows it has.
    @ivar seq_end: one more than its highest chunk C{seq} (should be
        C{chunks}: no gap).
    """

    uidl: bytes
    wire_size: int
    stored_size: int
    chunk_octets: int
    chunks: int
    seq_end: int


def open_target(settings: PGSettings, dry_run: bool = False) -> Target:
    """
    Connect as the C{postgresql:} store does (its timeouts and keepalives)
    and check the schema.

    @param dry_run: a database without the schema is accepted (nothing is
        written; every message would be copied).
    @raise TargetError: the server cannot be reached, or the schema is
        missing or older than this popgate's.
    """
    # Here, not at the top: psycopg takes a tenth of a second to import,
    # and every `popgate` command (deliver, run by the MTA for each
    # message) imports this module's command.
    try:
        from popgate.stores.pg_connections import connect
        from popgate.stores.postgresql import lock_key
    except ImportError as e:
        if not is_missing_dependency(e):
            raise
        raise TargetError(missing_library(e)) from None

    try:
        connection = connect(settings)
    except TemporaryFailure as e:
        raise TargetError(str(e)) from e
    connection.autocommit = False  # batches: see the module docstring
    target = Target(connection, lock_key)
    try:
        target.check_schema(dry_run)
    except BaseException:
        target.close()
        raise
    return target


class Target:
    """The mail database, written a batch at a time."""

    def __init__(self, connection: psycopg.Connection[Any],
                 lock_key: Callable[[int], int]) -> None:
        """
        @param lock_key: the second key of a mailbox's session lock, as
            the store makes it from the mailbox id.
        """
        self._connection = connection
        self._lock_key = lock_key
        self.schema = 0
        self._pending = 0
        self._pending_octets = 0

    def check_schema(self, allow_missing: bool = False) -> None:
        """@raise TargetError: unless the schema has what this popgate writes."""
        try:
            with self._connection.cursor() as cursor:
                self.schema = pg_schema.current_version(cursor)
            self._connection.rollback()
        except Exception as e:
            raise TargetError(f"cannot read the schema version: {one_line(e)}") from e
        # A newer schema is written as the store writes it: versions only add.
        if self.schema >= pg_schema.VERSION or (allow_missing and self.schema == 0):
            return
        if self.schema == 0:
            raise TargetError("the database has no popgate schema: create it first with "
                              "`popgate db init --store postgresql:dsn=...`")
        raise TargetError(f"the database has popgate schema version {self.schema}; this "
                          f"popgate writes {pg_schema.VERSION}: upgrade it first with "
                          "`popgate db upgrade --store postgresql:dsn=...`")

    def mailbox(self, name: str, create: bool = True) -> int | None:
        """The id of C{name}'s mailbox (created, and committed, if
        C{create}); C{None} if there is none (or no schema yet)."""
        if self.schema == 0:
            return None
        with self._connection.cursor() as cursor:
            found = pg_schema.mailbox_id(cursor, name, create)
        self.commit()
        return found

    def lock(self, mailbox: int) -> bool:
        """Take the mailbox's POP3 session lock; C{False} when a session
        (or another migration) holds it."""
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)",
                           (pg_schema.LOCK_CLASS, self._lock_key(mailbox)))
            row = cursor.fetchone()
        self.commit()
        return bool(row and row[0])

    def unlock(self, mailbox: int) -> None:
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)",
                           (pg_schema.LOCK_CLASS, self._lock_key(mailbox)))
        self.commit()

    def existing(self, mailbox: int | None) -> dict[bytes, int]:
        """The UIDLs the mailbox holds, each with its wire size."""
        if mailbox is None:
            return {}
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT uidl, wire_size FROM popgate_messages WHERE mailbox_id = %s",
                           (mailbox,))
            found = {uidl.encode("ascii"): int(size) for uidl, size in cursor}
        self.commit()
        return found

    def add(self, mailbox: int, uidl: bytes, data: bytes | bytearray) -> bool:
        """
        Write one message (in the current batch; committed when the batch
        is full).

        @param data: the message as the source store gave it; a
            C{bytearray} is taken as it is, without a copy.
        @return: C{False} if the mailbox already had C{uidl}.
        @raise ValueError: C{uidl} is not a valid UIDL.
        """
        from psycopg import errors as pg_errors

        with self._connection.cursor() as cursor:
            cursor.execute("SAVEPOINT popgate_migrate")
            try:
                # insert_message only counts, slices and sends: a bytearray
                # does as well as bytes, and saves copying a big message.
                pg_schema.insert_message(cursor, mailbox, cast(bytes, data), uidl=uidl)
            except pg_errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT popgate_migrate")
                return False
            except BaseException:
                # Only this message is lost: the batch before it can still
                # be committed (unless the connection itself is gone).
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK TO SAVEPOINT popgate_migrate")
                raise
            cursor.execute("RELEASE SAVEPOINT popgate_migrate")
        self._pending += 1
        self._pending_octets += len(data)
        if self._pending >= BATCH_MESSAGES or self._pending_octets >= BATCH_OCTETS:
            self.commit()
        return True

    def commit(self) -> None:
        """Make the batch durable."""
        self._connection.commit()
        self._pending = self._pending_octets = 0

    def finish(self) -> None:
        """Keep what the batch holds, if it can be kept: called after
        each user, also when the copy failed half-way."""
        from psycopg.pq import TransactionStatus

        if self._connection.closed or self._connection.broken:
            return
        if self._connection.info.transaction_status == TransactionStatus.INERROR:
            self._connection.rollback()
        else:
            self._connection.commit()
        self._pending = self._pending_octets = 0

    @property
    def broken(self) -> bool:
        """Whether the connection is gone (the run cannot go on)."""
        return bool(self._connection.closed or self._connection.broken)

    def rows(self, mailbox: int | None) -> list[StoredRow]:
        """Every message of the mailbox, in arrival order, with what its
        chunk rows hold (their lengths only: no body is read)."""
        if mailbox is None:
            return []
        with self._connection.cursor() as cursor:
            cursor.execute(
                "SELECT m.uidl, m.wire_size, m.stored_size, "
                "coalesce(sum(octet_length(c.data)), 0), count(c.seq), "
                "coalesce(max(c.seq) + 1, 0) "
                "FROM popgate_messages m LEFT JOIN popgate_chunks c ON c.message_id = m.id "
                "WHERE m.mailbox_id = %s GROUP BY m.id ORDER BY m.id", (mailbox,))
            found = [StoredRow(uidl.encode("ascii"), int(wire), int(stored), int(octets),
                               int(chunks), int(seq_end))
                     for uidl, wire, stored, octets, chunks, seq_end in cursor]
        self.commit()
        return found

    def close(self) -> None:
        if not self._connection.closed:
            self._connection.close()
