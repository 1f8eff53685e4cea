"""
popgate.cred.sql against real databases: sqlite3 (a temp file), PostgreSQL
(POPGATE_PG_DSN) and MariaDB/MySQL (POPGATE_MYSQL_DSN).  Each test makes its
own uniquely named table and drops it afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin

from popgate.cred import schemes, timing
from popgate.cred.sql import SQLChecker, compile_query, make_checker, parse_args
from popgate.cred.sql_query import Row
from popgate.cred.sql_settings import connect_args, redact
from popgate.cred.userinfo import UserInfo
from popgate.errors import TemporaryFailure
from popgate.pop3.apop import APOPCredentials
from tests.helpers import connect, make_portal
from tests.reactor_thread import run, start_reactor
from tests.services import need

PG_DSN = os.environ.get("POPGATE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("POPGATE_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")

PASSWORDS = {
    "alice": ("alice-pw", schemes.hash_password("alice-pw", "BLF-CRYPT", rounds=4)),
    "bob": ("bob-pw", schemes.hash_password("bob-pw", "SHA512-CRYPT", rounds=1000)),
    "carol": ("carol-pw", "{PLAIN}carol-pw"),
    "dave": ("dave-pw", schemes.hash_password("dave-pw", "SSHA")),
    "erin": ("erin-pw", "{NO-SUCH-SCHEME}erin-pw"),
    "frank": ("frank-pw", None),
    "bare": ("bare-pw", hashlib.sha256(b"bare-pw").hexdigest()),
}
MAILDIRS = {"alice": "/var/mail/alice", "carol": ""}


@dataclass
class Backend:
    """One database with a fresh users table."""

    kind: str
    dsn: str
    table: str
    execute: Callable[[str], list[tuple[Any, ...]]]
    checkers: list[SQLChecker] = field(default_factory=list)

    def checker(self, query: str | None = None, **kw: Any) -> SQLChecker:
        if query is None:
            query = f"SELECT password, maildir FROM {self.table} WHERE userid = %(user)s"
        checker = SQLChecker(self.dsn, query.replace("{table}", self.table), reactor=start_reactor(), **kw)
        self.checkers.append(checker)
        return checker

    def count(self) -> int:
        return int(self.execute(f"SELECT COUNT(*) FROM {self.table}")[0][0])


def _sqlite(tmp_path: Path) -> tuple[str, Callable[[str], list[tuple[Any, ...]]], Callable[[], None]]:
    path = tmp_path / "users.db"
    conn = sqlite3.connect(path, isolation_level=None)

    def execute(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    return f"sqlite://{path}", execute, conn.close


def _postgresql(_: Path) -> tuple[str, Callable[[str], list[tuple[Any, ...]]], Callable[[], None]]:
    import psycopg

    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        need(False, f"PostgreSQL unreachable at {redact(PG_DSN)} (set POPGATE_PG_DSN): {e}")
        raise

    def execute(sql: str) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []

    return PG_DSN, execute, conn.close


def _mysql(_: Path) -> tuple[str, Callable[[str], list[tuple[Any, ...]]], Callable[[], None]]:
    import pymysql

    args, kwargs = connect_args("mysql", MYSQL_DSN, 3)
    try:
        conn = pymysql.connect(*args, **kwargs)
    except pymysql.Error as e:
        need(False, f"MySQL/MariaDB unreachable at {redact(MYSQL_DSN)} (set POPGATE_MYSQL_DSN): {e}")
        raise

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    return MYSQL_DSN, execute, conn.close


_OPENERS = {"sqlite": _sqlite, "postgresql": _postgresql, "mysql": _mysql}


def _quote(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _make_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    dsn, execute, close = _OPENERS[kind](tmp_path)
    table = f"popgate_users_{secrets.token_hex(6)}"
    execute(f"CREATE TABLE {table} (userid VARCHAR(255) PRIMARY KEY, password VARCHAR(255), maildir VARCHAR(255))")
    for user, (_, stored) in PASSWORDS.items():
        execute(f"INSERT INTO {table} VALUES ({_quote(user)}, {_quote(stored)}, {_quote(MAILDIRS.get(user))})")
    backend = Backend(kind, dsn, table, execute)
    try:
        yield backend
    finally:
        for checker in backend.checkers:
            run(_close_pool, checker)
        execute(f"DROP TABLE IF EXISTS {table}")
        close()


def _close_pool(checker: SQLChecker) -> None:
    """Close the checker's connections (the reactor outlives each test)."""
    if checker.database.pool is not None:
        checker.database.pool.close()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request.param, tmp_path)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend("sqlite", tmp_path)


