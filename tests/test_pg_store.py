"""
The PostgreSQL mail store against a real PostgreSQL (a throwaway database
per module, L{tests.pg_database}) and a real popgate (C{twistd -n popgate
--store postgresql:...} on loopback): the snapshot, byte-exact RETR and
TOP of awkward messages (one of 7 MB, many rows), the session lock across
processes and "nodes" (a second store instance in this process), what
QUIT and a dropped session change, LMTP and C{popgate deliver} delivery,
and PostgreSQL unreachable, terminated or without its schema.
"""

from __future__ import annotations

import poplib
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from twisted.internet import defer

from popgate import errors
from popgate.stores import pg_schema
from popgate.stores.pg_settings import parse_args
from popgate.stores.postgresql import PostgresStore
from popgate.testing import reactor_thread
from tests.pg_database import throwaway_database
from tests.pop3_oracle import RawClient, crlf_size, top_oracle, wire
from tests.popgate_server import REPO, PopgateProcess, child_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "kate")

CORPUS = {
    "dot lines": b"Subject: dots\n\n.\n..\n.leading\nmiddle . line\n.\n",
    "no final newline": b"Subject: open end\n\nno newline at the end",
    "bare CR": b"Subject: cr\r\n\r\none\rtwo\r\nthree\r",
    "8-bit": "Subject: =?utf-8?q?caf=C3=A9?=\n\ncafé, naïve, 日本語\n".encode() + bytes(range(128, 256)),
    "CRLF": b"Subject: crlf\r\n\r\nline 1\r\nline 2\r\n",
    "empty body": b"Subject: nothing\n\n",
}


def big_message() -> bytes:
    """About 7 MB (27 rows), lines with leading dots now and then, and a
    row boundary that falls inside a CRLF."""
    line = b"x" * 75 + b"\n"
    lines = [b"Subject: big\n\n"]
    lines += [(b"." + line) if i % 97 == 0 else line for i in range(92_000)]
    data = b"".join(lines)
    # Put a CR just before a row boundary and its LF just after.
    cut = pg_schema.CHUNK_SIZE * 3
    return data[:cut - 1] + b"\r\n" + data[cut + 1:]


def password(user: str) -> str:
    return f"{user}-pw"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as connection:
        assert pg_schema.upgrade(connection) == sorted(pg_schema.STEPS)
        yield dsn


@pytest.fixture(scope="module")
def passwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pg") / "passwd"
    path.write_text("".join(f"{u}:{{PLAIN}}{password(u)}::::::\n" for u in USERS))
    return path


@pytest.fixture(scope="module")
def server(dsn: str, passwd: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PopgateProcess]:
    log = tmp_path_factory.mktemp("pglog") / "popgate.log"
    lmtp_port = free_port()
    args = ["--auth", f"passwd-file:{passwd}", "--store", f"postgresql:dsn={dsn},pool_size=2",
            "--lmtp", f"tcp:{lmtp_port}:interface=127.0.0.1"]
    with PopgateProcess(args, log_path=str(log)) as process:
        process.lmtp_port = lmtp_port  # type: ignore[attr-defined]
        yield process


def db(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def put(dsn: str, user: str, *messages: bytes) -> list[bytes]:
    """Store C{messages} for C{user} as delivery does; their UIDLs."""
    with db(dsn) as connection, connection.transaction(), connection.cursor() as cursor:
        mailbox = pg_schema.mailbox_id(cursor, user)
        assert mailbox is not None
        return [pg_schema.insert_message(cursor, mailbox, m) for m in messages]


def stored(dsn: str, user: str) -> list[bytes]:
    """C{user}'s messages now (from another connection: committed ones)."""
    with db(dsn) as connection:
        rows = connection.execute(
            "SELECT m.id, string_agg(c.data, ''::bytea ORDER BY c.seq) FROM popgate_messages m "
            "JOIN popgate_mailboxes b ON b.id = m.mailbox_id "
            "LEFT JOIN popgate_chunks c ON c.message_id = m.id WHERE b.name = %s "
            "GROUP BY m.id ORDER BY m.id", (user,)).fetchall()
    return [bytes(data or b"") for _, data in rows]


def login(server: PopgateProcess, user: str) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.port, timeout=30)
    client.user(user)
    client.pass_(password(user))
    return client


