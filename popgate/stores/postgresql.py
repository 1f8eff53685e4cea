"""
The PostgreSQL mail store: C{--store postgresql:dsn=postgresql://...}.

Mailboxes, messages and their bodies are rows (L{popgate.stores.pg_schema}
says which and why), so any number of popgate nodes can serve the same
mail.  A POP3 session, from login to QUIT:

  1. the in-process lock (L{LockingStore.open_locked}), then, in a pool
     thread, a I{session connection} of its own, held until the session
     ends;
  2. on it, the user's mailbox row (created at the first login or
     delivery, so that every user has a lock key), and the session-level
     advisory lock C{pg_try_advisory_lock(LOCK_CLASS, id)}: taken by
     another session on any node, the login is C{-ERR [IN-USE]}.  A
     session-level lock lives as long as the backend: if the node dies,
     the server ends the backend (at once when the node's kernel closes
     the socket; within the keepalive bound of
     L{popgate.stores.pg_settings} when the node is gone altogether) and
     the lock goes with it;
  3. the snapshot: one index scan of C{popgate_messages} in C{id} order
     (UIDL and wire size stored at delivery; no body is read);
  4. RETR and TOP read the body a row at a time on the session connection
     (L{ChunkSource});
  5. QUIT deletes the marked messages in one transaction (their rows go by
     C{ON DELETE CASCADE}), committed before C{+OK}; then the lock is
     released and the connection kept for the next session.  A session
     that ends otherwise only releases the lock.  If the session
     connection died meanwhile, the lock went with it and the QUIT's
     transaction cannot run: the client gets C{-ERR}, nothing was
     changed.

Delivery (LMTP, C{popgate deliver}) is one transaction on a connection of
the bounded pool: the mailbox row if missing and L{insert_message};
committed before the L{Deferred} fires, so LMTP says 250 only then.

PostgreSQL down, restarted or refusing is L{errors.TemporaryFailure} with
a one-line reason (C{-ERR [SYS/TEMP]}, LMTP 451, C{popgate deliver}'s 75),
and the next login or delivery after it is back works: dead connections
are discarded (L{popgate.stores.pg_connections}).  A database without
the popgate schema, or with an older one, is the same kind of failure,
naming C{popgate db init} / C{popgate db upgrade}: the store starts
anyway (the database may be down at boot) and works as soon as the schema
is there.  A newer schema is used as it is: steps only add, so nodes not
yet upgraded keep working during a rolling upgrade.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.cred.sql_settings import redact
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore, IReachable
from popgate.maildrop import MessageInfo
from popgate.stores.base import LockingStore
from popgate.stores.pg_connections import (
    Connection,
    ConnectionPool,
    close_quietly,
    connect,
    translated,
)
from popgate.stores.pg_schema import (
    LOCK_CLASS,
    VERSION,
    current_version,
    insert_message,
    mailbox_id,
)
from popgate.stores.pg_settings import PGSettings, parse_args
from popgate.stores.pg_source import ChunkSource

__all__ = ["PostgresMaildrop", "PostgresStore", "lock_key", "make_store"]

log = Logger()
T = TypeVar("T")

#: A snapshot row: id, UIDL, wire size, stored size.
Row = tuple[int, str, int, int]

_SNAPSHOT = ("SELECT id, uidl, wire_size, stored_size FROM popgate_messages "
             "WHERE mailbox_id = %s ORDER BY id")
_OPEN = ("SELECT m.stored_size, c.data FROM popgate_messages m "
         "LEFT JOIN popgate_chunks c ON c.message_id = m.id AND c.seq = 0 "
         "WHERE m.id = %s AND m.mailbox_id = %s")
_CHUNK = "SELECT data FROM popgate_chunks WHERE message_id = %s AND seq = %s"
_DELETE = "DELETE FROM popgate_messages WHERE id = ANY(%s) AND mailbox_id = %s"


def lock_key(mailbox: int) -> int:
    """The second key of a mailbox's advisory lock: its id (a bigint)
    folded into the int4 the two-key form takes (ids repeat only every
    2**32 mailboxes)."""
    return (mailbox + 2**31) % 2**32 - 2**31


def find_or_create_mailbox(cursor: Any, name: str) -> int:
    """C{name}'s mailbox id, the row created if missing (looked up first,
    so an existing mailbox costs no sequence value)."""
    found = mailbox_id(cursor, name, create=False)
    if found is None:
        found = mailbox_id(cursor, name, create=True)
    assert found is not None
    return found


@implementer(IMaildrop)
class PostgresMaildrop:
    """One session's locked snapshot, with its session connection."""

    def __init__(self, store: PostgresStore, name: str, connection: Connection,
                 mailbox: int, rows: list[Row]) -> None:
        self._store = store
        self.name = name
        self.mailbox = mailbox
        self._connection = connection
        self._ids = [row[0] for row in rows]
        self._infos = [MessageInfo.unchecked(row[1].encode("ascii"), row[2]) for row in rows]
        self._held = True

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> defer.Deferred[ChunkSource]:
        return self._store.in_thread(self._open_source, index)

    def _open_source(self, index: int) -> ChunkSource:
        """The message's size and first row, in one round trip.  Blocking."""
        message_id = self._ids[index]
        with translated(f"reading message {index + 1} of {self.name}"):
            self._check_held()
            row = self._connection.execute(_OPEN, (message_id, self.mailbox),
                                           binary=True).fetchone()
        if row is None:
            raise errors.PermanentFailure(f"message {self._infos[index].uid.decode()} "
                                          "was removed")
        size, first = row
        return ChunkSource(self._fetch, message_id, size, first)

    def _fetch(self, message_id: int, seq: int) -> bytes | None:
        """One body row.  Blocking: in a pool thread."""
        with translated(f"reading a message of {self.name}"):
            self._check_held()
            row = self._connection.execute(_CHUNK, (message_id, seq), binary=True).fetchone()
        return None if row is None else bytes(row[0])

    def _check_held(self) -> None:
        if not self._held:
            # The connection may be another session's by now.
            raise errors.TemporaryFailure(f"the session of {self.name} has ended")

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        if not self._held:
            return defer.fail(errors.PermanentFailure("maildrop already closed"))
        ids = sorted({self._ids[i] for i in deleted})
        self._held = False
        d: defer.Deferred[None] = self._store.in_thread(self._delete_and_release, ids)
        return d.addBoth(self._released)

    def _delete_and_release(self, ids: list[int]) -> None:
        """The UPDATE state's one transaction, then the unlock.  Blocking."""
        if ids:
            try:
                with translated(f"deleting {len(ids)} messages of {self.name}"), \
                        self._connection.transaction():
                    self._connection.execute(_DELETE, (ids, self.mailbox))
            except BaseException:
                # Closing drops the lock too; the transaction did not commit.
                close_quietly(self._connection)
                self._store.session_connections.put(self._connection, keep=False)
                raise
        self._unlock()

    def close(self) -> defer.Deferred[Any] | None:
        """Release the lock without changing anything (in a thread; the
        result fires once it is released).  Idempotent."""
        if not self._held:
            return None
        self._held = False
        d = self._store.in_thread(self._unlock).addBoth(self._released)
        d.addErrback(self._close_failed)
        return d

    def _unlock(self) -> None:
        """Release the advisory lock and give the connection back (kept if
        the unlock worked, else closed: closing releases it too).
        Blocking."""
        connection = self._connection
        try:
            row = connection.execute("SELECT pg_advisory_unlock(%s, %s)",
                                     (LOCK_CLASS, lock_key(self.mailbox))).fetchone()
            keep = bool(row and row[0])
        except psycopg.Error:
            keep = False
        self._store.session_connections.put(connection, keep=keep)

    def _released(self, result: T) -> T:
        self._store.sessions.release(self.name)
        return result

    def _close_failed(self, failure: Failure) -> None:
        log.error("postgresql: releasing the mailbox of {name}: {why}", name=self.name,
                  why=failure.getErrorMessage())


