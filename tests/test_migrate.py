"""
C{popgate migrate} against a real PostgreSQL: Maildir and mbox sources
copied with the UIDLs, sizes and bytes popgate's own stores serve, a
second run copying nothing, an interrupted run finished by the next, a
tampered row caught by verification, locked mailboxes left alone.

The oracle for what a source holds is the source store itself (its
C{list_messages()} and C{open_message()}, read here independently of the
migration's own reading code), and the rows are read back with plain SQL.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from popgate.migrate import command, copy, report, source, target
from popgate.migrate.options import parse_target
from popgate.stores import pg_schema
from popgate.wire import wire_size
from tests.pg_database import throwaway_database
from tests.popgate_server import REPO, child_env
from tests.reactor_thread import run, start_reactor

pytestmark = pytest.mark.integration

#: Messages as a Maildir keeps them: (subdir, file name, bytes).
MAILDIR_MESSAGES = [
    ("new", "1700000000.M1P10.host", b"Subject: plain\n\nhello\n"),
    ("cur", "1700000001.M2P10.host:2,S", b"Subject: seen, with dot lines\n\n.\n..x\n.hidden\nend\n"),
    ("cur", "1700000002.M3P10.host:2,RS", b"Subject: replied\n\nno final newline"),
    ("new", "1700000003.M4P10.host", b"Subject: bare CR\r\n\r\na\rb\r\nc\r\r\n"),
    ("cur", "1700000004.M5P10.host:2,", b"Subject: From line\n\nFrom here on\n>From quoted\n"),
    ("new", "1700000005.M6P10.host", b"Subject: big\n\n" + b"0123456789abcdef\n" * 40000),
    ("new", "1700000006.M7P10.host", b""),
]


def _sized(name: str, data: bytes) -> str:
    """A name with ,W= (the size Dovecot writes), which the store trusts."""
    base, colon, flags = name.partition(":")
    return f"{base},W={wire_size(data)}{colon}{flags}"


MAILDIR_MESSAGES.append(("cur", _sized("1700000007.M8P10.host:2,S", b"Subject: W\n\nx\n"),
                         b"Subject: W\n\nx\n"))

SPOOL = (
    b"From alice@example.org Mon Jan  1 00:00:00 2024\n"
    b"Subject: one\n\nline\n>From quoted\n.\n..dots\n\n"
    b"From bob@example.org Mon Jan  1 00:00:01 2024\n"
    b"X-UIDL: legacy-qpopper-uidl-0001\nSubject: two\n\nbody\n\n"
    b"From alice@example.org Mon Jan  1 00:00:00 2024\n"
    b"Subject: one\n\nline\n>From quoted\n.\n..dots\n\n"
    b"From carol@example.org Mon Jan  1 00:00:02 2024\n"
    b"Subject: three\n\nbare\rCR and CRLF\r\nlast"
)


def maildir(root: Path, messages: list[tuple[str, str, bytes]]) -> Path:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sub, name, data in messages:
        (root / sub / name).write_bytes(data)
    return root


def message_files(root: Path) -> dict[str, bytes]:
    """Every message file of a Maildir (not popgate's lock or size cache)."""
    return {f"{sub}/{name}": (root / sub / name).read_bytes()
            for sub in ("new", "cur", "tmp") for name in sorted(os.listdir(root / sub))}


@pytest.fixture
def dsn():
    with throwaway_database("popgate_migrate") as url:
        import psycopg

        with psycopg.connect(url) as connection:
            pg_schema.upgrade(connection)
        yield url


def migrate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popgate.cli", "migrate", *args],
                          capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=timeout)


def served(description: str, user: str) -> list[tuple[bytes, int, bytes]]:
    """(UIDL, size, bytes) of each message, as the source store serves them."""
    reactor = start_reactor()
    store = source.build_store(description, reactor)
    maildrop = run(source.open_maildrop, store, user, reactor)
    try:
        found = []
        for index, info in enumerate(maildrop.list_messages()):
            opened = run(maildrop.open_message, index)
            try:
                data = b""
                while chunk := opened.read(4096):
                    data += chunk
            finally:
                run(opened.close)
            found.append((info.uid, info.size, data))
        return found
    finally:
        run(maildrop.close)