def lock_holder(dsn: str, user: str) -> int | None:
    """The backend holding C{user}'s session lock."""
    with db(dsn) as connection:
        row = connection.execute(
            "SELECT l.pid FROM pg_locks l JOIN popgate_mailboxes b "
            "ON l.objid::text::bigint = b.id %% 4294967296 WHERE l.locktype = 'advisory' "
            "AND l.classid = %s AND l.objsubid = 2 AND l.granted AND b.name = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (pg_schema.LOCK_CLASS, user)).fetchone()
    return None if row is None else int(row[0])


def terminate_popgate(dsn: str, pid: int | None = None) -> int:
    """pg_terminate_backend on popgate's connections (or one); how many."""
    with db(dsn) as connection:
        if pid is not None:
            connection.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return 1
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "datname = current_database() AND application_name = 'popgate' "
            "AND pid <> pg_backend_pid()").fetchall()
    return len(rows)


def wait_until(condition: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def node(dsn: str) -> PostgresStore:
    """Another "node": a store instance of its own in this process."""
    reactor = reactor_thread.start_reactor()
    return PostgresStore(parse_args(f"dsn={dsn}"), reactor)


# -- the snapshot and the messages


def test_snapshot_gives_the_wire_sizes_and_the_stored_uidls(server: PopgateProcess, dsn: str) -> None:
    messages = [CORPUS["dot lines"], CORPUS["bare CR"], CORPUS["no final newline"]]
    uidls = put(dsn, "alice", *messages)
    client = login(server, "alice")
    try:
        assert client.stat() == (3, sum(crlf_size(m) for m in messages))
        assert client.list()[1] == [b"%d %d" % (i + 1, crlf_size(m)) for i, m in enumerate(messages)]
        assert client.uidl()[1] == [b"%d %s" % (i + 1, u) for i, u in enumerate(uidls)]
    finally:
        client.quit()


def test_retr_and_top_are_byte_exact_including_a_7_MB_message(server: PopgateProcess, dsn: str) -> None:
    messages = [*CORPUS.values(), big_message()]
    assert len(messages[-1]) > 25 * pg_schema.CHUNK_SIZE
    put(dsn, "bob", *messages)
    with RawClient(server.port, timeout=30) as client:
        client.login(b"bob", password("bob").encode())
        for i, message in enumerate(messages, 1):
            assert client.cmd(b"RETR %d" % i) == b"+OK %d octets" % crlf_size(message)
            body = client.multi()
            assert body == wire(message), f"RETR {i}"
            for lines in (0, 1, 3):
                assert client.cmd(b"TOP %d %d" % (i, lines)).startswith(b"+OK")
                assert client.multi() == wire(top_oracle(message, lines)), f"TOP {i} {lines}"
        assert client.cmd(b"QUIT").startswith(b"+OK")
    assert stored(dsn, "bob") == messages


# -- the lock


def test_a_second_login_is_in_use_on_this_node_and_on_another(server: PopgateProcess, dsn: str) -> None:
    put(dsn, "carol", b"Subject: one\n\nhi\n")
    first = login(server, "carol")
    try:
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            login(server, "carol")
        other = node(dsn)
        with pytest.raises(errors.MaildropInUse):
            reactor_thread.run(other.open_maildrop, "carol")
        assert other.sessions._held == set()  # the in-process lock was given back
    finally:
        first.quit()
    # Released at QUIT: the other node gets it now, with the keepalives set.
    maildrop = reactor_thread.run(other.open_maildrop, "carol")
    try:
        assert len(maildrop.list_messages()) == 1
        connection = maildrop.connection
        assert connection.execute("SHOW tcp_keepalives_idle").fetchone() == ("10",)
        assert connection.execute("SHOW tcp_user_timeout").fetchone() == ("30000",)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            login(server, "carol")
    finally:
        reactor_thread.run(maildrop.close)
        reactor_thread.run(other.close)
    login(server, "carol").quit()


def test_the_lock_goes_with_a_killed_session_connection_and_quit_then_fails(
        server: PopgateProcess, dsn: str) -> None:
    put(dsn, "dave", b"Subject: keep me\n\nhi\n")
    client = login(server, "dave")
    holder = lock_holder(dsn, "dave")
    assert holder is not None
    terminate_popgate(dsn, holder)
    wait_until(lambda: lock_holder(dsn, "dave") is None)
    other = node(dsn)
    maildrop = reactor_thread.run(other.open_maildrop, "dave")
    try:
        client.dele(1)
        with pytest.raises(poplib.error_proto, match=r"^b?'?-ERR"):
            client.quit()
    finally:
        client.close()
        reactor_thread.run(maildrop.close)
        reactor_thread.run(other.close)
    assert stored(dsn, "dave") == [b"Subject: keep me\n\nhi\n"]
    assert "Traceback" not in server.log()


# -- QUIT and a dropped session


def test_quit_deletes_exactly_the_marked_messages_and_a_dropped_session_nothing(
        server: PopgateProcess, dsn: str) -> None:
    messages = [b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(5)]
    put(dsn, "erin", *messages)
    client = login(server, "erin")
    client.dele(1)
    client.dele(3)
    client.close()  # dropped: no QUIT
    wait_until(lambda: lock_holder(dsn, "erin") is None)
    assert stored(dsn, "erin") == messages
    client = login(server, "erin")
    client.dele(1)
    client.dele(3)
    client.dele(5)
    assert client.quit().startswith(b"+OK")
    assert stored(dsn, "erin") == [messages[1], messages[3]]
    client = login(server, "erin")
    try:
        assert client.stat()[0] == 2
    finally:
        client.quit()


# -- delivery


def test_lmtp_and_popgate_deliver_store_committed_mail(server: PopgateProcess, dsn: str,
                                                       passwd: Path) -> None:
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, timeout=30) as lmtp:  # type: ignore[attr-defined]
        assert lmtp.sendmail("s@example.net", ["frank"], b"Subject: over lmtp\r\n\r\nhi\r\n") == {}
    # 250 came after the commit: another connection sees the message.
    assert [m for m in stored(dsn, "frank") if b"Subject: over lmtp" in m]
    piped = subprocess.run(
        [sys.executable, "-m", "popgate.cli", "deliver", "-u", "frank", "-f", "s@example.net",
         "--store", f"postgresql:dsn={dsn}", "--auth", f"passwd-file:{passwd}"],
        input=b"Subject: through deliver\n\nhi\n", capture_output=True, env=child_env(),
        cwd=REPO, timeout=60, check=False)
    assert piped.returncode == 0, piped.stderr
    client = login(server, "frank")
    try:
        subjects = [line for i in (1, 2) for line in client.retr(i)[1] if line.startswith(b"Subject:")]
        assert subjects == [b"Subject: over lmtp", b"Subject: through deliver"]
    finally:
        client.quit()


