"""
The user database behind L{twisted.enterprise.adbapi}: a pool of
connections, one query at a time per connection, in the pool's threads.

The pool uses C{cp_reconnect}; in addition a query that fails on a dead
pooled connection (database restarted, idle connection killed) is retried
once on a fresh one, so a restart costs no failed logins.  Anything else
that goes wrong (down, slow, a query the database rejects) is
L{TemporaryFailure}, logged once per query with its reason.

The pool is opened at the first query and closed by adbapi itself when the
reactor shuts down.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any, NoReturn

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate.cred.sql_query import Query, Row, rows
from popgate.cred.sql_settings import Driver, redact
from popgate.errors import TemporaryFailure

__all__ = ["Database"]


class Database:
    """
    @param connect: the driver's C{connect()} arguments (positional, keyword).
    @param timeout: seconds for one query, and for connecting.
    """

    log = Logger()

    def __init__(
        self,
        driver: Driver,
        dsn: str,
        connect: tuple[tuple[Any, ...], dict[str, Any]],
        pool_size: tuple[int, int],
        timeout: float,
        reactor: Any,
    ) -> None:
        self.driver = driver
        self.dsn = dsn
        self.timeout = timeout
        self._connect = connect
        self._pool_size = pool_size
        self._reactor = reactor
        self.pool: adbapi.ConnectionPool | None = None
        self._dbapi: Any = None

    def fetch(self, query: Query, name: str, quiet: bool = False) -> defer.Deferred[list[Row]]:
        """
        Up to two rows of C{query} for the user C{name}.

        @param quiet: log nothing (a probe reports the failure itself).
        """
        try:
            pool = self._get_pool()
        except Exception as e:
            if not quiet:
                self.log.error("sql: cannot open {dsn}: {error}", dsn=redact(self.dsn), error=e)
            return defer.fail(TemporaryFailure(f"user database unavailable: {e}"))
        d: defer.Deferred[tuple[list[Row], bool]] = pool.runWithConnection(
            self._select, query.text, query.params(name))
        d.addTimeout(self.timeout, self._reactor)

        def fetched(result: tuple[list[Row], bool]) -> list[Row]:
            found, reconnected = result
            if reconnected:
                self.log.info("sql: reconnected to {dsn}", dsn=redact(self.dsn))
            return found

        def failed(failure: Failure) -> NoReturn:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                error: object = f"no answer within {self.timeout:g}s"
            else:
                # One line: libpq's messages have a hint on a line of their own.
                text = " ".join(str(failure.value).split())
                error = f"{failure.type.__name__}: {text}"  # type: ignore[union-attr]
            if not quiet:
                self.log.error(
                    "sql: query for {user!r} on {dsn} failed: {error}",
                    user=name, dsn=redact(self.dsn), error=error,
                )
            raise TemporaryFailure(f"user database unavailable: {error}")

        return d.addCallbacks(fetched, failed)

    # -- in a pool thread --

    def _select(self, conn: Any, text: str, params: dict[str, str]) -> tuple[list[Row], bool]:
        """If the query fails because the pooled connection died, reconnect and retry once."""
        started = time.monotonic()
        try:
            return self._execute(conn, text, params), False
        except (self._dbapi.OperationalError, self._dbapi.InterfaceError):
            if time.monotonic() - started >= self.timeout or self._alive(conn):
                raise
        conn.reconnect()
        return self._execute(conn, text, params), True

    @staticmethod
    def _execute(conn: Any, text: str, params: dict[str, str] | None) -> list[Row]:
        cursor = conn.cursor()
        try:
            if params is None:
                cursor.execute(text)
            else:
                cursor.execute(text, params)
            return rows(cursor.description, list(cursor.fetchmany(2)))
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    @classmethod
    def _alive(cls, conn: Any) -> bool:
        try:
            cls._execute(conn, "SELECT 1", None)
        except Exception:
            return False
        return True

    def _on_connect(self, conn: Any) -> None:
        if self.driver.kind == "postgresql":
            # An integer, so formatting it into the statement is safe (SET
            # takes no bound parameters).
            conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")

    # -- on the reactor thread --

    def _get_pool(self) -> adbapi.ConnectionPool:
        if self.pool is None:
            self._dbapi = importlib.import_module(self.driver.module)
            args, kwargs = self._connect
            self.pool = adbapi.ConnectionPool(
                self.driver.module,
                *args,
                cp_min=self._pool_size[0],
                cp_max=self._pool_size[1],
                cp_reconnect=True,
                cp_reactor=self._reactor,
                cp_openfun=self._on_connect,
                **kwargs,
            )
        return self.pool