@pytest.fixture(params=["postgresql", "mysql"])
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request.param, tmp_path)


def login(checker: SQLChecker, user: str | bytes, password: str | bytes) -> Any:
    if isinstance(user, str):
        user = user.encode("utf-8")
    if isinstance(password, str):
        password = password.encode("utf-8")
    return run(checker.requestAvatarId, UsernamePassword(user, password))


def refused(checker: SQLChecker, user: str | bytes, password: str | bytes) -> bool:
    with pytest.raises(UnauthorizedLogin):
        login(checker, user, password)
    return True


# -- real databases ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("user", ["alice", "bob", "carol", "dave"])
def test_good_login(backend: Backend, user: str) -> None:
    checker = backend.checker()
    assert login(checker, user, PASSWORDS[user][0]) == user


@pytest.mark.integration
def test_wrong_password_unknown_user_and_unusable_rows(backend: Backend) -> None:
    checker = backend.checker()
    for user in ("alice", "bob", "carol", "dave"):
        assert refused(checker, user, "wrong")
    assert refused(checker, "nobody", "alice-pw")
    assert refused(checker, "erin", "erin-pw")  # unknown scheme: a logged config error
    assert refused(checker, "frank", "frank-pw")  # NULL password
    assert refused(checker, "bare", "bare-pw")  # no scheme and no scheme= option


@pytest.mark.integration
def test_default_scheme(backend: Backend) -> None:
    checker = backend.checker(default_scheme="SHA256.HEX")
    assert login(checker, "bare", "bare-pw") == "bare"
    assert login(checker, "alice", "alice-pw") == "alice"  # prefixed/crypt values still work


@pytest.mark.integration
def test_sql_injection_never_logs_in(backend: Backend) -> None:
    checker = backend.checker()
    before = backend.count()
    attempts = [
        "' OR '1'='1",
        "' OR userid='alice",
        "alice' -- ",
        "alice'#",
        "\\' OR 1=1 -- ",
        f"x'; DROP TABLE {backend.table}; --",
        "x'; DROP TABLE users; --",
        "alice\\",
    ]
    for name in attempts:
        for password in ("alice-pw", "' OR '1'='1"):
            assert refused(checker, name, password)
    assert backend.count() == before
    assert login(checker, "alice", "alice-pw") == "alice"


@pytest.mark.integration
def test_malformed_user_names_are_refused_without_a_query(backend: Backend) -> None:
    checker = backend.checker()
    for name in [b"alice\x00", b"\xff\xfe", b"alice ", b" alice", b"al\nice", b"", b"a" * 400]:
        assert refused(checker, name, "alice-pw")


@pytest.mark.integration
def test_lookup_user_with_mail_column(backend: Backend) -> None:
    checker = backend.checker()
    assert run(checker.lookup_user, "alice") == UserInfo("alice", "/var/mail/alice")
    assert run(checker.lookup_user, "bob") == UserInfo("bob", None)
    assert run(checker.lookup_user, "carol") == UserInfo("carol", None)  # empty string
    assert run(checker.lookup_user, "nobody") is None
    assert run(checker.lookup_user, "' OR '1'='1") is None
    assert run(checker.lookup_user, "bad\x00name") is None
    # The login's avatar id carries the same mail location, for the store.
    assert login(checker, "alice", "alice-pw").mail_location == "/var/mail/alice"


@pytest.mark.integration
def test_separate_user_query(backend: Backend) -> None:
    checker = backend.checker(
        f"SELECT password FROM {backend.table} WHERE userid = %(user)s",
        user_query=f"SELECT userid, maildir FROM {backend.table} WHERE userid = %(user)s AND password IS NULL",
    )
    assert run(checker.lookup_user, "frank") == UserInfo("frank", None)
    assert run(checker.lookup_user, "alice") is None
    assert login(checker, "alice", "alice-pw") == "alice"


