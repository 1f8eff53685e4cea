"""
C{popgate db init|upgrade|status}: the PostgreSQL mail store's schema
(L{popgate.stores.pg_schema}), created or brought up to date from the
command line, before the servers use it.

The store (C{--store postgresql:...}, or the C{store} of a C{--config}
file) names the database.  Both commands are L{pg_schema.upgrade}:
versioned and idempotent, each step in its own transaction, nodes running
it at once serialised; they print the versions applied.  C{init} is for a
new database (and finishes a half-done one); C{upgrade} refuses a
database without the schema, so a wrong DSN does not quietly create
tables in the wrong database.  Errors are one line, exit status 1.

These run before any reactor: blocking is what a command does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.python import usage

from popgate import config, settings
from popgate.cred.sql_settings import redact
from popgate.optional import missing_library
from popgate.probes import one_line
from popgate.stores import pg_schema
from popgate.stores.pg_settings import parse_args

__all__ = ["add_subcommand", "run"]


def add_subcommand(subparsers: Any) -> None:
    """Register C{db} with the C{popgate} command."""
    p = subparsers.add_parser(
        "db", help="create or upgrade the PostgreSQL mail store's schema",
        description="Create (init) or upgrade the schema of the PostgreSQL mail store named "
                    "by --store postgresql:dsn=... or by the store of a --config file; "
                    "status prints its version.  Idempotent: what is there already is kept.")
    p.add_argument("action", choices=["init", "upgrade", "status"])
    p.add_argument("-c", "--config", help="popgate's TOML configuration file (its store)")
    p.add_argument("--store", help="the mail store, postgresql:dsn=...")
    p.set_defaults(func=run)


def _fail(message: object) -> int:
    sys.stderr.write(f"popgate db: {one_line(message)}\n")
    return 1


def _store_description(args: argparse.Namespace) -> str:
    """
    @raise ValueError: no store, or not a PostgreSQL one.
    """
    values = config.load(args.config) if args.config else {}
    store = settings.resolve({"store": args.store}, values).store
    if not store:
        raise ValueError("no mail store: give --store postgresql:dsn=... or --config FILE")
    kind, _, argstring = store.partition(":")
    if kind != "postgresql":
        raise ValueError(f"the {kind} mail store has no database schema "
                         "(popgate db is for --store postgresql:...)")
    return argstring


def run(args: argparse.Namespace) -> int:
    try:
        store_settings = parse_args(_store_description(args))
    except (ValueError, OSError, usage.UsageError) as e:
        return _fail(e)
    where = redact(store_settings.dsn)
    # Imported here: psycopg is an optional dependency (the sql extra), and
    # the popgate command must start without it.
    try:
        import psycopg
    except ImportError as e:
        return _fail(missing_library(e))
    try:
        connection = psycopg.connect(store_settings.dsn, **store_settings.connect_kwargs())
    except psycopg.Error as e:
        return _fail(f"cannot connect to {where}: {one_line(e)}")
    try:
        with connection:
            with connection.cursor() as cursor:
                have = pg_schema.current_version(cursor)
            if args.action == "status":
                state = ("no popgate schema (run popgate db init)" if have == 0 else
                         f"popgate schema version {have}"
                         + ("" if have >= pg_schema.VERSION
                            else f", {pg_schema.VERSION} available (run popgate db upgrade)"))
                print(f"{where}: {state}")
                return 0
            if args.action == "upgrade" and have == 0:
                return _fail(f"{where} has no popgate schema: run popgate db init")
            applied = pg_schema.upgrade(connection)
    except ValueError as e:  # a database newer than this popgate
        return _fail(f"{where}: {e}")
    except Exception as e:  # psycopg's errors: a permission, a lost connection
        return _fail(f"{where}: {type(e).__name__}: {one_line(e)}")
    if applied:
        versions = ", ".join(str(v) for v in applied)
        print(f"{where}: applied popgate schema version{'s' if len(applied) > 1 else ''} "
              f"{versions}; now at {pg_schema.VERSION}")
    else:
        print(f"{where}: popgate schema already at version {have}; nothing to do")
    return 0