def stored(url: str, user: str) -> list[tuple[bytes, int, bytes]]:
    """(UIDL, wire size, body reassembled from its chunks by seq), in id order."""
    import psycopg

    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT m.id, m.uidl, m.wire_size, m.stored_size FROM popgate_messages m "
            "JOIN popgate_mailboxes b ON b.id = m.mailbox_id WHERE b.name = %s ORDER BY m.id",
            (user,)).fetchall()
        found = []
        for message_id, uidl, size, stored_size in rows:
            chunks = connection.execute("SELECT data FROM popgate_chunks WHERE message_id = %s "
                                        "ORDER BY seq", (message_id,)).fetchall()
            body = b"".join(bytes(c) for (c,) in chunks)
            assert len(body) == stored_size
            found.append((uidl.encode(), size, body))
    return found


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def test_maildir_is_copied_with_the_uidls_sizes_and_bytes_popgate_served(tmp_path, dsn):
    mail = tmp_path / "mail"
    alice = maildir(mail / "example.org" / "alice", MAILDIR_MESSAGES)
    maildir(mail / "example.org" / "carol", [])  # empty
    before = message_files(alice)
    description = f"maildir:{mail}/%d/%n"
    expected = served(description, "alice@example.org")
    assert len(expected) == len(MAILDIR_MESSAGES)

    first = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "--all")
    assert first.returncode == 0, first.stderr
    total = sum(size for _, size, _ in expected)
    lines = first.stdout.splitlines()
    assert lines[0].startswith(f"alice@example.org: {len(expected)} messages, ")
    assert lines[0].endswith(" copied, 0 skipped, verified")
    assert lines[1] == "carol@example.org: 0 messages, 0 B copied, 0 skipped, verified"
    assert lines[2].startswith(f"migrated 2 users: {len(expected)} messages, ")
    assert total > 600_000 and f", {report.size(total)} copied" in lines[0]

    assert stored(dsn, "alice@example.org") == expected  # UIDLs, sizes, bytes, order
    assert stored(dsn, "carol@example.org") == []
    assert message_files(alice) == before  # a copy: the source is untouched

    second = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "--all")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"alice@example.org: 0 messages, 0 B copied, {len(expected)} skipped, verified",
        "carol@example.org: 0 messages, 0 B copied, 0 skipped, verified",
        f"2 users, nothing more to copy: all {len(expected)} messages were there already, "
        "verified",
    ]
    assert stored(dsn, "alice@example.org") == expected


def test_mbox_spool_is_copied_with_its_uidls(tmp_path, dsn):
    spools = tmp_path / "spool"
    spools.mkdir()
    (spools / "alice").write_bytes(SPOOL)
    before = SPOOL
    description = f"mbox:{spools}/%u"
    expected = served(description, "alice")
    assert len(expected) == 4
    assert expected[1][0] == b"legacy-qpopper-uidl-0001"  # the X-UIDL header kept
    assert expected[0][0] != expected[2][0]  # two identical messages, two UIDLs
    assert b">From" not in expected[0][2]  # un-quoted, as RETR serves it

    result = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice")
    assert result.returncode == 0, result.stderr
    octets = report.size(sum(size for _, size, _ in expected))
    assert result.stdout.splitlines()[0] == (f"alice: 4 messages, {octets} copied, 0 skipped, "
                                             "verified")
    assert stored(dsn, "alice") == expected
    assert (spools / "alice").read_bytes() == before

    again = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice")
    assert again.returncode == 0, again.stderr
    assert "0 messages, 0 B copied, 4 skipped, verified" in again.stdout
    assert stored(dsn, "alice") == expected


