"""
The C{sql:} argument string and the DSN: which driver, and the arguments
its C{connect()} takes, checked at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from popgate.cred.args import ArgSpec

__all__ = ["DEFAULT_TIMEOUT", "Driver", "connect_args", "driver_for", "parse_args", "redact"]

DEFAULT_TIMEOUT = 5.0

ARGS = ArgSpec(
    "sql",
    {
        "dsn": "sqlite:///PATH (opened read-only), postgresql://USER@HOST:PORT/DB[?sslmode=...] "
               "(password in ~/.pgpass) or mysql://USER:PASSWORD@HOST:PORT/DB.",
        "query": "The password query: the stored password in the first column, the mail "
                 "location in an optional second, the stored name in an optional column "
                 "named user, the user's own LOGIN-DELAY and EXPIRE in optional columns "
                 "named login_delay and expire; %(user)s, %(localpart)s, %(domain)s are "
                 "bound parameters (default: SELECT password, userid AS user FROM users "
                 "WHERE userid = %(user)s).",
        "user_query": "The query that says whether a user exists, for delivery and "
                      "`popgate auth lookup`: a row means yes, the second column is the "
                      "mail location (default: query).",
        "scheme": "The scheme of a stored password with no {SCHEME} prefix and no $id$, "
                  "e.g. SHA256 (default: none: such passwords are refused).",
        "challenge": "yes or no: offer APOP and CRAM-MD5 for these users. They prove the "
                     "password without sending it, so they need it stored in clear "
                     "({PLAIN} or {CLEARTEXT}); with hashed passwords every such login "
                     "fails, and clients that try them first (fetchmail) fail each poll "
                     "(default: yes when scheme=PLAIN or CLEARTEXT, else no).",
        "scram": "yes, no, SCRAM-SHA-256 or SCRAM-SHA-1: offer AUTH SCRAM-SHA-256 and "
                 "SCRAM-SHA-1 (yes: both) for these users. They need the user's SCRAM keys "
                 "stored ({SCRAM-SHA-256}..., popgate pw -s SCRAM-SHA-256), not a hash; "
                 "clients that see SCRAM offered use it, and fail for users without keys "
                 "(default: the one scheme= names, else no).",
        "pool_min": "Connections kept open (default: 1).",
        "pool_max": "Connections at most (default: 4).",
        "timeout": f"Seconds for connecting and for each query (default: {DEFAULT_TIMEOUT:g}).",
    },
    free_text=("query", "user_query"),  # queries have commas and '='s of their own
    required=("dsn",),
)


@dataclass(frozen=True)
class Driver:
    kind: str  # sqlite, postgresql or mysql
    module: str
    paramstyle: str  # "named" (:user) or "pyformat" (%(user)s)
    install: str


_DRIVERS = {
    "sqlite": Driver("sqlite", "sqlite3", "named", "the Python standard library"),
    # popgate's "sql" extra brings both drivers.
    "postgresql": Driver("postgresql", "psycopg", "pyformat", "pip install 'popgate[sql]'"),
    "mysql": Driver("mysql", "pymysql", "pyformat", "pip install 'popgate[sql]'"),
}
_SCHEME_ALIASES = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def parse_args(argstring: str) -> dict[str, Any]:
    """
    Parse C{dsn=...[,query=...][,user_query=...][,scheme=...][,challenge=no][,scram=no]
    [,pool_min=1]
    [,pool_max=4][,timeout=5]} into L{popgate.cred.sql.SQLChecker} keyword
    arguments (see L{popgate.cred.args}: queries keep their commas).

    @raise ValueError: with a one-line reason.
    """
    args = ARGS.parse(argstring)
    kwargs: dict[str, Any] = {"dsn": args["dsn"]}
    renamed = (("query", "query"), ("user_query", "user_query"), ("scheme", "default_scheme"))
    for key, name in renamed:
        if args.text(key):
            kwargs[name] = args[key]
    if "challenge" in args:
        kwargs["challenge"] = args.yes_no("challenge")
    if "scram" in args:
        kwargs["scram_mechanisms"] = _scram(args["scram"])
    for key in ("pool_min", "pool_max"):
        if key in args:
            kwargs[key] = args.number(key, int, 0)
    if "timeout" in args:
        kwargs["timeout"] = args.number("timeout", float, DEFAULT_TIMEOUT)
    return kwargs


def _scram(value: str) -> frozenset[str]:
    """C{scram=}: yes (both), no (none), or one mechanism's name."""
    both = frozenset({"SCRAM-SHA-256", "SCRAM-SHA-1"})
    word = value.strip().upper()
    if word in both:
        return frozenset({word})
    if word in ("YES", "TRUE", "ON", "1"):
        return both
    if word in ("NO", "FALSE", "OFF", "0"):
        return frozenset()
    raise ARGS.error(f"scram= takes yes, no, SCRAM-SHA-256 or SCRAM-SHA-1, not {value[:40]!r}")


def driver_for(dsn: str) -> Driver:
    """The driver a DSN's scheme names."""
    kind = _SCHEME_ALIASES.get(urlsplit(dsn).scheme.lower())
    if kind is None:
        raise ARGS.error("dsn= must start with sqlite:, postgresql: or mysql:")
    return _DRIVERS[kind]


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def connect_args(kind: str, dsn: str, timeout: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The DB-API C{connect()} arguments for a DSN."""
    parts = urlsplit(dsn)
    if kind == "sqlite":
        path = unquote(parts.netloc + parts.path)
        if not path or path.lstrip("/") == ":memory:" or parts.query:
            raise ARGS.error("write sqlite:///path/to/users.db (a file, no options)")
        # Read-only: a typo in the path must not create an empty database.
        uri = "file:" + quote(path) + "?mode=ro"
        return (uri,), {"uri": True, "check_same_thread": False, "timeout": timeout}
    if kind == "postgresql":
        if not parts.path.strip("/") and "dbname" not in parts.query:
            raise ARGS.error("the PostgreSQL DSN needs a database: postgresql://user@host:port/db")
        # libpq parses the URI itself (sslmode=, options=, ...).
        return (dsn,), {"autocommit": True, "connect_timeout": max(2, math.ceil(timeout))}
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"unix_socket", "charset"}
    if unknown:
        raise ARGS.error(f"unknown MySQL DSN option {sorted(unknown)[0]}")
    database = unquote(parts.path.strip("/"))
    if not database:
        raise ARGS.error("the MySQL DSN needs a database: mysql://user:pw@host:port/db")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ARGS.error("bad port in the MySQL DSN") from None
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": database,
        "charset": options.get("charset", "utf8mb4"),
        "autocommit": True,
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "write_timeout": timeout,
    }
    if "unix_socket" in options:
        kwargs["unix_socket"] = options["unix_socket"]
    return (), kwargs