# -- PostgreSQL going away


def test_logins_and_deliveries_recover_after_every_connection_is_terminated(
        server: PopgateProcess, dsn: str) -> None:
    put(dsn, "grace", b"Subject: before\n\nhi\n")
    login(server, "grace").quit()  # a session connection is now idle in the pool
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, timeout=30) as lmtp:  # type: ignore[attr-defined]
        lmtp.sendmail("s@example.net", ["grace"], b"Subject: first\r\n\r\nhi\r\n")
    assert terminate_popgate(dsn) >= 2
    # The dead idle connections are found out and replaced: no failure.
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, timeout=30) as lmtp:  # type: ignore[attr-defined]
        assert lmtp.sendmail("s@example.net", ["grace"], b"Subject: after\r\n\r\nhi\r\n") == {}
    client = login(server, "grace")
    try:
        assert client.stat()[0] == 3
    finally:
        client.quit()


def test_an_unreachable_database_is_sys_temp_with_one_log_line(passwd: Path, tmp_path: Path) -> None:
    closed = free_port()
    dsn = f"postgresql://popgate:secret@127.0.0.1:{closed}/mail"
    lmtp_port = free_port()
    args = ["--auth", f"passwd-file:{passwd}", "--store", f"postgresql:dsn={dsn},connect_timeout=2",
            "--lmtp", f"tcp:{lmtp_port}:interface=127.0.0.1"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("heidi")
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            client.pass_(password("heidi"))
        client.quit()
        with smtplib.LMTP("127.0.0.1", lmtp_port, timeout=30) as lmtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                lmtp.sendmail("s@example.net", ["heidi"], b"Subject: x\r\n\r\nhi\r\n")
            assert refused.value.smtp_code == 451
        server.stop()
        log = server.log()
    lines = [line for line in log.splitlines() if "cannot connect" in line]
    assert len([line for line in lines if "heidi" in line and "login" in line]) == 1, log
    assert "secret" not in log
    assert "Traceback" not in log


def test_a_database_without_the_schema_names_popgate_db_init() -> None:
    with throwaway_database() as empty:
        store = node(empty)
        try:
            with pytest.raises(errors.TemporaryFailure, match="run popgate db init"):
                reactor_thread.run(store.open_maildrop, "ivan")
            with pytest.raises(errors.TemporaryFailure, match="run popgate db init"):
                reactor_thread.run(store.deliver, "ivan", b"Subject: x\n\nhi\n")
            assert store.sessions._held == set()
            assert store.session_connections.busy == store.pool.busy == 0
            with db(empty) as connection:
                pg_schema.upgrade(connection)
            # No restart: it works once the schema is there.
            reactor_thread.run(store.deliver, "ivan", b"Subject: x\n\nhi\n")
            maildrop = reactor_thread.run(store.open_maildrop, "ivan")
            assert len(maildrop.list_messages()) == 1
            reactor_thread.run(maildrop.close)
        finally:
            reactor_thread.run(store.close)
            terminate_popgate(empty)


def test_popgate_db_init_and_upgrade(tmp_path: Path) -> None:
    def db_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "popgate.cli", "db", *args],
                              capture_output=True, text=True, env=child_env(), cwd=REPO,
                              timeout=60, check=False)

    with throwaway_database() as empty:
        store = f"postgresql:dsn={empty}"
        refused = db_command("upgrade", "--store", store)
        assert refused.returncode == 1
        assert "has no popgate schema: run popgate db init" in refused.stderr
        config = tmp_path / "popgate.toml"
        config.write_text(f'store = "{store}"\n')
        made = db_command("init", "--config", str(config))
        assert made.returncode == 0, made.stderr
        assert "applied popgate schema version" in made.stdout
        assert f"now at {pg_schema.VERSION}" in made.stdout
        again = db_command("upgrade", "--store", store)
        assert again.returncode == 0 and "nothing to do" in again.stdout
        status = db_command("status", "--store", store)
        assert f"schema version {pg_schema.VERSION}" in status.stdout
    down = db_command("init", "--store", f"postgresql:dsn=postgresql://u:secret@127.0.0.1:{free_port()}/x")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "secret" not in down.stderr