def test_the_enumerated_mbox_users_skip_lock_files(tmp_path, dsn):
    spools = tmp_path / "spool"
    spools.mkdir()
    (spools / "alice").write_bytes(SPOOL)
    (spools / "bob").write_bytes(b"")
    (spools / "carol.lock").write_bytes(b"1234\n")  # an MTA's dotlock, left over
    (spools / "alice.popgate-lock").write_bytes(b"")
    (spools / "notes").write_bytes(b"not a spool\n")
    result = migrate("--from", f"mbox:{spools}/%u", "--to", f"postgresql:dsn={dsn}", "--all",
                     "--dry-run")
    assert result.returncode == 0, result.stderr
    octets = report.size(sum(size for _, size, _ in served(f"mbox:{spools}/%u", "alice")))
    assert result.stdout.splitlines() == [
        f"alice: would copy 4 messages, {octets}; 0 already there",
        "bob: would copy 0 messages, 0 B; 0 already there",
        f"dry run, nothing written: 2 users, would copy 4 messages, {octets}; 0 already there",
    ]
    assert sql(dsn, "SELECT count(*) FROM popgate_messages") == [(0,)]


def test_an_interrupted_run_is_finished_by_the_next(tmp_path, dsn, monkeypatch):
    """A failure injected at the 4th insert: the first three are kept, the
    next run copies the rest once, in the source's order."""
    mail = tmp_path / "mail"
    maildir(mail / "example.org" / "alice", MAILDIR_MESSAGES)
    description = f"maildir:{mail}/%d/%n"
    expected = served(description, "alice@example.org")
    reactor = start_reactor()
    store = source.build_store(description, reactor)
    settings = parse_target(f"postgresql:dsn={dsn}")
    lines: list[str] = []

    def write(text: str) -> None:
        lines.extend(text.splitlines())

    broken = target.open_target(settings)
    real_add = broken.add
    calls = []

    def failing_add(mailbox: int, uidl: bytes, data: Any) -> bool:
        calls.append(uidl)
        if len(calls) == 4:
            raise OSError("injected: the disk went away")
        return real_add(mailbox, uidl, data)

    monkeypatch.setattr(broken, "add", failing_add)
    try:
        status = run(command.migrate_all, reactor, store, broken, ["alice@example.org"], False,
                     write, timeout=60)
    finally:
        broken.close()
    assert status == command.EX_FAILED
    assert "not copied: database error: injected: the disk went away" in lines[0]
    assert stored(dsn, "alice@example.org") == expected[:3]

    lines.clear()
    fine = target.open_target(settings)
    try:
        status = run(command.migrate_all, reactor, store, fine, ["alice@example.org"], False,
                     write, timeout=60)
    finally:
        fine.close()
    assert status == command.EX_OK, lines
    assert lines[0].startswith(f"alice@example.org: {len(expected) - 3} messages, ")
    assert lines[0].endswith(" copied, 3 skipped, verified")
    assert stored(dsn, "alice@example.org") == expected


def test_a_killed_run_is_finished_by_the_next(tmp_path, dsn):
    """SIGKILL once the first batch is committed: the next run copies the
    rest, nothing twice."""
    count = 3000
    body = b"Subject: n\n\nline\n"
    root = maildir(tmp_path / "mail" / "alice", [])
    for i in range(count):
        (root / "new" / f"{1700000000 + i}.M{i}P1.host").write_bytes(body)
    description = f"maildir:{tmp_path}/mail/%u"
    args = [sys.executable, "-m", "popgate.cli", "migrate", "--from", description,
            "--to", f"postgresql:dsn={dsn}", "alice"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=child_env(), cwd=REPO)
    deadline = time.monotonic() + 60
    copied = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            copied = sql(dsn, "SELECT count(*) FROM popgate_messages")[0][0]
            if copied >= target.BATCH_MESSAGES:
                break
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    killed_at = sql(dsn, "SELECT count(*) FROM popgate_messages")[0][0]
    assert killed_at < count, "the run finished before it could be killed: make it bigger"
    assert killed_at % target.BATCH_MESSAGES == 0  # whole batches only

    result = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(f"{killed_at} skipped, verified")
    uidls = [u for (u,) in sql(dsn, "SELECT uidl FROM popgate_messages ORDER BY id")]
    assert len(uidls) == len(set(uidls)) == count
    assert uidls == sorted(uidls)  # the source's order, across the two runs


