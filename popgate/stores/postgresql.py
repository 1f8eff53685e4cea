"""
The PostgreSQL mail store: C{--store postgresql:dsn=postgresql://...}.

Mailboxes, messages and their bodies are rows (L{popgate.stores.pg_schema}
says which and why), so any number of popgate nodes can serve the same
mail.  A POP3 session, from login to QUIT, is L{popgate.stores.pg_session}:
the in-process lock, then a connection of its own held until the session
ends, with a session-level advisory lock on it (C{-ERR [IN-USE]} for a
second login on any node) and the snapshot in one round trip; RETR a
round trip per body row; QUIT the deletion (one transaction, committed
before C{+OK}) and the unlock in one.  Those statements run from the
reactor thread without blocking it (L{popgate.stores.pg_reactor}); only
connecting, and a user's first login in a process (the mailbox row looked
up or created), go to a pool thread.

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
from typing import Any

from psycopg import errors as pg_errors
from twisted.internet import defer
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.cred.sql_settings import redact
from popgate.interfaces import (
    IDeliveryTarget,
    ILoginHistory,
    IMailStore,
    IReachable,
    IRetrievalRecord,
)
from popgate.stores.base import LockingStore
from popgate.stores.pg_connections import Connection, ConnectionPool, connect, translated
from popgate.stores.pg_history import PostgresLoginHistory, PostgresRetrievalRecord
from popgate.stores.pg_schema import VERSION, current_version, insert_message, mailbox_id
from popgate.stores.pg_session import PostgresMaildrop, lock_key, open_session
from popgate.stores.pg_settings import PGSettings, parse_args

__all__ = ["PostgresMaildrop", "PostgresStore", "lock_key", "make_store"]

#: Mailbox ids kept per process (a mailbox row is never renumbered); past
#: this many, the cache starts again.
MAX_CACHED_IDS = 100_000


def find_or_create_mailbox(cursor: Any, name: str) -> int:
    """C{name}'s mailbox id, the row created if missing (looked up first,
    so an existing mailbox costs no sequence value)."""
    found = mailbox_id(cursor, name, create=False)
    if found is None:
        found = mailbox_id(cursor, name, create=True)
    assert found is not None
    return found


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
        self.session_connections = ConnectionPool(opener, settings.idle_sessions,
                                                  settings.connect_timeout, bounded=False)
        self._schema_checked = False
        #: Mailbox ids by name (L{remember}): a login needs its lock key
        #: before its one round trip.
        self._mailbox_ids: dict[str, int] = {}
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

    @property
    def reactor(self) -> Any:
        return self._reactor

    def cached_mailbox(self, name: str) -> int | None:
        """C{name}'s mailbox id if known here (and the schema checked)."""
        return self._mailbox_ids.get(name) if self._schema_checked else None

    def remember(self, name: str, mailbox: int) -> int:
        """Keep C{name}'s mailbox id for its next logins; C{mailbox}."""
        if len(self._mailbox_ids) >= MAX_CACHED_IDS:
            self._mailbox_ids.clear()
        self._mailbox_ids[name] = mailbox
        return mailbox

    def forget_mailbox(self, name: str) -> None:
        self._mailbox_ids.pop(name, None)

    def look_up(self, connection: Connection, name: str) -> int:
        """C{name}'s mailbox id, the row created if missing, and the schema
        checked, on C{connection}.  Blocking.

        @raise psycopg.Error: the database failed.
        """
        with connection.cursor() as cursor:
            self.check_schema(cursor)
            return self.remember(name, find_or_create_mailbox(cursor, name))

    # IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[PostgresMaildrop]:
        """The in-process lock, then L{open_session} (released if that
        fails)."""
        name = str(avatar_id)
        try:
            self.sessions.acquire(name)
        except errors.MaildropInUse:
            return defer.fail()

        def failed(failure: Failure) -> Failure:
            self.sessions.release(name)
            return failure

        d = defer.Deferred.fromCoroutine(open_session(self, name))
        return d.addErrback(failed)

    # IDeliveryTarget

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[str]:
        """Store C{message} for C{user} in one transaction (in a thread);
        fires, once committed, with its UIDL."""
        return self.in_thread(self._deliver, str(user), bytes(message))

    def _deliver(self, name: str, message: bytes) -> str:
        def job(connection: Connection) -> str:
            with connection.transaction(), connection.cursor() as cursor:
                self.check_schema(cursor)
                mailbox = self._mailbox_ids.get(name)
                cached = mailbox is not None
                if mailbox is None:
                    mailbox = find_or_create_mailbox(cursor, name)
                try:
                    uidl = insert_message(cursor, mailbox, message)
                except pg_errors.ForeignKeyViolation:
                    # A cached id whose row was deleted by hand: forgotten, so
                    # that the MTA's retry finds the name anew.
                    self.forget_mailbox(name)
                    raise
            if not cached:
                # Only once committed: another delivery given the id of a
                # row not yet committed would fail its foreign key check.
                self.remember(name, mailbox)
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


def retrieval_record(maildrop: PostgresMaildrop) -> PostgresRetrievalRecord:
    """An open session's first-RETR times (EXPIRE), on the store's pool
    connections: used only when C{--expire} is set."""
    return PostgresRetrievalRecord(maildrop.store, maildrop.mailbox, maildrop.message_ids)


# LOGIN-DELAY and EXPIRE (L{popgate.stores.pg_history}): a pool round trip
# each, only for users whose policy asks for them.
registerAdapter(PostgresLoginHistory, PostgresStore, ILoginHistory)
registerAdapter(retrieval_record, PostgresMaildrop, IRetrievalRecord)
