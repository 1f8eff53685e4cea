"""
LOGIN-DELAY and EXPIRE in the PostgreSQL mail store: the SQL on schema
version 2's columns (L{popgate.stores.pg_schema}), and the two adapters
the store's sessions use through L{popgate.interfaces.ILoginHistory} and
L{popgate.interfaces.IRetrievalRecord}.

  - C{popgate_mailboxes.last_login}: the user's last successful login
    (L{popgate.login_delay} says when one is recorded);
  - C{popgate_messages.retrieved_at}: a message's first RETR, set once
    (C{WHERE retrieved_at IS NULL}: a later RETR, on any node, never moves
    it); a deleted message's row takes it along, so nothing needs pruning.

Times are the POSIX times popgate's clock gives (the same on every node
as far as NTP keeps them), stored as C{timestamptz}.

Every function here blocks and takes a psycopg cursor (or connection) in
autocommit or in the caller's transaction: the store runs them in its
threads, on a pool connection or on the session's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from zope.interface import implementer

from popgate.interfaces import ILoginHistory, IRetrievalRecord
from popgate.policy import DAY, NEVER
from popgate.stores.pg_connections import translated

if TYPE_CHECKING:
    from popgate.stores.postgresql import PostgresStore

__all__ = ["PostgresLoginHistory", "PostgresRetrievalRecord", "expired_ids", "last_login",
           "record_login", "record_retrieved", "retrieved_times"]

_LAST_LOGIN = ("SELECT extract(epoch FROM last_login)::float8 FROM popgate_mailboxes "
               "WHERE name = %s")
_RECORD_LOGIN = "UPDATE popgate_mailboxes SET last_login = to_timestamp(%s) WHERE name = %s"
_RETRIEVED = ("SELECT id, extract(epoch FROM retrieved_at)::float8 FROM popgate_messages "
              "WHERE mailbox_id = %s AND id = ANY(%s) AND retrieved_at IS NOT NULL")
_RECORD_RETRIEVED = (
    "UPDATE popgate_messages m SET retrieved_at = to_timestamp(r.t) "
    "FROM unnest(%s::bigint[], %s::float8[]) AS r(id, t) "
    "WHERE m.id = r.id AND m.mailbox_id = %s AND m.retrieved_at IS NULL")
_EXPIRED = ("SELECT id FROM popgate_messages WHERE mailbox_id = %s AND id = ANY(%s) "
            "AND retrieved_at <= to_timestamp(%s) ORDER BY id")


def last_login(cursor: Any, name: str) -> float | None:
    """The time of C{name}'s last recorded login (None: never, or no
    mailbox row yet).  By name: it is asked before the session opens the
    mailbox, when its id may not be known."""
    row = cursor.execute(_LAST_LOGIN, (name,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def record_login(cursor: Any, name: str, when: float) -> None:
    """Set C{name}'s last login to C{when} (its mailbox row exists: the
    session's open made it)."""
    cursor.execute(_RECORD_LOGIN, (when, name))


def retrieved_times(cursor: Any, mailbox: int, ids: Sequence[int]) -> list[float | None]:
    """The first-retrieval time of each message of C{ids}, in that order."""
    rows = cursor.execute(_RETRIEVED, (mailbox, list(ids))).fetchall()
    found = {int(message_id): float(when) for message_id, when in rows}
    return [found.get(message_id) for message_id in ids]


def record_retrieved(cursor: Any, mailbox: int, first: Mapping[int, float]) -> None:
    """Set C{retrieved_at} of the messages in C{first} (id -> time) that
    have none yet; one statement."""
    if first:
        ids = list(first)
        cursor.execute(_RECORD_RETRIEVED, (ids, [first[i] for i in ids], mailbox))


def expired_ids(cursor: Any, mailbox: int, ids: Sequence[int], days: float,
                now: float) -> list[int]:
    """The messages of C{ids} retrieved C{days} days before C{now} or
    earlier (none for L{NEVER}); for a QUIT's DELETE, or C{popgate expire}."""
    if days == NEVER or not ids:
        return []
    rows = cursor.execute(_EXPIRED, (mailbox, list(ids), now - days * DAY)).fetchall()
    return [int(row[0]) for row in rows]


@implementer(ILoginHistory)
class PostgresLoginHistory:
    """C{last_login} of the user's mailbox row, on a pool connection."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def last_login(self, user: str) -> defer.Deferred[float | None]:
        return self._store.in_thread(self._run, f"reading the last login of {user}",
                                     lambda c: last_login(c, str(user)))

    def record_login(self, user: str, when: float) -> defer.Deferred[None]:
        return self._store.in_thread(self._run, f"recording the login of {user}",
                                     lambda c: record_login(c, str(user), when))

    def _run(self, what: str, job: Any) -> Any:
        with translated(what):
            return self._store.pool.run(job)


@implementer(IRetrievalRecord)
class PostgresRetrievalRecord:
    """
    The C{retrieved_at} of one session's snapshot, on a pool connection
    (the session's own holds only its advisory lock, which this does not
    need: the rows are the locked mailbox's).

    @param ids: the snapshot's message ids, in order.
    """

    def __init__(self, store: PostgresStore, mailbox: int, ids: Sequence[int]) -> None:
        self._store = store
        self.mailbox = mailbox
        self.ids = list(ids)

    def load(self) -> defer.Deferred[list[float | None]]:
        return self._store.in_thread(
            self._run, lambda c: retrieved_times(c, self.mailbox, self.ids))

    def save(self, times: Sequence[float | None]) -> defer.Deferred[None]:
        first = {i: t for i, t in zip(self.ids, times, strict=True) if t is not None}
        return self._store.in_thread(
            self._run, lambda c: record_retrieved(c, self.mailbox, first))

    def _run(self, job: Any) -> Any:
        with translated(f"the retrieval times of mailbox {self.mailbox}"):
            return self._store.pool.run(job)
