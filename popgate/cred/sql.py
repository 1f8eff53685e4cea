"""
A SQL user store: sqlite3, PostgreSQL (psycopg 3) or MySQL/MariaDB (PyMySQL)
queried for a password hash through L{twisted.enterprise.adbapi}.

Queries are written once, with C{%(user)s}, C{%(localpart)s} and
C{%(domain)s} placeholders whatever the driver; they become bound
parameters in the driver's own style, so a user name is never pasted into
SQL text.  Write C{%%} for a literal C{%}.

Failures are split as in the LDAP store: a wrong password, an unknown user,
a row with no usable password, several rows or a password in a scheme
popgate cannot check (logged as a configuration error) are all
L{UnauthorizedLogin}, so a client cannot tell them apart; a database that
is down, slow or rejects the query is L{TemporaryFailure}, so clients retry
instead of telling users their password is wrong.  Unknown users cost a
password check too, against a hash seen in the same database, so timing
does not tell which users exist.

The pool uses C{cp_reconnect}; in addition a query that fails on a dead
pooled connection (database restarted, idle connection killed) is retried
once on a fresh one, so a restart costs no failed logins.

The user's name (and so their mailbox) is the database's spelling when the
query returns a column named C{user} (C{SELECT password, userid AS user},
as Dovecot's C{user} field): under MySQL's case-insensitive collations a
login as C{BOB} then is C{bob}, as a recipient C{Bob} is.  Without that
column the name is the one given.  The domain is lower-cased before the
query either way (L{popgate.cred.names}).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.cred import schemes
from popgate.cred.names import normalize_user
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.errors import TemporaryFailure
from popgate.interfaces import IUserLookup

__all__ = [
    "DEFAULT_QUERY",
    "PLACEHOLDERS",
    "SQLChecker",
    "compile_query",
    "make_checker",
    "parse_args",
]

DEFAULT_QUERY = "SELECT password, userid AS user FROM users WHERE userid = %(user)s"
#: A result column of this name (any case) is the user's stored name.
USER_COLUMN = "user"
PLACEHOLDERS = ("user", "localpart", "domain")
DEFAULT_TIMEOUT = 5.0
MAX_USER_LENGTH = 320

_KEYS = ("dsn", "query", "user_query", "scheme", "pool_min", "pool_max", "timeout")
_SPLIT = re.compile(r",\s*(?=(?:%s)\s*=)" % "|".join(_KEYS))
_TOKEN = re.compile(r"%\((\w*)\)s|%%|%")
_STRAY_KEY = re.compile(r",\s*(\w+)\s*=")


@dataclass(frozen=True)
class _Driver:
    module: str
    paramstyle: str  # "named" (:user) or "pyformat" (%(user)s)
    install: str


_DRIVERS = {
    "sqlite": _Driver("sqlite3", "named", "the Python standard library"),
    "postgresql": _Driver("psycopg", "pyformat", "pip install 'psycopg[binary]'"),
    "mysql": _Driver("pymysql", "pyformat", "pip install pymysql"),
}
_SCHEME_ALIASES = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


@dataclass(frozen=True)
class _Query:
    """A query rewritten for one driver, and the placeholders it uses."""

    text: str
    names: tuple[str, ...]

    def params(self, name: str) -> dict[str, str]:
        localpart, at, domain = name.rpartition("@")
        if not at:
            localpart, domain = name, ""
        values = {"user": name, "localpart": localpart, "domain": domain}
        return {key: values[key] for key in self.names}


@dataclass(frozen=True)
class _Row:
    """
    One result row: its columns but the C{user} one, in order (password,
    mail location), and the C{user} column's value if the query has one.
    """

    columns: tuple[Any, ...]
    user: Any = None
    has_user: bool = False


def _rows(description: Any, fetched: list[Any]) -> list[_Row]:
    names = [str(column[0]).lower() for column in description or ()]
    if USER_COLUMN not in names:
        return [_Row(tuple(row)) for row in fetched]
    i = names.index(USER_COLUMN)
    return [_Row(tuple(row[:i]) + tuple(row[i + 1:]), row[i], True) for row in fetched]


def compile_query(query: str, paramstyle: str) -> _Query:
    """
    Rewrite C{%(user)s}-style placeholders for a driver's C{paramstyle}
    (C{named} for sqlite3, C{pyformat} for psycopg and PyMySQL).

    @raise ValueError: an unknown placeholder, a lone C{%}, or no
        placeholder at all (every user would get the same row).
    """
    names: list[str] = []

    def rewrite(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%%":
            return "%" if paramstyle == "named" else "%%"
        name = match.group(1)
        if name is None:
            raise ValueError(f"sql: lone % at offset {match.start()} in query (write %% for a literal %)")
        if name not in PLACEHOLDERS:
            raise ValueError(f"sql: unknown placeholder %({name})s; use %(user)s, %(localpart)s or %(domain)s")
        if name not in names:
            names.append(name)
        return f":{name}" if paramstyle == "named" else token

    text = _TOKEN.sub(rewrite, query)
    if not names:
        raise ValueError("sql: the query must use %(user)s, %(localpart)s or %(domain)s")
    return _Query(text, tuple(names))


def parse_args(argstring: str) -> dict[str, Any]:
    """
    Parse C{dsn=...[,query=...][,user_query=...][,scheme=...][,pool_min=1]
    [,pool_max=4][,timeout=5]} into L{SQLChecker} keyword arguments.

    Only the known keys split the string, so queries keep their commas.

    @raise ValueError: with a one-line reason.
    """
    args: dict[str, str] = {}
    argstring = argstring.strip()
    for item in _SPLIT.split(argstring) if argstring else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS:
            raise ValueError(f"sql: expected one of {', '.join(k + '=' for k in _KEYS)} but got {item[:40]!r}")
        if key in args:
            raise ValueError(f"sql: {key}= given twice")
        if key not in ("query", "user_query"):
            stray = _STRAY_KEY.search(value)
            if stray:
                raise ValueError(f"sql: unknown key {stray.group(1)}=")
        args[key] = value.strip()
    if not args.get("dsn"):
        raise ValueError("sql: dsn= is required")
    kwargs: dict[str, Any] = {"dsn": args["dsn"]}
    if args.get("query"):
        kwargs["query"] = args["query"]
    if args.get("user_query"):
        kwargs["user_query"] = args["user_query"]
    if args.get("scheme"):
        kwargs["default_scheme"] = args["scheme"]
    for key in ("pool_min", "pool_max"):
        if key in args:
            kwargs[key] = _number(key, args[key], int)
    if "timeout" in args:
        kwargs["timeout"] = _number("timeout", args["timeout"], float)
    return kwargs


def make_checker(argstring: str) -> SQLChecker:
    """The C{sql:} checker factory's entry point (see the dropin)."""
    return SQLChecker(**parse_args(argstring))