def test_a_message_deleted_under_the_session_is_refused_or_fails_mid_read(dsn: str) -> None:
    """Impossible through popgate while the session holds the lock, but
    another program may delete rows: an -ERR before the +OK, or an
    error (the client is dropped) after it; never wrong octets."""
    big = b"Subject: rows\n\n" + b"y" * (3 * pg_schema.CHUNK_SIZE)
    put(dsn, "judy", b"Subject: gone\n\nhi\n", big)
    store = node(dsn)
    maildrop = reactor_thread.run(store.open_maildrop, "judy")
    try:
        with db(dsn) as connection:
            connection.execute("DELETE FROM popgate_messages WHERE id = %s", (maildrop._ids[0],))
        with pytest.raises(errors.PermanentFailure, match="was removed"):
            reactor_thread.run(maildrop.open_message, 0)
        source = reactor_thread.run(maildrop.open_message, 1)
        assert source.read_cached(pg_schema.CHUNK_SIZE) == big[:pg_schema.CHUNK_SIZE]
        assert source.read_cached(10) is None  # the next row is not here yet
        assert reactor_thread.run(source.read_deferred, 10) == (
            big[pg_schema.CHUNK_SIZE:pg_schema.CHUNK_SIZE + 10])
        with db(dsn) as connection:
            connection.execute("DELETE FROM popgate_messages WHERE id = %s", (maildrop._ids[1],))
        with pytest.raises(errors.TemporaryFailure, match="missing"):
            while reactor_thread.run(source.read_deferred, pg_schema.CHUNK_SIZE):
                pass
        source.close()
    finally:
        reactor_thread.run(maildrop.close)
        reactor_thread.run(store.close)


