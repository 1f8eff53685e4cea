"""
A POP3 session on the PostgreSQL store, from login to QUIT, on the
session's own connection, driven from the reactor thread
(L{popgate.stores.pg_reactor}):

  1. a kept idle connection, or a new one (connected in a pool thread,
     which also looks the mailbox's id up at a user's first login in this
     process and checks the schema once);
  2. one round trip: C{pg_try_advisory_lock(LOCK_CLASS, id)} and the
     snapshot, in one pipeline.  The server runs the snapshot's statement
     after the lock's, with its own MVCC snapshot (read committed), so it
     sees every QUIT committed before the lock was free; its rows are
     thrown away when the lock was not taken (C{-ERR [IN-USE]}).  The
     snapshot checks the mailbox row too: a cached id whose row was
     deleted by hand is looked up again;
  3. RETR and TOP: the size and first body row in one round trip, then a
     round trip per further row (L{ChunkSource});
  4. QUIT: the deletion (one statement: one transaction, committed before
     the client's C{+OK}) and the unlock, in one round trip; a session
     that ends otherwise only unlocks.  A connection that died takes the
     lock with it; a QUIT whose deletion may not have committed is
     C{-ERR}.

A session-level advisory lock lives as long as the backend: if the node
dies, the server ends the backend (at once when the node's kernel closes
the socket, within the keepalive bound of L{popgate.stores.pg_settings}
when the node is gone altogether) and the lock goes with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.adapt import Transformer
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IMaildrop
from popgate.maildrop import MessageInfo
from popgate.stores.pg_connections import Connection, close_quietly, translated
from popgate.stores.pg_reactor import LinkBroken, ReactorLink, Statement, StatementError
from popgate.stores.pg_schema import LOCK_CLASS
from popgate.stores.pg_source import ChunkSource

if TYPE_CHECKING:
    from popgate.stores.postgresql import PostgresStore

__all__ = ["PostgresMaildrop", "lock_key", "open_session"]

log = Logger()

#: A snapshot row: id, UIDL, wire size, stored size.
Row = tuple[int, str, int, int]

#: Seconds a batch may go unanswered beyond the statement timeout before
#: the connection is given up.
LINK_GRACE = 5.0
#: Snapshots of more rows than this are turned into Python values in a
#: pool thread, not in the reactor's.
BIG_SNAPSHOT = 5000

_LOCK = b"SELECT pg_try_advisory_lock($1::int4, $2::int4)"
_UNLOCK = b"SELECT pg_advisory_unlock($1::int4, $2::int4)"
_SNAPSHOT = (b"SELECT m.id, m.uidl, m.wire_size, m.stored_size FROM popgate_mailboxes b "
             b"LEFT JOIN popgate_messages m ON m.mailbox_id = b.id "
             b"WHERE b.id = $1::bigint AND b.name = $2::text ORDER BY m.id")
_OPEN = (b"SELECT m.stored_size, c.data FROM popgate_messages m "
         b"LEFT JOIN popgate_chunks c ON c.message_id = m.id AND c.seq = 0 "
         b"WHERE m.id = $1::bigint AND m.mailbox_id = $2::bigint")
_CHUNK = b"SELECT data FROM popgate_chunks WHERE message_id = $1::bigint AND seq = $2::int4"
_DELETE = b"DELETE FROM popgate_messages WHERE id = ANY($1::bigint[]) AND mailbox_id = $2::bigint"


def lock_key(mailbox: int) -> int:
    """The second key of a mailbox's advisory lock: its id (a bigint)
    folded into the int4 the two-key form takes (ids repeat only every
    2**32 mailboxes)."""
    return (mailbox + 2**31) % 2**32 - 2**31


def _text(value: int | str) -> bytes:
    return str(value).encode("utf-8")


def _lock_args(mailbox: int) -> tuple[bytes, bytes]:
    return _text(LOCK_CLASS), _text(lock_key(mailbox))


def lock(mailbox: int) -> Statement:
    return Statement(b"popgate_lock", _LOCK, _lock_args(mailbox))


def unlock(mailbox: int) -> Statement:
    return Statement(b"popgate_unlock", _UNLOCK, _lock_args(mailbox))


def _true(result: Any) -> bool:
    return bool(result.ntuples) and result.get_value(0, 0) == b"t"


def _why(error: BaseException) -> str:
    """One line for a batch's failure; a missing table said as what it
    means."""
    if isinstance(error, StatementError) and error.sqlstate == "42P01":
        return f"the database has no popgate schema (run popgate db init): {error}"
    return str(error)


class _Again(Exception):
    """Open once more: a kept connection was dead, or a cached id stale."""


async def open_session(store: PostgresStore, name: str) -> PostgresMaildrop:
    """
    Lock C{name}'s mailbox and read its snapshot (the caller holds the
    in-process lock).  A kept connection found dead, or a stale cached
    id, costs one more try, not a failed login.

    @raise errors.MaildropInUse: another session holds the lock.
    @raise errors.TemporaryFailure: the database failed, in one line.
    """
    for attempt in (1, 2):
        try:
            return await _open_once(store, name, last=attempt == 2)
        except _Again:
            store.session_connections.discard_idle()
    raise AssertionError("unreachable")  # pragma: no cover


async def _open_once(store: PostgresStore, name: str, last: bool) -> PostgresMaildrop:
    pool = store.session_connections
    kept = pool.get_idle()
    reused = kept is not None
    cached = store.cached_mailbox(name)
    if kept is None or cached is None:
        connection, mailbox = await store.in_thread(_ready, store, name, kept, last)
    else:
        connection, mailbox = kept, cached
    link = ReactorLink(store.reactor, connection, store.settings.query_timeout + LINK_GRACE)
    snapshot_of = Statement(b"popgate_snapshot", _SNAPSHOT, (_text(mailbox), _text(name)))
    try:
        lock_result, snapshot = await link.run([lock(mailbox), snapshot_of])
    except LinkBroken as e:
        _give_back(link, pool, keep=False)
        if reused and not last:
            raise _Again() from e
        raise errors.TemporaryFailure(f"opening the mailbox of {name}: {e}") from e
    except StatementError as e:
        _give_back(link, pool, keep=False)  # closed: the lock goes with it, if taken
        raise errors.TemporaryFailure(f"opening the mailbox of {name}: {_why(e)}") from e
    if not _true(lock_result):
        _give_back(link, pool, keep=True)
        raise errors.MaildropInUse(name)
    if not snapshot.ntuples:
        # The row was deleted by hand since its id was cached.
        store.forget_mailbox(name)
        await _release(link, pool, mailbox)
        if last:
            raise errors.TemporaryFailure(f"the mailbox row of {name} keeps vanishing")
        raise _Again()
    if snapshot.ntuples > BIG_SNAPSHOT:
        rows = await store.in_thread(_rows, connection, snapshot)
    else:
        rows = _rows(connection, snapshot)
    return PostgresMaildrop(store, name, link, mailbox, rows)


def _ready(store: PostgresStore, name: str, connection: Connection | None,
           last: bool) -> tuple[Connection, int]:
    """
    A new connection if C{connection} is C{None}, and C{name}'s mailbox
    id (looked up, the row created if missing, the schema checked).
    Blocking: in a pool thread.

    @raise _Again: a kept connection turned out dead.
    """
    pool = store.session_connections
    reused = connection is not None
    if connection is None:
        connection = pool.open()
    try:
        with translated(f"opening the mailbox of {name}"):
            return connection, store.look_up(connection, name)
    except errors.TemporaryFailure as e:
        dead = is_dead(connection, e.__cause__ or e)
        pool.put(connection, keep=not dead)
        if dead and reused and not last:
            raise _Again() from e
        raise


def _rows(connection: Connection, result: Any) -> list[Row]:
    """The snapshot's rows (none for an empty mailbox: one row of
    NULLs)."""
    loader = Transformer(connection)
    loader.set_pgresult(result)
    rows: list[Row] = loader.load_rows(0, result.ntuples, tuple)
    return [] if rows[0][0] is None else rows


async def _release(link: ReactorLink, pool: Any, mailbox: int) -> None:
    """Unlock and give the connection back (kept if the unlock worked,
    else closed: closing releases the lock too)."""
    try:
        (result,) = await link.run([unlock(mailbox)])
        keep = _true(result)
    except (LinkBroken, StatementError):
        keep = False
    _give_back(link, pool, keep)


def _give_back(link: ReactorLink, pool: Any, keep: bool) -> None:
    """The session is done with C{link}'s connection: back to C{pool}, or
    closed (and a lock it holds with it) unless C{keep}."""
    link.done()
    if not keep:
        close_quietly(link.connection)
    pool.put(link.connection, keep=keep)


@implementer(IMaildrop)
class PostgresMaildrop:
    """One session's locked snapshot, with its session connection."""

    def __init__(self, store: PostgresStore, name: str, link: ReactorLink,
                 mailbox: int, rows: list[Row]) -> None:
        self._store = store
        self.name = name
        self.mailbox = mailbox
        self._link = link
        self._ids = [row[0] for row in rows]
        self._infos = [MessageInfo.unchecked(row[1].encode("ascii"), row[2]) for row in rows]
        self._held = True

    @property
    def connection(self) -> Connection:
        return self._link.connection

    @property
    def store(self) -> PostgresStore:
        return self._store

    @property
    def message_ids(self) -> list[int]:
        """The snapshot's C{popgate_messages.id}s, in order."""
        return self._ids

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> defer.Deferred[ChunkSource]:
        """The message's size and first row, in one round trip."""
        if not self._held:
            return defer.fail(self._ended())
        message_id = self._ids[index]
        what = f"reading message {index + 1} of {self.name}"
        d = self._link.run([Statement(b"popgate_open", _OPEN,
                                      (_text(message_id), _text(self.mailbox)), binary=True)])

        def opened(results: list[Any]) -> ChunkSource:
            (result,) = results
            if not result.ntuples:
                raise errors.PermanentFailure(f"message {self._infos[index].uid.decode()} "
                                              "was removed")
            loader = Transformer(self.connection)
            loader.set_pgresult(result)
            size, first = loader.load_row(0, tuple)
            return ChunkSource(self._fetch, message_id, size, first)

        return d.addCallbacks(opened, self._failed, errbackArgs=(what,))

    def _fetch(self, message_id: int, seq: int) -> defer.Deferred[bytes | None]:
        """One body row."""
        if not self._held:
            return defer.fail(self._ended())
        d = self._link.run([Statement(b"popgate_chunk", _CHUNK,
                                      (_text(message_id), _text(seq)), binary=True)])

        def fetched(results: list[Any]) -> bytes | None:
            (result,) = results
            return result.get_value(0, 0) if result.ntuples else None

        return d.addCallbacks(fetched, self._failed,
                              errbackArgs=(f"reading a message of {self.name}",))

    def _ended(self) -> errors.TemporaryFailure:
        # The connection may be another session's by now.
        return errors.TemporaryFailure(f"the session of {self.name} has ended")

    @staticmethod
    def _failed(failure: Failure, what: str) -> Failure:
        if failure.check(LinkBroken, StatementError):
            raise errors.TemporaryFailure(f"{what}: {_why(cast(BaseException, failure.value))}")
        return failure

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        """The UPDATE state: the deletion and the unlock, in one round
        trip; fires once the deletion is committed."""
        if not self._held:
            return defer.fail(errors.PermanentFailure("maildrop already closed"))
        ids = sorted({self._ids[i] for i in deleted})
        self._held = False
        d = defer.Deferred.fromCoroutine(self._delete_and_release(ids))
        return d.addBoth(self._released)

    async def _delete_and_release(self, ids: list[int]) -> None:
        if not ids:
            await _release(self._link, self._store.session_connections, self.mailbox)
            return
        pool = self._store.session_connections
        array = b"{" + b",".join(_text(i) for i in ids) + b"}"
        try:
            _, unlocked = await self._link.run([
                Statement(b"popgate_delete", _DELETE, (array, _text(self.mailbox))),
                unlock(self.mailbox)])
        except StatementError as e:
            _give_back(self._link, pool, keep=False)  # the lock goes with it
            if e.results:
                return  # the deletion committed; only the unlock failed
            raise errors.TemporaryFailure(
                f"deleting {len(ids)} messages of {self.name}: {_why(e)}") from e
        except LinkBroken as e:
            # Committed or not, nobody can tell: the client hears -ERR.
            _give_back(self._link, pool, keep=False)
            raise errors.TemporaryFailure(
                f"deleting {len(ids)} messages of {self.name}: {e}") from e
        _give_back(self._link, pool, _true(unlocked))

    def close(self) -> defer.Deferred[Any] | None:
        """Release the lock without changing anything (fires once it is
        released).  Idempotent."""
        if not self._held:
            return None
        self._held = False
        d = defer.Deferred.fromCoroutine(
            _release(self._link, self._store.session_connections, self.mailbox))
        d.addBoth(self._released)
        d.addErrback(self._close_failed)
        return d

    def _released(self, result: Any) -> Any:
        self._store.sessions.release(self.name)
        return result

    def _close_failed(self, failure: Failure) -> None:
        log.error("postgresql: releasing the mailbox of {name}: {why}", name=self.name,
                  why=failure.getErrorMessage())


def is_dead(connection: Connection, error: BaseException) -> bool:
    """Whether C{error} on C{connection} means the connection died."""
    return isinstance(error, psycopg.OperationalError) and (connection.closed
                                                             or connection.broken)