def _number(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"sql: {key}= must be a number, got {text[:20]!r}") from None


def _redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _connect_args(kind: str, dsn: str, timeout: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The DB-API C{connect()} arguments for a DSN."""
    parts = urlsplit(dsn)
    if kind == "sqlite":
        path = unquote(parts.netloc + parts.path)
        if not path or path.lstrip("/") == ":memory:" or parts.query:
            raise ValueError("sql: write sqlite:///path/to/users.db (a file, no options)")
        # Read-only: a typo in the path must not create an empty database.
        uri = "file:" + quote(path) + "?mode=ro"
        return (uri,), {"uri": True, "check_same_thread": False, "timeout": timeout}
    if kind == "postgresql":
        if not parts.path.strip("/") and "dbname" not in parts.query:
            raise ValueError("sql: the PostgreSQL DSN needs a database: postgresql://user@host:port/db")
        # libpq parses the URI itself (sslmode=, options=, ...).
        return (dsn,), {"autocommit": True, "connect_timeout": max(2, math.ceil(timeout))}
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"unix_socket", "charset"}
    if unknown:
        raise ValueError(f"sql: unknown MySQL DSN option {sorted(unknown)[0]}")
    database = unquote(parts.path.strip("/"))
    if not database:
        raise ValueError("sql: the MySQL DSN needs a database: mysql://user:pw@host:port/db")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError("sql: bad port in the MySQL DSN") from None
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


def _text(value: Any) -> str | None:
    """A column value as text (drivers return str, bytes or memoryview)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"a {type(value).__name__} column")