def test_first_deliveries_at_once_to_a_new_mailbox_all_succeed(dsn: str) -> None:
    """Several deliveries racing to create one user's mailbox row: each is
    stored (a mailbox id is kept only once its row is committed: another
    delivery given an uncommitted id would fail its foreign key)."""
    store = node(dsn)
    try:
        for round_ in range(3):
            user = f"race{round_}"
            # Started in the reactor's thread, as popgate does: a thread pool
            # started from this (non-daemon) thread would keep pytest from
            # exiting.
            uidls = reactor_thread.run(lambda u=user: defer.gatherResults(
                [store.deliver(u, b"Subject: %d\n\nhi\n" % i) for i in range(8)]))
            assert len(set(uidls)) == 8
            assert len(stored(dsn, user)) == 8
        # A row deleted by hand while its id is kept: that delivery fails,
        # the next finds the name anew.
        with db(dsn) as connection:
            connection.execute("DELETE FROM popgate_mailboxes WHERE name = 'race0'")
        with pytest.raises(errors.TemporaryFailure, match="foreign key"):
            reactor_thread.run(store.deliver, "race0", b"Subject: lost\n\nhi\n")
        reactor_thread.run(store.deliver, "race0", b"Subject: again\n\nhi\n")
        assert stored(dsn, "race0") == [b"Subject: again\n\nhi\n"]
        # And a login after the row was deleted under a kept id looks it up anew.
        maildrop = reactor_thread.run(store.open_maildrop, "race0")
        assert len(maildrop.list_messages()) == 1
        reactor_thread.run(maildrop.close)
    finally:
        reactor_thread.run(store.close)


def test_login_delay_and_expire_are_kept_in_the_database(
        dsn: str, passwd: Path, tmp_path: Path) -> None:
    """LOGIN-DELAY's last login and EXPIRE's first RETR live in the
    mailbox and message rows (pg_history), so every node sees them: a
    second login within the delay is refused, on another process too;
    EXPIRE 0 removes what a session retrieved, at its QUIT only."""
    put(dsn, "kate", b"Subject: read me\n\nhi\n", b"Subject: keep me\n\nho\n")
    args = ["--auth", f"passwd-file:{passwd}", "--store", f"postgresql:dsn={dsn},pool_size=2",
            "--login-delay", "600", "--expire", "0"]
    with PopgateProcess(args, log_path=str(tmp_path / "a.log")) as first:
        client = login(first, "kate")
        capabilities = client.capa()
        assert capabilities["LOGIN-DELAY"] == ["600"] and capabilities["EXPIRE"] == ["0"]
        client.retr(1)
        client.quit()
        assert stored(dsn, "kate") == [b"Subject: keep me\n\nho\n"]
        with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
            login(first, "kate")
    with db(dsn) as connection:
        (last,) = connection.execute(
            "SELECT last_login FROM popgate_mailboxes WHERE name = 'kate'").fetchone()
    assert last is not None
    # Another process (a second node) reads the same time.
    with PopgateProcess(args, log_path=str(tmp_path / "b.log")) as second:
        with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
            login(second, "kate")
        assert "Traceback" not in second.log()