def test_a_tampered_row_fails_verification(tmp_path, dsn):
    mail = tmp_path / "mail"
    maildir(mail / "alice", MAILDIR_MESSAGES)
    description = f"maildir:{mail}/%u"
    assert migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice"
                   ).returncode == 0
    sql(dsn, "UPDATE popgate_messages SET wire_size = wire_size + 1 "
             "WHERE uidl = '1700000000.M1P10.host'")
    sql(dsn, "DELETE FROM popgate_chunks WHERE seq = 1 AND message_id = "
             "(SELECT id FROM popgate_messages WHERE uidl = '1700000005.M6P10.host')")
    result = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice")
    assert result.returncode == 1
    line = result.stdout.splitlines()[0]
    assert line.startswith(f"alice: 0 messages, 0 B copied, {len(MAILDIR_MESSAGES)} skipped, "
                           "NOT VERIFIED: ")
    size = wire_size(MAILDIR_MESSAGES[0][2])
    assert f"UIDL 1700000000.M1P10.host is {size} octets in the source, {size + 1} in the target" \
        in line
    assert "UIDL 1700000005.M6P10.host: its chunk rows hold " in line
    assert "1 user not done (see above)" in result.stdout.splitlines()[-1]

    sql(dsn, "DELETE FROM popgate_messages WHERE uidl = '1700000002.M3P10.host'")
    sql(dsn, "UPDATE popgate_messages SET wire_size = wire_size - 1 "
             "WHERE uidl = '1700000000.M1P10.host'")
    sql(dsn, "DELETE FROM popgate_messages WHERE uidl = '1700000005.M6P10.host'")
    repaired = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "alice")
    assert repaired.returncode == 0, repaired.stdout  # the missing ones copied again
    assert repaired.stdout.splitlines()[0].endswith(" copied, 6 skipped, verified")


def test_unknown_users_and_empty_mailboxes(tmp_path, dsn):
    mail = tmp_path / "mail"
    maildir(mail / "empty", [])
    users = tmp_path / "users"
    users.write_text("# who\nempty\n\nnobody   # never had mail\n")
    result = migrate("--from", f"maildir:{mail}/%u", "--to", f"postgresql:dsn={dsn}",
                     "--users-from", str(users))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "empty: 0 messages, 0 B copied, 0 skipped, verified",
        f"nobody: no mailbox at {mail}/nobody: nothing to copy",
        "2 users, nothing to copy",
    ]
    assert not (mail / "nobody").exists()  # no Maildir created
    assert sql(dsn, "SELECT name FROM popgate_mailboxes") == [("empty",)]


def test_a_locked_old_mailbox_is_reported_and_left_for_the_next_run(tmp_path, dsn):
    mail = tmp_path / "mail"
    root = maildir(mail / "alice", MAILDIR_MESSAGES[:2])
    maildir(mail / "bob", MAILDIR_MESSAGES[:1])
    description = f"maildir:{mail}/%u"
    fd = os.open(root / "popgate-pop3.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a POP3 session on the old server holds it
        held = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "--all")
    finally:
        os.close(fd)
    assert held.returncode == 1
    assert held.stdout.splitlines()[0] == (
        "alice: in use (a POP3 session holds the old mailbox): not copied, run again when it "
        "has ended")
    assert held.stdout.splitlines()[1].startswith("bob: 1 message, ")
    later = migrate("--from", description, "--to", f"postgresql:dsn={dsn}", "--all")
    assert later.returncode == 0, later.stdout
    assert later.stdout.splitlines()[0].startswith("alice: 2 messages, ")


