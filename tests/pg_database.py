"""
Throwaway PostgreSQL databases: one per test (or per module), created on
the server C{POPGATE_PG_DSN} names (the machine's by default) and dropped
afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

from tests.services import need

#: The server and a database to connect to for CREATE/DROP DATABASE.
PG_SERVER = os.environ.get("POPGATE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def throwaway_database(prefix: str = "popgate_test") -> Iterator[str]:
    """A new, empty database; its DSN.  Skips (with the reason) when
    PostgreSQL cannot be reached."""
    import psycopg

    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        need(False, f"PostgreSQL unreachable at {PG_SERVER} (set POPGATE_PG_DSN): {e}")
        raise
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield PG_SERVER.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