@implementer(IMailStore, IDeliveryTarget, IReachable)
class PostgresStore(LockingStore):
    """
    Mailboxes in one PostgreSQL database, named by the user's name as the
    user store gives it (the realm's avatar id; delivery's resolved name).

    @param opener: makes a connection (default: L{connect} with
        C{settings}); tests hand in one that fails.
    """

    def __init__(self, settings: PGSettings, reactor: Any, opener: Any = None) -> None:
        super().__init__(reactor)
        self.settings = settings
        opener = opener or functools.partial(connect, settings)
        #: Connections for deliveries and probes: C{pool_size} at most.
        self.pool = ConnectionPool(opener, settings.pool_size, settings.connect_timeout)
        #: One connection per open session; idle ones kept for the next.
        self.session_connections = ConnectionPool(opener, settings.pool_size,
                                                  settings.connect_timeout, bounded=False)
        self._schema_checked = False
        trigger = getattr(reactor, "addSystemEventTrigger", None)
        if trigger is not None:
            trigger("during", "shutdown", self.close)

    def __repr__(self) -> str:
        return f"<PostgresStore {redact(self.settings.dsn)}>"

    def close(self) -> None:
        """Close the idle connections (at shutdown)."""
        self.pool.close()
        self.session_connections.close()

    def check_schema(self, cursor: Any) -> None:
        """
        Refuse to work on a database without the schema this code needs
        (checked until it was found once; a schema does not go away).

        @raise errors.TemporaryFailure: naming C{popgate db init} or
            C{popgate db upgrade}.
        """
        if self._schema_checked:
            return
        have = current_version(cursor)
        if have < VERSION:
            command = "popgate db init" if have == 0 else "popgate db upgrade"
            raise errors.TemporaryFailure(
                f"the database {redact(self.settings.dsn)} has popgate schema version "
                f"{have}, this popgate needs {VERSION}: run {command}")
        self._schema_checked = True

    # IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[PostgresMaildrop]:
        name = str(avatar_id)

        def wrap(opened: tuple[Connection, int, list[Row]]) -> PostgresMaildrop:
            return PostgresMaildrop(self, name, *opened)

        return self.open_locked(name, lambda: self._open(name), wrap)

    def _open(self, name: str) -> tuple[Connection, int, list[Row]]:
        """A session connection, the lock and the snapshot.  Blocking."""
        with translated(f"opening the mailbox of {name}"):
            (mailbox, rows), connection = self.session_connections.take(
                functools.partial(self._lock_and_read, name))
        return connection, mailbox, rows

    def _lock_and_read(self, name: str, connection: Connection) -> tuple[int, list[Row]]:
        with connection.cursor() as cursor:
            self.check_schema(cursor)
            mailbox = find_or_create_mailbox(cursor, name)
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, lock_key(mailbox)))
            row = cursor.fetchone()
            if not (row and row[0]):
                raise errors.MaildropInUse(name)
            try:
                cursor.execute(_SNAPSHOT, (mailbox,))
                rows: list[Row] = cursor.fetchall()
            except BaseException:
                close_quietly(connection)  # and the lock with it
                raise
        return mailbox, rows

    # IDeliveryTarget

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[str]:
        """Store C{message} for C{user} in one transaction (in a thread);
        fires, once committed, with its UIDL."""
        return self.in_thread(self._deliver, str(user), bytes(message))

    def _deliver(self, name: str, message: bytes) -> str:
        def job(connection: Connection) -> str:
            with connection.transaction(), connection.cursor() as cursor:
                self.check_schema(cursor)
                uidl = insert_message(cursor, find_or_create_mailbox(cursor, name), message)
            return uidl.decode("ascii")

        with translated(f"delivering to {name}"):
            return self.pool.run(job)

    # IReachable

    def probe(self) -> defer.Deferred[str]:
        """Connect, check the schema and count the mailboxes."""
        return self.in_thread(self._probe)

    def _probe(self) -> str:
        def job(connection: Connection) -> str:
            with connection.cursor() as cursor:
                self.check_schema(cursor)
                cursor.execute("SELECT count(*) FROM popgate_mailboxes")
                row = cursor.fetchone()
            count = int(row[0]) if row else 0
            return f"schema version {VERSION}, {count} mailbox{'es' if count != 1 else ''}"

        with translated(f"reaching {redact(self.settings.dsn)}"):
            return self.pool.run(job)


def make_store(argstring: str, reactor: Any) -> PostgresStore:
    """
    The C{postgresql:dsn=...[,key=value...]} store plugin, on C{reactor}
    (L{popgate.stores.pg_settings} lists the keys).  Nothing is connected
    yet: the database may be down at start-up.

    @raise ValueError: with a one-line reason.
    """
    return PostgresStore(parse_args(argstring), reactor)