def test_a_new_mailbox_in_use_is_not_copied_into(tmp_path, dsn):
    import psycopg

    from popgate.stores.postgresql import lock_key

    mail = tmp_path / "mail"
    maildir(mail / "alice", MAILDIR_MESSAGES[:2])
    with psycopg.connect(dsn, autocommit=True) as session:
        mailbox = pg_schema.mailbox_id(session.cursor(), "alice")
        assert mailbox is not None
        session.execute("SELECT pg_advisory_lock(%s, %s)", (pg_schema.LOCK_CLASS,
                                                            lock_key(mailbox)))
        result = migrate("--from", f"maildir:{mail}/%u", "--to", f"postgresql:dsn={dsn}",
                         "alice")
    assert result.returncode == 1
    assert "alice: not copied: the new mailbox is in use" in result.stdout
    assert sql(dsn, "SELECT count(*) FROM popgate_messages") == [(0,)]


def test_a_database_without_the_schema_is_refused(tmp_path):
    mail = tmp_path / "mail"
    maildir(mail / "alice", MAILDIR_MESSAGES[:1])
    with throwaway_database("popgate_migrate") as url:
        result = migrate("--from", f"maildir:{mail}/%u", "--to", f"postgresql:dsn={url}",
                         "alice")
        assert result.returncode == 1
        assert result.stderr == ("popgate migrate: the database has no popgate schema: create "
                                 "it first with `popgate db init --store "
                                 "postgresql:dsn=...`\n")
        dry = migrate("--from", f"maildir:{mail}/%u", "--to", f"postgresql:dsn={url}",
                      "alice", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        size = wire_size(MAILDIR_MESSAGES[0][2])
        assert dry.stdout.splitlines()[0] == (f"alice: would copy 1 message, {size} B; 0 already "
                                              "there")
        assert sql(url, "SELECT to_regclass('popgate_schema')") == [(None,)]


def test_a_bad_command_line_is_one_line(tmp_path, dsn):
    result = migrate("--from", f"maildir:{tmp_path}/%n", "--to", f"postgresql:dsn={dsn}",
                     "--all")
    assert result.returncode == 2
    assert result.stderr.startswith("popgate migrate: --all cannot tell the users from ")
    result = migrate("--from", "bogus:x", "--to", f"postgresql:dsn={dsn}", "alice")
    assert result.returncode == 2
    assert result.stderr.startswith("popgate migrate: --from: unknown store type 'bogus'")
    help_text = migrate("--help")
    assert help_text.returncode == 0
    assert "this is a copy, not a move" in " ".join(help_text.stdout.split())


def test_copy_reads_a_message_once_in_chunks(tmp_path, dsn):
    """A multi-megabyte message is read through the store's source in
    READ_SIZE pieces into one buffer and stored in CHUNK_SIZE rows."""
    big = b"Subject: huge\n\n" + b"x" * 77 + b"\n"
    big = big * (3 * source.READ_SIZE // len(big))
    mail = tmp_path / "mail"
    maildir(mail / "alice", [("new", "1700000000.M1P1.host", big)])
    reactor = start_reactor()
    store = source.build_store(f"maildir:{mail}/%u", reactor)
    reads: list[int] = []
    real = source.read_all

    def counting(opened: Any) -> bytearray:
        original = opened.read

        def read(size: int) -> bytes:
            chunk: bytes = original(size)
            reads.append(len(chunk))
            return chunk

        opened.read = read
        return real(opened)

    tgt = target.open_target(parse_target(f"postgresql:dsn={dsn}"))
    try:
        source.read_all = counting  # type: ignore[assignment]
        result = run(copy.migrate_user, reactor, store, tgt, "alice", timeout=60)
    finally:
        source.read_all = real  # type: ignore[assignment]
        tgt.close()
    assert result.outcome == "verified"
    assert max(reads) <= source.READ_SIZE and len(reads) >= 3
    ((uidl, size, body),) = stored(dsn, "alice")
    assert body == big and size == wire_size(big)
    chunks = sql(dsn, "SELECT count(*) FROM popgate_chunks")[0][0]
    assert chunks == -(-len(big) // pg_schema.CHUNK_SIZE)


def test_clients_see_the_same_uidls_on_the_new_store(tmp_path, dsn):
    """After the migration a POP3 client's UIDL list (and LIST, and every
    RETR) on a popgate serving PostgreSQL is the one it had on the old
    Maildir store: a client leaving mail on the server downloads nothing
    again."""
    import poplib

    from popgate.cred.schemes import hash_password
    from tests.popgate_server import PopgateProcess

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice@example.org:{hash_password('secret', rounds=4, prefix=False)}\n")
    mail = tmp_path / "mail"
    maildir(mail / "example.org" / "alice", MAILDIR_MESSAGES)
    old_store = f"maildir:{mail}/%d/%n"
    result = migrate("--from", old_store, "--to", f"postgresql:dsn={dsn}", "--all")
    assert result.returncode == 0, result.stdout + result.stderr

    def session(store: str) -> tuple[list[bytes], list[bytes], list[list[bytes]]]:
        args = ["--auth", f"htpasswd:{htpasswd}", "--store", store]
        with PopgateProcess(args, log_path=str(tmp_path / f"{store[:4]}.log")) as server:
            client = poplib.POP3("127.0.0.1", server.port, timeout=30)
            try:
                client.user("alice@example.org")
                client.pass_("secret")
                uidls = client.uidl()[1]
                sizes = client.list()[1]
                bodies = [client.retr(n)[1] for n in range(1, len(uidls) + 1)]
                client.quit()  # nothing marked: nothing deleted
            finally:
                client.close()
        return uidls, sizes, bodies

    old = session(old_store)
    new = session(f"postgresql:dsn={dsn}")
    assert len(old[0]) == len(MAILDIR_MESSAGES)
    assert new == old


def test_an_unreadable_message_is_reported_and_the_rest_copied(tmp_path, dsn, monkeypatch):
    from popgate import errors

    mail = tmp_path / "mail"
    maildir(mail / "alice", MAILDIR_MESSAGES[:3])
    reactor = start_reactor()
    store = source.build_store(f"maildir:{mail}/%u", reactor)
    real = source.read_message

    async def read_message(maildrop: Any, index: int, reactor: Any) -> bytearray:
        if index == 1:
            raise errors.PermanentFailure("message 1700000001.M2P10.host was removed")
        return await real(maildrop, index, reactor)

    monkeypatch.setattr(source, "read_message", read_message)
    tgt = target.open_target(parse_target(f"postgresql:dsn={dsn}"))
    try:
        result = run(copy.migrate_user, reactor, store, tgt, "alice", timeout=60)
    finally:
        tgt.close()
    assert (result.outcome, result.copied, result.unreadable) == ("not verified", 2, 1)
    assert result.problems == ["UIDL 1700000001.M2P10.host cannot be read: message "
                               "1700000001.M2P10.host was removed"]
    assert [u for u, _, _ in stored(dsn, "alice")] == [b"1700000000.M1P10.host",
                                                       b"1700000002.M3P10.host"]


RSS_PROBE = """\
import atexit, resource, sys
atexit.register(lambda: sys.stderr.write(
    "maxrss %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
from popgate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_big_message_is_held_once(tmp_path, dsn):
    """The peak memory of copying a 48 MB message is about one copy of it
    over that of copying nothing (ru_maxrss, KiB)."""
    mail = tmp_path / "mail"
    maildir(mail / "empty", [])
    root = maildir(mail / "alice", [])
    size = 48 << 20
    line = b"x" * 76 + b"\n"
    with open(root / "new" / "1700000000.M1P1.big", "wb") as f:
        f.write(b"Subject: big\n\n")
        for _ in range(size // len(line)):
            f.write(line)

    def peak(user: str) -> int:
        done = subprocess.run([sys.executable, "-c", RSS_PROBE, "migrate", "--from",
                               f"maildir:{mail}/%u", "--to", f"postgresql:dsn={dsn}", user],
                              capture_output=True, text=True, env=child_env(), cwd=REPO,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[0].endswith(" verified")
        return int(done.stderr.rsplit("maxrss ", 1)[1]) * 1024

    grew = peak("alice") - peak("empty")
    assert grew < 1.5 * size, f"{grew / size:.2f} times the message"
