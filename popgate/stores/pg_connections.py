"""
Connections to the mail database: opening one with the store's settings,
a small bounded pool of them, and turning a database failure into the
one-line L{TemporaryFailure} a client's C{-ERR [SYS/TEMP]} (or an MTA's
451) is made of.

Everything here blocks: it runs in the reactor's thread pool.

The pool is popgate's own rather than C{psycopg_pool}'s (not installed
here, and a dependency for forty lines): it hands out at most C{size}
connections at once, keeps the idle ones, and discards any that is
broken, closed or left in a transaction.  A connection that died while
idle (PostgreSQL restarted, C{pg_terminate_backend}) is only found out at
its next statement, so L{ConnectionPool.run} runs a job again, once, on a
fresh connection when a I{reused} connection turns out dead: a restart
costs no failed delivery or login.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from popgate.cred.sql_settings import redact
from popgate.errors import TemporaryFailure
from popgate.stores.pg_settings import PGSettings

__all__ = ["Connection", "ConnectionPool", "connect", "one_line", "translated", "usable"]

T = TypeVar("T")
Connection = psycopg.Connection[Any]


def one_line(error: BaseException) -> str:
    """An exception's text on one line (libpq puts hints on lines of their own)."""
    return " ".join(str(error).split()) or type(error).__name__


def connect(settings: PGSettings) -> Connection:
    """
    A new autocommit connection with the settings' timeouts and
    keepalives (L{PGSettings.connect_kwargs}).

    @raise TemporaryFailure: the server cannot be reached or refused us.
    """
    try:
        return psycopg.connect(settings.dsn, **settings.connect_kwargs())
    except psycopg.Error as e:
        raise TemporaryFailure(f"cannot connect to {redact(settings.dsn)}: {one_line(e)}") from e


def usable(connection: Connection) -> bool:
    """Whether an idle connection may be handed out again (as far as can
    be told without a round trip)."""
    return (not connection.closed and not connection.broken
            and connection.info.transaction_status == TransactionStatus.IDLE)


def close_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        connection.close()


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """
    Turn a database failure inside the block into a L{TemporaryFailure}
    saying C{what} failed and why, in one line.  A missing table is said
    as what it means: the schema was never created.
    """
    try:
        yield
    except pg_errors.UndefinedTable as e:
        raise TemporaryFailure(f"{what}: the database has no popgate schema "
                               f"(run popgate db init): {one_line(e)}") from e
    except psycopg.Error as e:
        raise TemporaryFailure(f"{what}: {one_line(e)}") from e


class ConnectionPool:
    """
    At most C{size} connections out at once (unless not C{bounded}), the
    idle ones kept (C{size} at most) for the next job.

    @param opener: makes a new connection (L{connect}, bound to settings).
    @param wait: seconds L{get} waits for a connection to come back when
        C{size} are out, before it gives up with L{TemporaryFailure}.
    @param bounded: C{False} for the session connections: one per open
        session, however many (the POP3 side limits sessions); the pool
        then only keeps idle ones for reuse.
    """

    def __init__(self, opener: Callable[[], Connection], size: int, wait: float,
                 bounded: bool = True) -> None:
        self._opener = opener
        self.size = size
        self._wait = wait
        self._bounded = bounded
        self._idle: list[Connection] = []
        self._out = 0
        self._closed = False
        self._changed = threading.Condition()

    @property
    def busy(self) -> int:
        """Connections handed out now."""
        return self._out

    @property
    def idle(self) -> int:
        """Connections kept for reuse now."""
        return len(self._idle)

    def get(self) -> tuple[Connection, bool]:
        """
        A connection, and whether it was reused (kept idle since an
        earlier job, so perhaps dead without knowing it).

        @raise TemporaryFailure: none free within C{wait} seconds, or a
            new one could not be opened.
        """
        deadline = time.monotonic() + self._wait
        with self._changed:
            while True:
                while self._idle:
                    connection = self._idle.pop()
                    if usable(connection):
                        self._out += 1
                        return connection, True
                    close_quietly(connection)
                if not self._bounded or self._out < self.size:
                    self._out += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TemporaryFailure(f"all {self.size} database connections busy "
                                           f"for {self._wait:g}s")
                self._changed.wait(left)
        try:
            return self._opener(), False
        except BaseException:
            self._gone()
            raise

    def get_idle(self) -> Connection | None:
        """A kept connection, if one is idle (never waits: callable from
        the reactor thread), counted out like L{get}'s."""
        with self._changed:
            while self._idle:
                connection = self._idle.pop()
                if usable(connection):
                    self._out += 1
                    return connection
                close_quietly(connection)
        return None

    def open(self) -> Connection:
        """A new connection, counted out (unbounded pools only).  Blocking.

        @raise TemporaryFailure: it could not be opened.
        """
        assert not self._bounded
        with self._changed:
            self._out += 1
        try:
            return self._opener()
        except BaseException:
            self._gone()
            raise

    def put(self, connection: Connection, keep: bool = True) -> None:
        """Give C{connection} back: kept for reuse if C{keep} and it is
        still usable, else closed."""
        keep = keep and not self._closed and usable(connection)
        with self._changed:
            kept = keep and len(self._idle) < self.size
            if kept:
                self._idle.append(connection)
            self._out -= 1
            self._changed.notify()
        if not kept:
            close_quietly(connection)

    def _gone(self) -> None:
        with self._changed:
            self._out -= 1
            self._changed.notify()

    def take(self, job: Callable[[Connection], T]) -> tuple[T, Connection]:
        """
        C{job(connection)} on a pooled connection that stays out: the
        result and the connection, which the caller L{put}s back.  Run
        once more on a new connection if a reused one was found dead (a
        job that dies there had not committed, so it may run again; a
        connection dying during the C{COMMIT} itself leaves it unknown,
        and a delivery is then stored twice rather than never).  A job
        that fails otherwise puts its connection back (discarded if it
        left it broken or in a transaction).

        @raise psycopg.Error: what the job raised (callers wrap this in
            L{translated}).
        """
        connection, reused = self.get()
        try:
            return job(connection), connection
        except psycopg.OperationalError:
            dead = connection.broken or connection.closed
            self.put(connection, keep=False)
            if not (reused and dead):
                raise
        except BaseException:
            self.put(connection)
            raise
        # The reused connection had died while idle, and so, most likely,
        # had the other idle ones (a restart): once more, on a new one.
        self.discard_idle()
        connection, _ = self.get()
        try:
            return job(connection), connection
        except BaseException:
            self.put(connection, keep=not (connection.broken or connection.closed))
            raise

    def run(self, job: Callable[[Connection], T]) -> T:
        """L{take}, and the connection put back at once."""
        result, connection = self.take(job)
        self.put(connection)
        return result

    def discard_idle(self) -> None:
        """Close the idle connections (found dead: the server restarted)."""
        with self._changed:
            idle, self._idle = self._idle, []
        for connection in idle:
            close_quietly(connection)

    def close(self) -> None:
        """Close the idle connections; the ones out are closed as they
        come back."""
        self._closed = True
        self.discard_idle()