@pytest.mark.integration
def test_localpart_domain_and_literal_percent(backend: Backend) -> None:
    checker = backend.checker(
        "SELECT password FROM {table} WHERE userid = %(localpart)s "
        "AND %(domain)s = 'example.org' AND (maildir IS NULL OR maildir NOT LIKE '%%nomatch%%')"
    )
    assert login(checker, "alice@example.org", "alice-pw") == "alice@example.org"
    assert refused(checker, "alice@example.net", "alice-pw")
    assert refused(checker, "alice", "alice-pw")


@pytest.mark.integration
def test_apop_needs_plain(backend: Backend) -> None:
    checker = backend.checker()
    challenge = b"<1896.697170952@example.org>"

    def apop(user: bytes, secret: bytes) -> Any:
        digest = hashlib.md5(challenge + secret).hexdigest().encode()
        return run(checker.requestAvatarId, APOPCredentials(challenge, user, digest))

    assert apop(b"carol", b"carol-pw") == "carol"
    with pytest.raises(UnauthorizedLogin):
        apop(b"carol", b"wrong")
    with pytest.raises(UnauthorizedLogin):
        apop(b"alice", b"alice-pw")  # bcrypt: APOP impossible
    with pytest.raises(UnauthorizedLogin):
        apop(b"nobody", b"x")


@pytest.mark.integration
def test_query_error_is_temporary(backend: Backend) -> None:
    checker = backend.checker("SELECT password FROM no_such_table_xyz WHERE userid = %(user)s")
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", "alice-pw")
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")


@pytest.mark.integration
def test_server_down_is_temporary(server_backend: Backend) -> None:
    dead = "postgresql://postgres@127.0.0.1:1/test" if server_backend.kind == "postgresql" else "mysql://root@127.0.0.1:1/test"
    checker = SQLChecker(dead, timeout=2, reactor=start_reactor())
    server_backend.checkers.append(checker)
    for _ in range(2):
        with pytest.raises(TemporaryFailure):
            login(checker, "alice", "alice-pw")
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")


@pytest.mark.integration
def test_killed_connection_is_replaced(server_backend: Backend) -> None:
    """A restarted server (here: our backend killed) costs no failed login."""
    if server_backend.kind == "postgresql":
        whoami, kill = "pg_backend_pid()::text", "SELECT pg_terminate_backend({})"
    else:
        whoami, kill = "CAST(CONNECTION_ID() AS CHAR)", "KILL {}"
    checker = server_backend.checker(
        user_query=f"SELECT userid, {whoami} FROM {server_backend.table} WHERE userid = %(user)s",
        pool_min=1,
        pool_max=1,
    )
    for _ in range(2):
        assert login(checker, "alice", "alice-pw") == "alice"
        info = run(checker.lookup_user, "alice")
        server_backend.execute(kill.format(int(info.mail_location)))
        time.sleep(0.2)
        assert login(checker, "alice", "alice-pw") == "alice"
        assert run(checker.lookup_user, "alice").mail_location != info.mail_location


@pytest.mark.integration
def test_slow_query_times_out(server_backend: Backend) -> None:
    sleep = "pg_sleep(3) IS NOT NULL" if server_backend.kind == "postgresql" else "SLEEP(3) = 0"
    checker = server_backend.checker(
        f"SELECT password FROM {server_backend.table} WHERE userid = %(user)s AND {sleep}", timeout=1
    )
    started = time.monotonic()
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", "alice-pw")
    assert time.monotonic() - started < 2.5


# -- sqlite specifics ----------------------------------------------------------


