"""
Statements on a session connection, run from the reactor thread without
blocking it: libpq in non-blocking pipeline mode, its socket watched by
the reactor.

Why not a pool thread, as for deliveries: a POP3 session's statements are
short (the lock and the snapshot at login, a body row per RETR, the
deletion and the unlock at QUIT), and their cost in a thread was mostly
the trip there and back (a queue, a wake-up of the reactor through its
waker pipe, the GIL handed over twice) and psycopg's cursor layers:
measured under 10 parallel logins, 1.7-2.4 ms of popgate CPU per login
against 1.0 on Maildir.  Here a login is one write and one read of the
session's socket, in the reactor, as a POP3 line is.

Each batch of statements goes out as one pipeline, in one write (every
statement prepared once per connection, then executed by name), with a
sync point after each statement: the server runs them in order, each in
a transaction of its own, committed before the next one runs.  A failing
statement fails the batch's L{Deferred} with L{StatementError} (the
results of the statements before it attached, so a caller can tell
whether, say, a deletion had been committed); the ones after it still
run.  A dead socket,
or no answer within C{timeout} seconds, fails it with L{LinkBroken} and
closes the connection.  Batches on one link run one after the other.

Connecting stays blocking (in a pool thread, L{popgate.stores.pg_connections}):
it happens once per kept connection.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.stores.pg_connections import Connection, close_quietly, one_line

__all__ = ["LinkBroken", "ReactorLink", "Statement", "StatementError", "link_for"]

#: Names prepared on each connection (a connection outlives its links:
#: it is kept idle between sessions).
_PREPARED: weakref.WeakKeyDictionary[Connection, set[bytes]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Statement:
    """One statement of a batch: prepared under C{name} (C{$1}... for the
    parameters), its parameters as text, its result text or binary."""

    name: bytes
    sql: bytes
    params: Sequence[bytes | None] = ()
    binary: bool = False


class StatementError(Exception):
    """
    A statement of a batch failed (the server said why; the connection is
    fine).

    @ivar sqlstate: the server's error code (C{"42P01"}: no such table).
    @ivar results: the results of the statements before it.
    """

    def __init__(self, message: str, sqlstate: str | None, results: list[Any]) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.results = results


class LinkBroken(Exception):
    """The connection died, or did not answer in time: it is closed."""


@implementer(IReadDescriptor, IWriteDescriptor)
class ReactorLink:
    """
    Runs batches of L{Statement}s on one psycopg connection's libpq
    connection, from the reactor thread.

    @param timeout: seconds a batch may take before the connection is
        given up (the server's statement_timeout stops a slow statement
        first; this bounds a server that stopped answering at all).
    """

    def __init__(self, reactor: Any, connection: Connection, timeout: float) -> None:
        self.reactor = reactor
        self.connection = connection
        self.timeout = timeout
        self._pgconn = connection.pgconn
        self._prepared = _PREPARED.setdefault(connection, set())
        self._queue: deque[tuple[Sequence[Statement], defer.Deferred[list[Any]]]] = deque()
        self._current: defer.Deferred[list[Any]] | None = None
        self._statements: Sequence[Statement] = ()
        self._results: list[Any] = []
        self._pending: list[Any] = []
        self._preparing: list[bool] = []
        self._syncs = 0  # sync points of the running batch still to come
        self._timer: Any = None
        self._writing = False
        #: A duplicate of libpq's socket, for the reactor: libpq closes its
        #: own when it meets the connection's end, and the reactor must
        #: never be left watching a closed (perhaps reused) number.
        self._fileno = -1

    # IFileDescriptor

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "postgresql"

    def connectionLost(self, reason: Failure) -> None:
        self._broken(f"the connection was lost: {reason.getErrorMessage()}")

    # running batches

    def run(self, statements: Sequence[Statement]) -> defer.Deferred[list[Any]]:
        """Run C{statements} as one batch (after any batch still running);
        fires with one result per statement (a C{psycopg.pq.PGresult})."""
        d: defer.Deferred[list[Any]] = defer.Deferred()
        self._queue.append((statements, d))
        if self._current is None:
            self._next()
        return d

    def _next(self) -> None:
        if not self._queue:
            return
        statements, d = self._queue.popleft()
        if self.connection.closed:
            d.errback(LinkBroken("the connection is closed"))
            self._next()
            return
        self._current = d
        self._statements = statements
        self._results, self._pending, self._preparing = [], [], []
        pgconn = self._pgconn
        try:
            pgconn.enter_pipeline_mode()
            for statement in statements:
                # Prepared once per connection (and once per batch).
                prepare = (statement.name not in self._prepared
                           and statement.name not in self._names_preparing())
                if prepare:
                    pgconn.send_prepare(statement.name, statement.sql)
                self._preparing.append(prepare)
                pgconn.send_query_prepared(statement.name, statement.params,
                                           result_format=1 if statement.binary else 0)
                # A sync point after each statement: without one, the
                # statements up to the next form one implicit transaction,
                # and a QUIT's unlock would free the mailbox before its
                # DELETE commits (another node's snapshot would still see
                # the deleted messages).
                pgconn.pipeline_sync()
            self._syncs = len(statements)
            if self._fileno < 0:
                self._fileno = os.dup(pgconn.socket)
        except (psycopg.Error, OSError) as e:
            self._broken(one_line(e))
            return
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        self.reactor.addReader(self)
        self.doWrite()

    def _names_preparing(self) -> set[bytes]:
        return {st.name for st, prepare in zip(self._statements, self._preparing, strict=False)
                if prepare}

    def doWrite(self) -> None:
        """Send what libpq still holds; watch for writability until it is
        all out."""
        try:
            more = self._pgconn.flush()
        except psycopg.Error as e:
            self._broken(one_line(e))
            return
        if more and not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        elif not more and self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def doRead(self) -> None:
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if not self._pending:
                        break
                    self._one_done(self._pending)
                    self._pending = []
                elif result.status == ExecStatus.PIPELINE_SYNC:
                    self._syncs -= 1
                    if self._syncs <= 0:
                        self._finished()
                        return
                else:
                    self._pending.append(result)
        except psycopg.Error as e:
            self._drain()
            self._broken(self._last_words() or one_line(e))
            return
        if pgconn.status != ConnStatus.OK:
            # libpq saw the end of the connection: nothing more comes.
            self._broken(self._last_words() or "the connection was lost")

    def _drain(self) -> None:
        """Collect what libpq parsed before it met the connection's end
        (the server's last error, as a result)."""
        for _ in range(16):
            try:
                result = self._pgconn.get_result()
            except psycopg.Error:
                return
            if result is None:
                if self._pgconn.is_busy():
                    return
                continue
            self._pending.append(result)

    def _last_words(self) -> str:
        """What libpq last said: the server's own reason first (such as
        C{FATAL: terminating connection due to administrator command})."""
        said = [r.error_message for r in [*self._results, *self._pending]
                if r.status == ExecStatus.FATAL_ERROR and r.error_message]
        words: list[str] = []
        for message in said or [self._pgconn.error_message or b""]:
            text = " ".join(message.decode("utf-8", "replace").split())
            if text and text not in words:
                words.append(text)
        return " ".join(words)

    def _one_done(self, results: list[Any]) -> None:
        """One command's results: a prepare's (kept quiet unless it
        failed) or a statement's."""
        self._results.append(results[-1])

    def _finished(self) -> None:
        """The sync point: every statement answered (or aborted)."""
        self._stop_watching()
        try:
            self._pgconn.exit_pipeline_mode()
        except psycopg.Error as e:
            self._broken(one_line(e))
            return
        answers, error = self._sort(self._results)
        d, self._current = self._current, None
        assert d is not None
        if error is None:
            d.callback(answers)
        else:
            d.errback(error)
        self._next()

    def _sort(self, results: list[Any]) -> tuple[list[Any], StatementError | None]:
        """Split the prepares' results from the statements'; the first
        failure, if any."""
        answers: list[Any] = []
        it = iter(results)
        for statement, prepare in zip(self._statements, self._preparing, strict=True):
            if prepare:
                prepared = next(it, None)
                if prepared is not None and prepared.status == ExecStatus.COMMAND_OK:
                    self._prepared.add(statement.name)
                elif prepared is not None and prepared.status == ExecStatus.FATAL_ERROR:
                    return answers, _error(prepared, answers)
            result = next(it, None)
            if result is None or result.status == ExecStatus.PIPELINE_ABORTED:
                return answers, StatementError("aborted", None, answers)
            if result.status == ExecStatus.FATAL_ERROR:
                return answers, _error(result, answers)
            answers.append(result)
        return answers, None

    def _timed_out(self) -> None:
        self._timer = None
        self._broken(f"no answer from the server within {self.timeout:g}s")

    def _stop_watching(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._fileno < 0:
            return
        self.reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def done(self) -> None:
        """The session is over: stop watching, let go of the socket's
        duplicate (the connection itself is the pool's again)."""
        self._stop_watching()
        if self._fileno >= 0:
            os.close(self._fileno)
            self._fileno = -1

    def _broken(self, why: str) -> None:
        """The connection is unusable: close it, fail what is running and
        what waits."""
        self.done()
        close_quietly(self.connection)
        waiting = [d for _, d in self._queue]
        self._queue.clear()
        if self._current is not None:
            waiting.insert(0, self._current)
            self._current = None
        for d in waiting:
            d.errback(LinkBroken(why))


def _error(result: Any, answers: list[Any]) -> StatementError:
    message = (result.error_message or b"").decode("utf-8", "replace")
    state = result.error_field(DiagnosticField.SQLSTATE)
    return StatementError(" ".join(message.split()) or "statement failed",
                          state.decode("ascii") if state else None, answers)


def link_for(reactor: Any, connection: Connection, timeout: float) -> ReactorLink:
    """A link driving C{connection} from C{reactor}."""
    return ReactorLink(reactor, connection, timeout)