@implementer(ICredentialsChecker, IUserLookup)
class SQLChecker:
    """
    Check passwords against a SQL table; look users up for delivery.

    The password query returns the stored password (C{{SCHEME}hash}, a bare
    crypt string, or a bare value in C{default_scheme}) in its first column
    and, optionally, the mail location in the second.  C{user_query} serves
    L{lookup_user} (default: the password query); its first row means "the
    user exists", its second column is the mail location.  In either, a
    column named C{user} is the user's stored name (not counted in the
    positions above).

    APOP (L{IUsernameHashedPassword}) only succeeds for C{{PLAIN}} /
    C{{CLEARTEXT}} passwords: it needs the secret itself.

    @param dsn: C{sqlite:///path}, C{postgresql://user@host:port/db} or
        C{mysql://user:pw@host:port/db}.
    @param timeout: seconds for connecting and for one query; also the
        overall limit after which a login gets L{TemporaryFailure}.
    @param reactor: provides time and threads; the global reactor when
        omitted.
    @raise ValueError: with a one-line reason for a bad configuration.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    log = Logger()

    def __init__(
        self,
        dsn: str,
        query: str = DEFAULT_QUERY,
        user_query: str | None = None,
        *,
        default_scheme: str | None = None,
        pool_min: int = 1,
        pool_max: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        reactor: Any = None,
    ) -> None:
        kind = _SCHEME_ALIASES.get(urlsplit(dsn).scheme.lower())
        if kind is None:
            raise ValueError("sql: dsn= must start with sqlite:, postgresql: or mysql:")
        if not 1 <= pool_min <= pool_max:
            raise ValueError("sql: need 1 <= pool_min <= pool_max")
        if not timeout > 0:
            raise ValueError("sql: timeout= must be positive")
        driver = _DRIVERS[kind]
        if importlib.util.find_spec(driver.module) is None:
            raise ValueError(f"sql: the {driver.module} module is missing ({driver.install})")
        if default_scheme is not None:
            try:
                schemes.verify_password(b"", "x", default_scheme=default_scheme)
            except schemes.UnknownScheme:
                raise ValueError(f"sql: unknown scheme= {default_scheme[:40]!r}") from None
        self.dsn = dsn
        self.default_scheme = default_scheme
        self.timeout = timeout
        self._kind = kind
        self._driver = driver
        self._connargs, self._connkw = _connect_args(kind, dsn, timeout)
        self._pool_size = (pool_min, pool_max)
        self._auth_query = compile_query(query, driver.paramstyle)
        self._user_query = compile_query(user_query or query, driver.paramstyle)
        self._reactor = reactor
        self._pool: Any = None
        self._dbapi: Any = None
        # A hash from this database, checked for unknown users so they cost
        # what real ones do.  Starts as schemes' bcrypt dummy.
        self._representative = schemes.DUMMY_HASH
        self._hinted_user_column = False

    # -- ICredentialsChecker ----------------------------------------------

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:
        name = self._user_name(credentials.username)
        if name is None:
            self.log.info("sql: refused a malformed user name")
            return self._refuse(credentials)
        d = self._fetch(self._auth_query, name)
        d.addCallback(self._check, credentials, name)
        return d

    # -- IUserLookup -------------------------------------------------------

    def lookup_user(self, name: str) -> defer.Deferred[UserInfo | None]:
        """The user and their mail location, or C{None} if there is none."""
        checked = self._user_name(name)
        if checked is None:
            return defer.succeed(None)

        def found(rows: list[_Row]) -> UserInfo | None:
            if not rows:
                return None
            if len(rows) > 1:
                self.log.error("sql: configuration error: user_query returns several rows for {user!r}", user=checked)
                raise TemporaryFailure("user_query returns several rows")
            return UserInfo(self._canonical(rows[0], checked), self._mail_location(rows[0], checked))

        return self._fetch(self._user_query, checked).addCallback(found)

    def close(self) -> None:
        """Close the pool's connections (call from the reactor thread)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    # -- checking ----------------------------------------------------------

    def _check(self, rows: list[_Row], credentials: Any, name: str) -> Any:
        if not rows:
            self.log.info("sql: unknown user {user!r}", user=name)
            return self._refuse(credentials)
        if len(rows) > 1:
            self.log.error("sql: configuration error: the query returns several rows for {user!r}", user=name)
            return self._refuse(credentials)
        try:
            stored = _text(rows[0].columns[0]) if rows[0].columns else None
        except (TypeError, UnicodeDecodeError) as e:
            self.log.error("sql: configuration error: unreadable password for {user!r}: {error}", user=name, error=e)
            return self._refuse(credentials)
        if not stored:
            self.log.info("sql: user {user!r} has no password", user=name)
            return self._refuse(credentials)
        name = AvatarId(self._canonical(rows[0], name), self._mail_location(rows[0], name))
        if IUsernamePassword.providedBy(credentials):
            return self._verify(credentials, stored, name)
        if IUsernameHashedPassword.providedBy(credentials):
            secret = schemes.plaintext_secret(stored, default_scheme=self.default_scheme)
            if secret is None:
                self.log.info("sql: APOP for {user!r} needs a {{PLAIN}} password", user=name)
                raise UnauthorizedLogin()
            if credentials.checkPassword(secret):
                return name
            self.log.info("sql: wrong APOP digest for {user!r}", user=name)
            raise UnauthorizedLogin()
        raise UnauthorizedLogin()

    def _verify(self, credentials: Any, stored: str, name: str) -> defer.Deferred[str]:
        def verified(ok: bool) -> str:
            # The scheme is checkable: let unknown users cost what this did.
            if schemes.plaintext_secret(stored, default_scheme=self.default_scheme) is None:
                self._representative = stored
            else:
                # Never keep a clear-text password around; a random one costs the same.
                self._representative = "{PLAIN}" + secrets.token_hex(8)
            if not ok:
                self.log.info("sql: wrong password for {user!r}", user=name)
                raise UnauthorizedLogin()
            return name

        def config_error(failure: Failure) -> None:
            failure.trap(schemes.UnknownScheme)
            self.log.error(
                "sql: configuration error: the password of {user!r} cannot be checked: {error}",
                user=name,
                error=failure.value,
            )
            raise UnauthorizedLogin()

        d = schemes.verify_in_thread(
            self._get_reactor(), _password(credentials), stored, default_scheme=self.default_scheme
        )
        return d.addCallbacks(verified, config_error)

    def _refuse(self, credentials: Any) -> defer.Deferred[Any]:
        """Fail with L{UnauthorizedLogin} after the time a real check takes."""
        if not IUsernamePassword.providedBy(credentials):
            return defer.fail(UnauthorizedLogin())
        d = schemes.verify_in_thread(
            self._get_reactor(), _password(credentials), self._representative, default_scheme=self.default_scheme
        )

        def refuse(_: object) -> None:
            raise UnauthorizedLogin()

        return d.addBoth(refuse)

    def _canonical(self, row: _Row, name: str) -> str:
        """The name as the C{user} column spells it, else C{name}."""
        if not row.has_user:
            if self._kind == "mysql" and not self._hinted_user_column:
                self._hinted_user_column = True
                self.log.warn(
                    "sql: the query returns no `user` column, so users are named as they type: "
                    "under MySQL's case-insensitive collations `Bob` and `bob` would get two "
                    "mailboxes (add `userid AS user` to the query)")
            return name
        try:
            stored = _text(row.user)
        except (TypeError, UnicodeDecodeError):
            stored = None
        canonical = self._user_name(stored) if stored else None
        if canonical is None:
            self.log.error("sql: configuration error: the user column holds no usable name for {user!r}", user=name)
            return name
        return canonical

    def _mail_location(self, row: _Row, name: str) -> str | None:
        if len(row.columns) < 2:
            return None
        try:
            return _text(row.columns[1]) or None
        except (TypeError, UnicodeDecodeError) as e:
            self.log.error("sql: configuration error: unreadable mail location for {user!r}: {error}", user=name, error=e)
            return None

    @staticmethod
    def _user_name(raw: bytes | str) -> str | None:
        """
        The user name as text, domain lower-cased, or C{None} if it cannot
        name a user.
        """
        try:
            name = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            return None
        if not 0 < len(name) <= MAX_USER_LENGTH or not name.isprintable() or name != name.strip():
            # Control characters, NUL (PostgreSQL would reject it as a query
            # error, i.e. a temporary failure) and padding (MySQL ignores
            # trailing spaces when comparing) never name a user.
            return None
        return normalize_user(name)

    # -- the database ------------------------------------------------------

    def _fetch(self, query: _Query, name: str) -> defer.Deferred[list[_Row]]:
        """Up to two rows of C{query} for C{name}; database trouble is L{TemporaryFailure}."""
        try:
            pool = self._get_pool()
        except Exception as e:
            self.log.error("sql: cannot open {dsn}: {error}", dsn=_redact(self.dsn), error=e)
            return defer.fail(TemporaryFailure(f"user database unavailable: {e}"))
        d = pool.runWithConnection(self._select, query.text, query.params(name))
        d.addTimeout(self.timeout, self._get_reactor())

        def fetched(result: tuple[list[_Row], bool]) -> list[_Row]:
            rows, reconnected = result
            if reconnected:
                self.log.info("sql: reconnected to {dsn}", dsn=_redact(self.dsn))
            return rows

        def failed(failure: Failure) -> None:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                error: object = f"no answer within {self.timeout:g}s"
            else:
                error = f"{failure.type.__name__}: {str(failure.value).strip()}"
            self.log.error("sql: query for {user!r} on {dsn} failed: {error}", user=name, dsn=_redact(self.dsn), error=error)
            raise TemporaryFailure(f"user database unavailable: {error}")

        return d.addCallbacks(fetched, failed)

    def _select(self, conn: Any, text: str, params: dict[str, str]) -> tuple[list[_Row], bool]:
        """
        Run in a pool thread.  If the query fails because the pooled
        connection died, reconnect and retry once.
        """
        started = time.monotonic()
        try:
            return self._execute(conn, text, params), False
        except (self._dbapi.OperationalError, self._dbapi.InterfaceError):
            if time.monotonic() - started >= self.timeout or self._alive(conn):
                raise
        conn.reconnect()
        return self._execute(conn, text, params), True

    @staticmethod
    def _execute(conn: Any, text: str, params: dict[str, str] | None) -> list[_Row]:
        cursor = conn.cursor()
        try:
            if params is None:
                cursor.execute(text)
            else:
                cursor.execute(text, params)
            return _rows(cursor.description, list(cursor.fetchmany(2)))
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            SQLChecker._execute(conn, "SELECT 1", None)
        except Exception:
            return False
        return True

    def _get_pool(self) -> Any:
        if self._pool is None:
            from twisted.enterprise import adbapi

            self._dbapi = importlib.import_module(self._driver.module)
            self._pool = adbapi.ConnectionPool(
                self._driver.module,
                *self._connargs,
                cp_min=self._pool_size[0],
                cp_max=self._pool_size[1],
                cp_reconnect=True,
                cp_reactor=self._get_reactor(),
                cp_openfun=self._on_connect,
                **self._connkw,
            )
        return self._pool

    def _on_connect(self, conn: Any) -> None:
        if self._kind == "postgresql":
            # An integer, so formatting it into the statement is safe (SET
            # takes no bound parameters).
            conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor


def _password(credentials: Any) -> bytes:
    password = credentials.password
    return password.encode("utf-8") if isinstance(password, str) else password
