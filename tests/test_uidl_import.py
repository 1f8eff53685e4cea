"""
popgate uidl import/verify without outside services: matching, the side
files the Maildir and mbox stores read, the sources (a uidl list, a
dovecot-uidlist), and the command end to end on Maildir and mbox.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from pathlib import Path

import pytest

from popgate import cli
from popgate.stores import imported_uidls
from popgate.stores.maildir_dovecot import parse_format
from popgate.stores.maildir_scan import scan
from popgate.stores.maildir_snapshots import SnapshotCache
from popgate.stores.mbox import MboxStore, imported_uidls_path, parse_argstring
from popgate.uidl import sources
from popgate.uidl.match import match
from popgate.uidl.message import Message, describe, message_id


def msg(n: int, body: str = "") -> bytes:
    return (f"From: a@example.org\nMessage-ID: <m{n}@example.org>\nSubject: {n}\n\n"
            f"body {n}{body}\n").encode()


def maildir(root: Path, user: str, messages: list[bytes]) -> Path:
    d = root / user
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(messages):
        (d / "cur" / f"{1700000000 + i}.M{i}P1.host:2,S").write_bytes(data)
    return d


# -- message and match


def test_describe_compares_in_wire_form() -> None:
    lf, crlf = describe("a", b"a", msg(1)), describe("b", b"b", msg(1).replace(b"\n", b"\r\n"))
    assert lf.digest == crlf.digest and lf.size == crlf.size == len(msg(1)) + 5
    assert lf.message_id == "<m1@example.org>"


def test_message_id_folded_and_only_in_the_header() -> None:
    assert message_id(b"Message-Id:\n <x@y>\n\nMessage-ID: <z@y>\n") == "<x@y>"
    assert message_id(b"Subject: s\n\nMessage-ID: <z@y>\n") is None


def test_match_by_digest_then_message_id_and_size() -> None:
    old = [describe("u1", b"u1", msg(1)), describe("u2", b"u2", msg(2)),
           Message("u3", b"u3", size=describe("", b"", msg(3)).size, digest="other",
                   message_id="<m3@example.org>"),
           describe("u9", b"u9", msg(9))]
    new = [describe(f"k{i}", b"own%d" % i, msg(i)) for i in (1, 2, 3, 4)]
    m = match(old, new)
    assert [(o.key, n.key) for o, n in m.pairs] == [("u1", "k1"), ("u2", "k2"), ("u3", "k3")]
    assert m.how == ["digest", "digest", "message-id+size"]
    assert [o.key for o in m.old_unmatched] == ["u9"]
    assert [n.key for n in m.new_unmatched] == ["k4"]


def test_match_never_one_to_two() -> None:
    # Two identical new copies: the old UIDL goes to neither.
    m = match([describe("u1", b"u1", msg(1))],
              [describe("k1", b"k1", msg(1)), describe("k2", b"k2", msg(1))])
    assert m.pairs == [] and len(m.new_unmatched) == 2
    # Two old UIDLs for one Message-ID: neither is given out.
    m = match([Message("u1", b"u1", message_id="<m1@example.org>"),
               Message("u2", b"u2", message_id="<m1@example.org>")],
              [describe("k1", b"k1", msg(1))])
    assert m.pairs == [] and len(m.old_unmatched) == 2


def test_match_by_message_id_alone_for_a_list() -> None:
    m = match([Message("u2", b"u2", message_id="<m2@example.org>")],
              [describe(f"k{i}", b"k", msg(i)) for i in (1, 2)])
    assert [(o.key, n.key) for o, n in m.pairs] == [("u2", "k2")] and m.how == ["message-id"]


# -- the side file


def test_imported_uidls_round_trip_and_validity(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    imported_uidls.write(path, {"a b": b"X1", "c": b"X2"})
    assert imported_uidls.read(path) == {"a b": b"X1", "c": b"X2"}
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    for bad in ({"a": b"with space"}, {"a": b"x" * 71}, {"a": b""}, {"a": b"D", "b": b"D"}):
        with pytest.raises(ValueError):
            imported_uidls.write(path, bad)
    assert imported_uidls.read(path) == {"a b": b"X1", "c": b"X2"}  # unchanged
    imported_uidls.write(path, {})
    assert not os.path.exists(path)


def test_apply_keeps_uidls_unique() -> None:
    # c's own UIDL is the one imported for a: c gets another one.
    out = imported_uidls.apply(["a", "b", "c"], [b"a", b"b", b"X"], {"a": b"X", "b": b"Y"})
    assert out[:2] == [b"X", b"Y"] and out[2] not in (b"X", b"Y") and len(set(out)) == 3


def test_maildir_scan_serves_imported_uidls_and_the_cache_notices(tmp_path: Path) -> None:
    d = maildir(tmp_path, "ann", [msg(1), msg(2)])
    cache = SnapshotCache()
    before = [e.info.uid for e in cache.get(str(d))]
    imported_uidls.write(str(d / imported_uidls.MAILDIR_FILE), {"1700000000.M0P1.host": b"OLD1"})
    after = [e.info.uid for e in cache.get(str(d))]
    assert after == [b"OLD1", before[1]]
    assert [e.info.uid for e in scan(str(d))] == after


# -- sources


def test_from_list(tmp_path: Path) -> None:
    path = tmp_path / "l"
    path.write_text("# old server\nUID1 <m1@example.org>\n\nUID2 <m2@example.org>\n")
    assert [(m.uidl, m.message_id) for m in sources.from_list(str(path))] == \
        [(b"UID1", "<m1@example.org>"), (b"UID2", "<m2@example.org>")]
    path.write_text("UID1 <a>\nUID1 <b>\n")
    with pytest.raises(sources.SourceError, match="listed twice"):
        sources.from_list(str(path))
    path.write_text("UID1\n")
    with pytest.raises(sources.SourceError, match=":1:"):
        sources.from_list(str(path))
    with pytest.raises(sources.SourceError, match="cannot read"):
        sources.from_list(str(tmp_path / "missing"))


def test_from_dovecot_expands_the_format_and_reads_p_fields(tmp_path: Path) -> None:
    d = maildir(tmp_path, "ann", [msg(1), msg(2), msg(3)])
    (d / "dovecot-uidlist").write_text(
        "3 V1234 N4 G0\n"
        "1 :1700000000.M0P1.host\n"
        "2 Pkept-uidl :1700000001.M1P1.host\n")
    found = sources.from_dovecot(str(d), parse_format("%08Xu%08Xv"))
    assert [m.uidl for m in found] == [b"00000001000004d2", b"kept-uidl"]
    assert found[0].digest == describe("", b"", msg(1)).digest
    assert not (d / "popgate-sizes").exists()  # the old Maildir is not written


# -- the command, end to end


def run(*argv: str) -> int:
    return cli.main(["uidl", *argv])


def test_import_from_list_into_maildir_is_idempotent(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = maildir(tmp_path / "mail", "ann", [msg(1), msg(2), msg(3)])
    (tmp_path / "ann.list").write_text("OLD-1 <m1@example.org>\nOLD-2 <m2@example.org>\n"
                                       "OLD-9 <gone@example.org>\n")
    store = f"maildir:{tmp_path}/mail/%u"
    source = ("--from-list", f"{tmp_path}/%u.list")
    assert run("verify", "--store", store, *source, "ann") == 1
    out = capsys.readouterr().out
    assert "ann: NOT OK: 2 messages matched, 2 would be downloaded again" in out
    assert run("import", "--dry-run", "--store", store, *source, "ann") == 0
    assert "would change 2" in capsys.readouterr().out
    assert not (d / "popgate-uidls").exists()
    assert run("import", "--store", store, *source, "ann") == 0
    out = capsys.readouterr().out
    assert "ann: 3 old UIDLs, 2 matched (2 by message-id), changed 2; " \
           "1 old unmatched, 1 new unmatched" in out
    assert "old UIDL OLD-9: no matching message" in out
    first = (d / "popgate-uidls").read_bytes()
    assert run("import", "--store", store, *source, "ann") == 0
    assert "changed 0" in capsys.readouterr().out
    assert (d / "popgate-uidls").read_bytes() == first
    assert [e.info.uid for e in scan(str(d))][:2] == [b"OLD-1", b"OLD-2"]
    assert run("verify", "--store", store, *source, "ann") == 0
    assert "ann: ok: 2 messages matched, 0 would be downloaded again" in capsys.readouterr().out


def test_import_into_mbox_uses_a_side_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "ann"
    spool.write_bytes(b"".join(b"From a@example.org Thu Jan  1 00:00:00 2026\n" + msg(i) + b"\n"
                               for i in (1, 2)))
    before = spool.read_bytes()
    old = tmp_path / "old"
    maildir(old, "ann", [msg(1).replace(b"\n", b"\r\n"), msg(2)])
    (old / "ann" / "dovecot-uidlist").write_text(
        "3 V7 N3 G0\n1 :1700000000.M0P1.host\n2 :1700000001.M1P1.host\n")
    args = ("--store", f"mbox:{tmp_path}/%u", "--from-dovecot", f"{old}/%u",
            "--uidl-format", "%v.%u")
    assert run("import", *args, "ann") == 0
    assert "2 matched (2 by digest), changed 2" in capsys.readouterr().out
    assert spool.read_bytes() == before  # the spool is never rewritten
    settings = parse_argstring(f"{tmp_path}/%u")
    assert os.path.exists(imported_uidls_path(str(spool), None))
    opened = MboxStore(settings, None)._open(str(spool))
    try:
        assert opened.served == [b"7.1", b"7.2"]
    finally:
        for fd in (opened.lock_fd, opened.snapshot.fd):
            if fd is not None:
                os.close(fd)
    assert run("verify", *args, "ann") == 0


def test_bad_command_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"maildir:{tmp_path}/%u"
    assert run("import", "--store", store, "--from-pop3", "h", "ann") == 2
    assert "--passwords" in capsys.readouterr().err
    assert run("import", "--store", "memory:", "--from-list", f"{tmp_path}/%u", "ann") == 2
    assert run("import", "--store", store, "--from-dovecot", f"{tmp_path}/%u",
               "--uidl-format", "%m", "ann") == 2
    assert "--uidl-format" in capsys.readouterr().err
    assert run("import", "--store", store, "--from-list", f"{tmp_path}/%u") == 2
    # A missing Maildir is one user's failure, not a traceback.
    (tmp_path / "ann.l").write_text("A <a>\n")
    assert run("import", "--store", f"maildir:{tmp_path}/m/%u", "--from-list",
               f"{tmp_path}/%u.l", "ann") == 1
    assert "ann: not imported:" in capsys.readouterr().out


# -- PostgreSQL (a throwaway database)


@pytest.fixture
def pg_dsn() -> object:
    from tests.pg_database import throwaway_database

    with throwaway_database("popgate_uidl") as url:
        import psycopg

        from popgate.stores import pg_schema

        with psycopg.connect(url) as connection:
            pg_schema.upgrade(connection)
            with connection.cursor() as cursor:
                mailbox = pg_schema.mailbox_id(cursor, "ann")
                assert mailbox is not None
                for i, uidl in ((1, b"U1"), (2, b"U2"), (3, b"U3")):
                    pg_schema.insert_message(cursor, mailbox, msg(i), uidl)
            connection.commit()
        yield url


def pg_uidls(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as connection:
        return [u for (u,) in connection.execute(
            "SELECT uidl FROM popgate_messages ORDER BY id")]


@pytest.mark.integration
def test_import_into_postgresql_swaps_under_the_lock(pg_dsn: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    from popgate.stores import pg_schema
    from popgate.stores.postgresql import lock_key

    (tmp_path / "ann").write_text("U2 <m1@example.org>\nU1 <m2@example.org>\n")
    args = ("--store", f"postgresql:dsn={pg_dsn}", "--from-list", f"{tmp_path}/%u", "ann")
    with psycopg.connect(pg_dsn, autocommit=True) as session:
        row = session.execute("SELECT id FROM popgate_mailboxes").fetchone()
        assert row is not None
        (mailbox,) = row
        session.execute("SELECT pg_advisory_lock(%s, %s)",
                        (pg_schema.LOCK_CLASS, lock_key(mailbox)))
        assert run("import", *args) == 1
        assert "ann: not imported: in use by a POP3 session" in capsys.readouterr().out
    assert pg_uidls(pg_dsn) == ["U1", "U2", "U3"]
    assert run("import", *args) == 0
    assert "changed 2" in capsys.readouterr().out
    assert pg_uidls(pg_dsn) == ["U2", "U1", "U3"]
    assert run("import", *args) == 0
    assert "changed 0" in capsys.readouterr().out
    assert run("verify", *args) == 0


# -- the live POP3 source, against a stand-in for poplib's client


class FakePOP3:
    """What poplib.POP3 returns for a mailbox of (uidl, message with CRLF)."""

    def __init__(self, messages: list[tuple[bytes, bytes]]) -> None:
        self.messages = messages

    def list(self) -> tuple[bytes, builtins.list[bytes], int]:
        return b"+OK", [b"%d %d" % (i, len(m)) for i, (_, m) in enumerate(self.messages, 1)], 0

    def uidl(self) -> tuple[bytes, builtins.list[bytes], int]:
        return b"+OK", [b"%d %s" % (i, u) for i, (u, _) in enumerate(self.messages, 1)], 0

    def retr(self, n: int) -> tuple[bytes, builtins.list[bytes], int]:
        data = self.messages[n - 1][1]
        lines = data.split(b"\r\n")
        if data.endswith(b"\r\n"):
            lines.pop()  # poplib: the lines, without the CRLF each ended with
        return b"+OK", lines, 0

    def top(self, n: int, lines: int) -> tuple[bytes, builtins.list[bytes], int]:
        data = self.messages[n - 1][1]
        return b"+OK", data.split(b"\r\n\r\n")[0].split(b"\r\n") + [b""], 0


def test_pop3_source_retr_and_headers_only() -> None:
    from popgate.uidl.pop3source import Pop3Source

    crlf = [(b"A1", msg(1).replace(b"\n", b"\r\n")),
            (b"A2", b"Message-ID: <last@x>\r\n\r\nno newline at the end")]
    found = Pop3Source("h", 1)._read(FakePOP3(crlf))  # type: ignore[arg-type]
    new = [describe("k1", b"k1", msg(1)),
           describe("k2", b"k2", b"Message-ID: <last@x>\n\nno newline at the end")]
    m = match(found, new)
    assert m.how == ["digest", "digest"]
    heads = Pop3Source("h", 1, headers_only=True)._read(FakePOP3(crlf))  # type: ignore[arg-type]
    assert [(h.digest, h.message_id) for h in heads] == [(None, "<m1@example.org>"),
                                                         (None, "<last@x>")]
    assert match(heads, new).how == ["message-id+size", "message-id+size"]


def test_a_bad_user_name_is_that_users_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "l").write_text("A <a>\n")
    assert run("import", "--store", f"maildir:{tmp_path}/%u", "--from-list", f"{tmp_path}/l",
               "../etc", "a/b") == 1
    out = capsys.readouterr().out
    assert "../etc: not imported:" in out and "a/b: not imported:" in out
    assert "unexpected" not in out and "0 users imported, 2 not" in out


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_digest_is_the_same_whatever_the_chunks(chunk: int) -> None:
    from popgate import wire
    from popgate.uidl.message import Digester

    data = b"Message-ID: <a@b>\r\nX: bare\rcr\n\r\nbody\r\n\r\r\nlast\r"
    digester = Digester()
    for i in range(0, len(data), chunk):
        digester.add(data[i:i + chunk])
    whole = digester.message("k", b"k")
    assert whole.digest == hashlib.sha256(wire.to_crlf(data)).hexdigest()
    assert whole.size == wire.wire_size(data) and whole.message_id == "<a@b>"
