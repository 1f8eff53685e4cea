"""
Routes from a SQL database: C{query}'s first column is the user's
upstream URL (C{SELECT upstream FROM users WHERE userid = %(user)s}), with
the placeholders, drivers and DSNs of the C{sql:} user store
(L{popgate.cred.sql_query}, L{popgate.cred.sql_settings}) and its pool
(L{popgate.cred.sql_database}: the queries run in the pool's threads,
never on the reactor; a database that is down, slow or rejects the query
is L{TemporaryFailure}).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from popgate.cred.args import ArgSpec
from popgate.cred.sql import checked_name
from popgate.cred.sql_database import Database
from popgate.cred.sql_query import compile_query
from popgate.cred.sql_settings import ARGS as USER_STORE_ARGS
from popgate.cred.sql_settings import DEFAULT_TIMEOUT, connect_args, driver_for, redact
from popgate.cred.text import StoredText
from popgate.errors import PermanentFailure

__all__ = ["ARGS", "SQLRoutes", "make_source"]

#: Who a probe asks for: a name no directory holds.
_PROBE_USER = "popgate-probe@invalid"

ARGS = ArgSpec(
    "sql",
    {"dsn": USER_STORE_ARGS.help["dsn"],
     "query": "The route query: the user's upstream URL in the first column (no row, or "
              "NULL: no route); %(user)s, %(localpart)s, %(domain)s are bound parameters.",
     "pool_min": USER_STORE_ARGS.help["pool_min"],
     "pool_max": USER_STORE_ARGS.help["pool_max"],
     "timeout": USER_STORE_ARGS.help["timeout"]},
    free_text=("query",),
    required=("dsn", "query"),
)


class SQLRoutes:
    """The first column of C{query}'s one row for the user."""

    log = Logger()

    def __init__(self, dsn: str, query: str, reactor: Any, *, pool_min: int = 1,
                 pool_max: int = 4, timeout: float = DEFAULT_TIMEOUT) -> None:
        driver = driver_for(dsn)
        if not 1 <= pool_min <= pool_max:
            raise ARGS.error("need 1 <= pool_min <= pool_max")
        if not timeout > 0:
            raise ARGS.error("timeout= must be positive")
        if importlib.util.find_spec(driver.module) is None:
            raise ARGS.error(f"the {driver.module} module is missing ({driver.install})")
        self.dsn = dsn
        self._query = compile_query(query, driver.paramstyle)
        self.database = Database(driver, dsn, connect_args(driver.kind, dsn, timeout),
                                 (pool_min, pool_max), timeout, reactor)
        self._stored = StoredText(self.log, "route")

    def lookup(self, name: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._lookup(name))

    async def _lookup(self, name: str) -> str | None:
        user = checked_name(name)
        if user is None:
            return None
        rows = await self.database.fetch(self._query, user)
        if len(rows) > 1:  # the login's error line says so
            raise PermanentFailure(f"the route query returns several rows for {user}")
        if not rows or not rows[0].columns:
            return None
        return self._stored.decode(rows[0].columns[0], "the route", user) or None

    def probe(self) -> Deferred[str]:
        """Run the query for a user nobody has, logging nothing."""
        async def run() -> str:
            await self.database.fetch(self._query, _PROBE_USER, quiet=True)
            return f"{redact(self.dsn)}: the route query runs"

        return Deferred.fromCoroutine(run())


def make_source(argstring: str, reactor: Any) -> SQLRoutes:
    """C{--route sql:dsn=...,query=...[,pool_min=1][,pool_max=4][,timeout=5]}

    @raise ValueError: with a one-line reason."""
    args = ARGS.parse(argstring)
    return SQLRoutes(args["dsn"], args["query"], reactor,
                     pool_min=args.number("pool_min", int, 1),
                     pool_max=args.number("pool_max", int, 4),
                     timeout=args.number("timeout", float, DEFAULT_TIMEOUT, unit="seconds"))