def test_sqlite_missing_file_then_created(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    checker = SQLChecker(f"sqlite://{path}", reactor=start_reactor())
    try:
        with pytest.raises(TemporaryFailure):
            login(checker, "alice", "alice-pw")
        assert not path.exists()  # opened read-only: no empty database created
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (userid TEXT, password TEXT)")
        conn.execute("INSERT INTO users VALUES ('alice', '{PLAIN}alice-pw')")
        conn.commit()
        conn.close()
        assert login(checker, "alice", "alice-pw") == "alice"
    finally:
        run(_close_pool, checker)


def test_several_rows_are_refused(sqlite_backend: Backend) -> None:
    checker = sqlite_backend.checker(f"SELECT password, maildir FROM {sqlite_backend.table} WHERE userid <> %(user)s")
    assert refused(checker, "alice", "bob-pw")
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")


def test_unknown_user_costs_a_check_against_a_real_hash(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = timing.dummy_verify_in_thread

    def spy(reactor: Any, password: bytes, stored: str, **kw: Any) -> Any:
        checked.append(stored)
        return real(reactor, password, stored, **kw)

    monkeypatch.setattr(timing, "dummy_verify_in_thread", spy)
    checker = sqlite_backend.checker()
    assert refused(checker, "nobody", "x")
    assert checked == [schemes.DUMMY_HASH]
    login(checker, "bob", "bob-pw")
    assert refused(checker, "nobody", "x")
    assert checked[-1] == PASSWORDS["bob"][1]
    login(checker, "carol", "carol-pw")
    assert refused(checker, "nobody", "x")
    assert checked[-1].startswith("{PLAIN}") and "carol-pw" not in checked[-1]


def test_make_checker_from_argstring(sqlite_backend: Backend) -> None:
    checker = make_checker(
        f"dsn={sqlite_backend.dsn},query=SELECT password, maildir FROM {sqlite_backend.table} "
        "WHERE userid = %(user)s,pool_max=2,timeout=3"
    )
    sqlite_backend.checkers.append(checker)
    assert login(checker, "dave", "dave-pw") == "dave"
    assert run(checker.lookup_user, "alice") == UserInfo("alice", "/var/mail/alice")


@pytest.mark.parametrize("extra, challenge", [
    ("", False),                      # hashed or unknown: APOP/CRAM-MD5 would always fail
    (",scheme=SHA256", False),
    (",scheme=PLAIN", True),
    (",scheme=cleartext", True),
    (",scheme=PLAIN,challenge=no", False),
    (",challenge=yes", True),
])
def test_challenge_mechanisms_are_offered_only_when_they_can_succeed(
        sqlite_backend: Backend, extra: str, challenge: bool) -> None:
    checker = make_checker(f"dsn={sqlite_backend.dsn}{extra}")
    sqlite_backend.checkers.append(checker)
    assert (IUsernameHashedPassword in checker.credentialInterfaces) is challenge
    # What the server announces follows: APOP in the greeting, CRAM-MD5 in SASL.
    portal, _ = make_portal(checker=checker)
    session = connect(portal)
    greeting = session.take()
    assert (b"<" in greeting) is challenge
    capa = session.send(b"CAPA\r\n")
    sasl = b"".join(line for line in capa.split(b"\r\n") if line.startswith(b"SASL"))
    assert (b"CRAM-MD5" in sasl) is challenge


def test_challenge_must_be_yes_or_no() -> None:
    with pytest.raises(ValueError, match="challenge= must be yes or no"):
        parse_args("dsn=sqlite:///x,challenge=maybe")


# -- argument parsing (no database) --------------------------------------------


def test_parse_args_keeps_commas_in_queries() -> None:
    kwargs = parse_args(
        "dsn=postgresql://u@h:5432/db, query=SELECT password, maildir FROM users WHERE userid = %(user)s,"
        "user_query=SELECT 1, home FROM users WHERE userid = %(user)s,scheme=SHA512-CRYPT,pool_min=2,pool_max=3,timeout=1.5"
    )
    assert kwargs == {
        "dsn": "postgresql://u@h:5432/db",
        "query": "SELECT password, maildir FROM users WHERE userid = %(user)s",
        "user_query": "SELECT 1, home FROM users WHERE userid = %(user)s",
        "default_scheme": "SHA512-CRYPT",
        "pool_min": 2,
        "pool_max": 3,
        "timeout": 1.5,
    }
    assert parse_args("dsn=sqlite:///x.db") == {"dsn": "sqlite:///x.db"}


@pytest.mark.parametrize(
    "argstring, message",
    [
        ("", "dsn= is required"),
        ("query=SELECT password FROM u WHERE userid = %(user)s", "dsn= is required"),
        ("dsn=sqlite:///x.db,bogus=1", "unknown key bogus="),
        ("bogus=1", "expected one of"),
        ("dsn=sqlite:///x.db,dsn=sqlite:///y.db", "given twice"),
        ("dsn=sqlite:///x.db,pool_max=many", "pool_max= must be a number"),
        ("dsn=sqlite:///x.db,timeout=0", "timeout= must be positive"),
        ("dsn=sqlite:///x.db,pool_min=3,pool_max=2", "pool_min <= pool_max"),
        ("dsn=oracle://x/y", "must start with"),
        ("dsn=sqlite://", "sqlite:///path"),
        ("dsn=sqlite:///:memory:", "sqlite:///path"),
        ("dsn=postgresql://host", "needs a database"),
        ("dsn=mysql://root@host", "needs a database"),
        ("dsn=mysql://root@host/db?ssl=1", "unknown MySQL DSN option"),
        ("dsn=sqlite:///x.db,scheme=NOPE", "unknown scheme="),
        ("dsn=sqlite:///x.db,query=SELECT password FROM users", "must use %(user)s"),
        ("dsn=sqlite:///x.db,query=SELECT password FROM users WHERE userid = %(name)s", "unknown placeholder"),
        ("dsn=sqlite:///x.db,query=SELECT password FROM users WHERE userid = %(user)s AND x LIKE 'a%'", "lone %"),
        ("dsn=sqlite:///x.db,user_query=SELECT 1 FROM users", "must use %(user)s"),
    ],
)
def test_bad_arguments(argstring: str, message: str) -> None:
    with pytest.raises(ValueError, match="^sql: .*" + re.escape(message)) as info:
        make_checker(argstring)
    assert "\n" not in str(info.value)


def test_compile_query() -> None:
    named = compile_query("SELECT a FROM t WHERE u = %(user)s OR (l = %(localpart)s AND d = %(domain)s) OR u = %(user)s AND x LIKE '%%y'", "named")
    assert named.text == "SELECT a FROM t WHERE u = :user OR (l = :localpart AND d = :domain) OR u = :user AND x LIKE '%y'"
    assert named.params("a.b@c@example.org") == {"user": "a.b@c@example.org", "localpart": "a.b@c", "domain": "example.org"}
    pyformat = compile_query("SELECT a FROM t WHERE l = %(localpart)s AND x LIKE '%%y'", "pyformat")
    assert pyformat.text == "SELECT a FROM t WHERE l = %(localpart)s AND x LIKE '%%y'"
    assert pyformat.params("alice") == {"localpart": "alice"}
    assert compile_query("SELECT 1 WHERE d = %(domain)s", "named").params("alice") == {"domain": ""}


def test_redact() -> None:
    assert redact("mysql://root:s3cret@db:3306/mail") == "mysql://root:***@db:3306/mail"
    assert redact("postgresql://postgres@db/test") == "postgresql://postgres@db/test"


# -- case in user names --------------------------------------------------------


def _add_dana(backend: Backend) -> None:
    backend.execute(f"INSERT INTO {backend.table} VALUES ('Dana@Example.org', '{{PLAIN}}dana-pw', NULL)")


@pytest.mark.integration
def test_the_user_column_gives_the_stored_spelling(backend: Backend) -> None:
    """
    With C{userid AS user} and a case-insensitive comparison (here lower()
    on both sides, which every database has), any spelling logs in as the
    stored one, domain lower-cased; delivery's lookup names the user alike.
    The user column does not shift the password and mail columns.
    """
    _add_dana(backend)
    checker = backend.checker(
        "SELECT password, maildir, userid AS user FROM {table} WHERE lower(userid) = lower(%(user)s)")
    for typed in ("dana@example.org", "DANA@EXAMPLE.ORG", "Dana@Example.org"):
        assert login(checker, typed, "dana-pw") == "Dana@example.org"
        assert run(checker.lookup_user, typed) == UserInfo("Dana@example.org", None)
    assert login(checker, "ALICE", "alice-pw") == "alice"
    assert login(checker, "Alice", "alice-pw").mail_location == "/var/mail/alice"
    assert run(checker.lookup_user, "ALICE") == UserInfo("alice", "/var/mail/alice")
    user_first = backend.checker("SELECT userid AS user, password, maildir FROM {table} WHERE userid = %(user)s")
    assert login(user_first, "alice", "alice-pw").mail_location == "/var/mail/alice"


@pytest.mark.integration
def test_the_default_query_under_the_databases_own_collation(backend: Backend) -> None:
    """
    The default query returns C{userid AS user}: under MariaDB's default
    (case-insensitive) collation C{ALICE} is C{alice}; sqlite and
    PostgreSQL compare exactly, so C{ALICE} is nobody there.
    """
    from popgate.cred.sql import DEFAULT_QUERY

    _add_dana(backend)
    checker = backend.checker(DEFAULT_QUERY.replace("FROM users", "FROM {table}"))
    assert login(checker, "alice", "alice-pw") == "alice"
    if backend.kind == "mysql":
        assert login(checker, "ALICE", "alice-pw") == "alice"
        assert login(checker, "dana@EXAMPLE.ORG", "dana-pw") == "Dana@example.org"
        assert run(checker.lookup_user, "DANA@example.org") == UserInfo("Dana@example.org", None)
    else:
        assert refused(checker, "ALICE", "alice-pw")
        assert run(checker.lookup_user, "Alice") is None


@pytest.mark.integration
def test_without_a_user_column_the_domain_is_still_lower_cased(backend: Backend) -> None:
    checker = backend.checker(
        "SELECT password FROM {table} WHERE userid = %(localpart)s AND %(domain)s = 'example.org'")
    for typed in ("alice@example.org", "alice@EXAMPLE.org"):
        assert login(checker, typed, "alice-pw") == "alice@example.org"
        assert run(checker.lookup_user, typed) == UserInfo("alice@example.org", None)


def test_mysql_without_a_user_column_is_hinted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import capturedLogs, formatEvent

    checker = SQLChecker("mysql://root@127.0.0.1:1/test", reactor=start_reactor())
    with capturedLogs() as events:
        assert checker._canonical(Row(("{PLAIN}x",)), "BOB") == "BOB"
        assert checker._canonical(Row(("{PLAIN}x",)), "BOB") == "BOB"
    hints = [formatEvent(e) for e in events if "userid AS user" in formatEvent(e)]
    assert len(hints) == 1
    assert checker._canonical(Row(("{PLAIN}x",), "bob@Example.org", True), "BOB@x") == "bob@example.org"


def test_an_unusable_user_column_falls_back_to_the_given_name(sqlite_backend: Backend) -> None:
    checker = sqlite_backend.checker("SELECT password, NULL AS user FROM {table} WHERE userid = %(user)s")
    assert login(checker, "alice", "alice-pw") == "alice"
    checker = sqlite_backend.checker("SELECT password, ' bad' AS user FROM {table} WHERE userid = %(user)s")
    assert login(checker, "alice", "alice-pw") == "alice"


def test_stored_values_that_are_not_text_are_a_configuration_error_logged_once(sqlite_backend: Backend) -> None:
    """Not UTF-8: the password makes the user unable to log in, the mail location falls back."""
    from twisted.logger import capturedLogs, formatEvent

    table = sqlite_backend.table
    sqlite_backend.execute(f"INSERT INTO {table} VALUES ('blob', X'FFFE', NULL)")
    sqlite_backend.execute(f"INSERT INTO {table} VALUES ('gil', '{{PLAIN}}gil-pw', X'FF2F')")
    checker = sqlite_backend.checker()
    with capturedLogs() as events:
        for _ in range(3):
            assert refused(checker, "blob", "x")
            assert login(checker, "gil", "gil-pw").mail_location is None
        assert run(checker.lookup_user, "gil") == UserInfo("gil", None)
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 2
    assert "the password of 'blob' is not UTF-8" in errors[0]
    assert "the mail location of 'gil' is not UTF-8" in errors[1]
