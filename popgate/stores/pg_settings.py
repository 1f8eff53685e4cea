"""
The C{postgresql:} store's argument string, and what it makes of it: the
libpq connection parameters of every connection the store opens.

Every connection gets TCP keepalives on both ends, because a POP3
session's maildrop lock is a session-level advisory lock held by one
connection for the whole session (L{popgate.stores.postgresql}):

  - on popgate's end (libpq's C{keepalives}, C{keepalives_idle},
    C{keepalives_interval}, C{keepalives_count}, C{tcp_user_timeout}), so
    a node whose PostgreSQL went away (a crashed host, a partition) sees
    its sessions fail instead of waiting on a dead socket for the kernel's
    two hours;
  - on the server's end (the same settings as the session's
    C{tcp_keepalives_*} and C{tcp_user_timeout} parameters, sent in the
    startup packet's C{options}), so the server ends the backend of a
    node that died without closing its socket (power loss, a partition),
    and the lock goes with it, within C{keepalive_idle + keepalive_interval
    * keepalive_count} seconds (25 by default), or C{user_timeout} (30)
    when data is waiting to be acknowledged.  A node whose process dies
    but whose kernel lives closes the socket at once: the lock goes at
    once.

Keepalives do not apply to a Unix-socket DSN (the host is local: a dead
node there is a dead server too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from popgate.cred.args import ArgSpec

__all__ = ["ARGS", "PGSettings", "parse_args"]

ARGS = ArgSpec(
    "postgresql",
    {
        "dsn": "postgresql://USER@HOST:PORT/DB[?sslmode=...] (a libpq URI; put the password "
               "in ~/.pgpass or PGPASSFILE rather than here).",
        "pool_size": "Connections kept for deliveries, besides one per open POP3 session "
                     "(default: 4).",
        "idle_sessions": "Session connections kept open, idle, for the next logins (default: "
                         "16): a login on a kept one costs one round trip, a new one a "
                         "PostgreSQL backend's start.",
        "connect_timeout": "Seconds to connect, and to wait for a free pooled connection "
                           "(default: 5).",
        "query_timeout": "Seconds one statement may run: the server's statement_timeout "
                         "(default: 30).",
        "keepalive_idle": "Seconds of silence before the first TCP keepalive probe, on both "
                          "ends (default: 10).",
        "keepalive_interval": "Seconds between keepalive probes (default: 5).",
        "keepalive_count": "Probes unanswered before the connection is dead (default: 3).",
        "user_timeout": "Seconds sent data may stay unacknowledged before the connection is "
                        "dead: TCP_USER_TIMEOUT, on both ends (default: 30).",
    },
    required=("dsn",),
)


@dataclass(frozen=True)
class PGSettings:
    """What the argument string says, with its defaults."""

    dsn: str
    pool_size: int = 4
    idle_sessions: int = 16
    connect_timeout: float = 5.0
    query_timeout: float = 30.0
    keepalive_idle: int = 10
    keepalive_interval: int = 5
    keepalive_count: int = 3
    user_timeout: float = 30.0

    @property
    def dead_peer_bound(self) -> float:
        """Seconds after which a silent, dead peer's connection (and a
        dead node's maildrop lock) is gone, at most."""
        probes = self.keepalive_idle + self.keepalive_interval * self.keepalive_count
        return float(max(probes, self.user_timeout))

    def connect_kwargs(self) -> dict[str, Any]:
        """The C{psycopg.connect} keyword arguments (besides the DSN):
        libpq's keepalives for popgate's end, server parameters for the
        server's end (see the module docstring).  Given to psycopg beside
        the DSN, they override its own, except C{options}, merged."""
        user_ms = int(self.user_timeout * 1000)
        server = {
            "tcp_keepalives_idle": self.keepalive_idle,
            "tcp_keepalives_interval": self.keepalive_interval,
            "tcp_keepalives_count": self.keepalive_count,
            "tcp_user_timeout": user_ms,
            "statement_timeout": int(self.query_timeout * 1000),
        }
        # Server parameters the DSN sets itself (?options=-c ...) come after
        # popgate's, so they win.
        given = parse_qs(urlsplit(self.dsn).query).get("options", [])
        options = " ".join([f"-c {key}={value}" for key, value in server.items()] + given)
        return {
            "autocommit": True,
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle,
            "keepalives_interval": self.keepalive_interval,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": user_ms,
            "fallback_application_name": "popgate",
            "options": options,
        }


def parse_args(argstring: str) -> PGSettings:
    """
    C{dsn=postgresql://...[,pool_size=4][,idle_sessions=16][,connect_timeout=5]
    [,query_timeout=30][,keepalive_idle=10][,keepalive_interval=5]
    [,keepalive_count=3][,user_timeout=30]}.

    @raise ValueError: with a one-line reason.
    """
    args = ARGS.parse(argstring)
    dsn = args["dsn"]
    parts = urlsplit(dsn)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ARGS.error("dsn= must be a postgresql:// URI")
    if not parts.path.strip("/") and "dbname" not in parts.query:
        raise ARGS.error("the DSN needs a database: postgresql://user@host:port/db")
    settings = PGSettings(
        dsn=dsn,
        pool_size=args.number("pool_size", int, 4),
        idle_sessions=args.number("idle_sessions", int, 16),
        connect_timeout=args.number("connect_timeout", float, 5.0, unit="seconds"),
        query_timeout=args.number("query_timeout", float, 30.0, unit="seconds"),
        keepalive_idle=args.number("keepalive_idle", int, 10, unit="seconds"),
        keepalive_interval=args.number("keepalive_interval", int, 5, unit="seconds"),
        keepalive_count=args.number("keepalive_count", int, 3),
        user_timeout=args.number("user_timeout", float, 30.0, unit="seconds"),
    )
    if settings.pool_size < 1:
        raise ARGS.error("pool_size= must be at least 1")
    if settings.idle_sessions < 0:
        raise ARGS.error("idle_sessions= must be 0 or more")
    for key in ("connect_timeout", "query_timeout", "keepalive_idle", "keepalive_interval",
                "keepalive_count", "user_timeout"):
        if getattr(settings, key) <= 0:
            raise ARGS.error(f"{key}= must be more than 0")
    return settings
