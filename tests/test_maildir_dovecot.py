"""
The Maildir store beside Dovecot, in memory: the dovecot-uidlist and
dovecot-keywords readers (malformed, truncated, huge, missing files),
pop3_uidl_format, the view a session gets (Dovecot's order and UIDLs,
soft-deleted messages hidden), the read marks RETR sets (when, and which),
soft deletion, LAST, and the store's options.  The same things against a
real Dovecot are in tests/test_dovecot_imap.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from popgate import errors
from popgate.maildrop import MessageInfo
from popgate.pop3.settings import SessionSettings
from popgate.stores import maildir_dovecot as dc
from popgate.stores.maildir import MaildirMaildrop, MaildirStore, make_store
from popgate.stores.maildir_delivery import ensure_maildir
from popgate.stores.maildir_scan import Entry

from .helpers import InlineReactor, connect, make_portal

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf

HEADER = "3 V1700000000 N100 G0123456789abcdef0123456789abcdef\n"


# -- pop3_uidl_format


def test_default_format_is_dovecots() -> None:
    parts = dc.parse_format(dc.DEFAULT_FORMAT)
    # Dovecot's %X is lower-case hexadecimal ("%llx"), zero-padded to 8.
    assert dc.expand(parts, 10, 1700000000, "f", "g") == "0000000a6553f100"
    assert dc.expand(parts, 2**32 - 2, 1, "f", "g") == "fffffffe00000001"


@pytest.mark.parametrize(("fmt", "expected"), [
    ("%u", "42"), ("%v-%u", "1700000000-42"), ("%f", "1.M2P3.h"), ("%g", "GUID"),
    ("%{uid}.%{uidvalidity}", "42.1700000000"), ("%{filename}", "1.M2P3.h"),
    ("%08Xu", "0000002a"), ("%3f", "1.M"), ("%Uf", "1.M2P3.H"), ("%Rf", "h.3P2M.1"),
    ("u%%%u", "u%42"), ("%04u", "0042"),
])
def test_formats(fmt: str, expected: str) -> None:
    assert dc.expand(dc.parse_format(fmt), 42, 1700000000, "1.M2P3.h", "GUID") == expected


@pytest.mark.parametrize(("fmt", "why"), [
    ("%m", "not supported"), ("%{md5}", "not supported"), ("%q", "unknown variable"),
    ("plain", "names no variable"), ("", "empty"), ("%u %v", "printable"),
])
def test_bad_formats(fmt: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        dc.parse_format(fmt)


# -- dovecot-uidlist


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_missing_uidlist(tmp_path: Path) -> None:
    assert dc.read_uidlist(str(tmp_path / "dovecot-uidlist")) is None


def test_uidlist_records(tmp_path: Path) -> None:
    path = write(tmp_path / "u", HEADER
                 + "1 :1.M1P1.h\n"
                 + "2 W120 S118 :2.M2P2.h\n"
                 + "3 P :3.M3P3.h\n"
                 + "4 Pexplicit-uidl G00aa O7 :4.M4P4.h\n"
                 + "5 :5 with space.h:2,S\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and uidlist.uidvalidity == 1700000000 and uidlist.skipped == 0
    r = uidlist.records
    assert r["1.M1P1.h"] == dc.Record(1, None, None, None)
    assert r["2.M2P2.h"].uid == 2
    assert r["3.M3P3.h"].pop3_uidl == ""
    assert r["4.M4P4.h"] == dc.Record(4, "explicit-uidl", "00aa", 7)
    assert r["5 with space.h"].uid == 5


def test_uidlist_version_1(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "1 1234 10\n7 7.M1P1.h\n8 8.M1P1.h\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and uidlist.uidvalidity == 1234
    assert uidlist.records["8.M1P1.h"].uid == 8


def test_uidlist_keeps_only_wanted(tmp_path: Path) -> None:
    path = write(tmp_path / "u", HEADER + "".join(f"{i} :{i}.h\n" for i in range(1, 1001)))
    uidlist = dc.read_uidlist(str(path), wanted={"5.h", "999.h", "nope"})
    assert uidlist is not None and set(uidlist.records) == {"5.h", "999.h"}


@pytest.mark.parametrize("bad", [
    "x :a.h", "0 :a.h", "-1 :a.h", "4294967295 :a.h", "12345678901 :a.h", "7 W1", "7 :",
    "7 :dir/a.h", "7", " 7 :a.h", "7:a.h",
])
def test_malformed_records_are_skipped(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path / "u", HEADER + "1 :one.h\n" + bad + "\n" + "9 :nine.h\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and uidlist.skipped == 1
    assert set(uidlist.records) == {"one.h", "nine.h"}


def test_uids_must_ascend(tmp_path: Path) -> None:
    path = write(tmp_path / "u", HEADER + "5 :five.h\n3 :three.h\n6 :six.h\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and set(uidlist.records) == {"five.h", "six.h"}


def test_a_later_record_for_a_name_wins(tmp_path: Path) -> None:
    """Dovecot: an expunged file moved back is appended with a new UID."""
    path = write(tmp_path / "u", HEADER + "5 :a.h\n9 :a.h\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and uidlist.records["a.h"].uid == 9


def test_a_half_written_last_line_is_not_used(tmp_path: Path) -> None:
    """Dovecot appends in place: the last line may be cut."""
    path = write(tmp_path / "u", HEADER + "1 :one.h\n2 :two.h-but-cut")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and set(uidlist.records) == {"one.h"} and uidlist.skipped == 0


def test_an_over_long_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = write(tmp_path / "u", HEADER + "1 :one.h\n2 :" + "x" * 100_000 + "\n3 :three.h\n")
    uidlist = dc.read_uidlist(str(path))
    assert uidlist is not None and set(uidlist.records) == {"one.h", "three.h"}
    assert uidlist.skipped == 1


@pytest.mark.parametrize("header", [
    "", "garbage\n", "3 N5\n", "3 V0 N5\n", "3 Vx N5\n", "2 V1 N5\n", "1 x y\n",
    "3 V1 N5",  # no newline: half written
])
def test_a_bad_header_means_nothing_is_listed(tmp_path: Path, header: str) -> None:
    path = write(tmp_path / "u", header + ("1 :one.h\n" if header.endswith("\n") else ""))
    assert dc.read_uidlist(str(path)) is None


def test_a_huge_uidlist_is_refused_not_misread(tmp_path: Path) -> None:
    path = write(tmp_path / "u", HEADER + "1 :one.h\n" * 100)
    with pytest.raises(errors.TemporaryFailure, match="more than"):
        dc.read_uidlist(str(path), max_bytes=500)


def test_an_unreadable_uidlist_is_a_temporary_failure(tmp_path: Path) -> None:
    (tmp_path / "u").mkdir()  # reading a directory fails, even as root
    with pytest.raises(errors.TemporaryFailure):
        dc.read_uidlist(str(tmp_path / "u"))


# -- dovecot-keywords


def test_keywords(tmp_path: Path) -> None:
    path = write(tmp_path / "k", "0 $Junk\n2 $POP3Deleted\nbroken\n26 TooFar\nx Bad\n3 $junk\n"
                 "4 \n1 NonJunk")
    assert dc.read_keywords(str(path)) == {"$junk": "a", "$pop3deleted": "c", "nonjunk": "b"}
    assert dc.read_keywords(str(tmp_path / "missing")) == {}


# -- the view


def entry(name: str, subdir: str = "cur", size: int = 10) -> Entry:
    base = name.partition(":")[0]
    return Entry(subdir, name, base, MessageInfo.unchecked(base.encode(), size))


def test_view_order_and_uidls() -> None:
    entries = [entry("a.h:2,S"), entry("b.h"), entry("c.h:2,"), entry("d.h"), entry("e.h")]
    uidlist = dc.UidList(1700000000, {
        "a.h": dc.Record(3, None, None, None), "b.h": dc.Record(2, None, None, None),
        "c.h": dc.Record(9, "explicit", None, None), "d.h": dc.Record(1, None, None, 5)})
    options = dc.DovecotOptions(dc.parse_format("%u-%v"))
    view = dc.build_view(entries, uidlist, options, None)
    # POP3 order first (d.h: O5), then UID order; e.h, not listed, last
    # with its own UIDL.
    assert [(e.base, e.info.uid) for e in view.entries] == [
        ("d.h", b"1-1700000000"), ("b.h", b"2-1700000000"), ("a.h", b"3-1700000000"),
        ("c.h", b"explicit"), ("e.h", b"e.h")]
    assert view.unlisted == 1
    assert entries[0].info.uid == b"a.h"  # the snapshot itself is not changed


def test_view_keeps_uidls_unique() -> None:
    entries = [entry("a.h"), entry("b.h"), entry("c.h")]
    uidlist = dc.UidList(1, {"a.h": dc.Record(1, "same", None, None),
                             "b.h": dc.Record(2, "same", None, None),
                             "c.h": dc.Record(3, "same-2", None, None)})
    view = dc.build_view(entries, uidlist, dc.DovecotOptions(dc.parse_format("%u")), None)
    uids = [e.info.uid for e in view.entries]
    assert uids[0] == b"same" and len(set(uids)) == 3


def test_view_hides_the_soft_deleted() -> None:
    entries = [entry("a.h:2,Sc"), entry("b.h:2,S"), entry("c.h", "new")]
    view = dc.build_view(entries, None, dc.DovecotOptions(None, "$POP3Deleted"), "c")
    assert [e.base for e in view.entries] == ["b.h", "c.h"]


def test_a_p_field_that_is_not_a_pop3_uid_is_digested() -> None:
    entries = [entry("a.h")]
    uidlist = dc.UidList(1, {"a.h": dc.Record(1, "has\x01control", None, None)})
    view = dc.build_view(entries, uidlist, dc.DovecotOptions(dc.parse_format("%u")), None)
    assert len(view.entries[0].info.uid) == 40


# -- through the store and the protocol


@pytest.fixture
def box(tmp_path: Path) -> Path:
    ensure_maildir(str(tmp_path / "alice"))
    return tmp_path / "alice"


def put(box: Path, relative: str, data: bytes = b"Subject: x\n\nbody\n") -> Path:
    path = box / relative
    path.write_bytes(data)
    return path


def store_for(root: Path, options: str = "") -> MaildirStore:
    return make_store(f"{root}/%n{options}", InlineReactor())


def session(store: MaildirStore, settings: SessionSettings | None = None):  # type: ignore[no-untyped-def]
    portal, _ = make_portal(store)
    s = connect(portal, settings=settings)
    s.take()
    s.login()
    return s


def listing(box: Path) -> list[str]:
    return sorted(f"{sub}/{n}" for sub in ("new", "cur") for n in os.listdir(box / sub))


def test_retr_marks_read_at_quit(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    put(box, "cur/2.M1P1.h:2,F")
    put(box, "new/3.M1P1.h")
    s = session(store_for(box.parent))
    s.send(b"RETR 1\r\nRETR 2\r\nTOP 3 0\r\n")
    assert listing(box) == ["cur/2.M1P1.h:2,F", "new/1.M1P1.h", "new/3.M1P1.h"]  # not yet
    assert s.send(b"QUIT\r\n").startswith(b"+OK")
    # TOP marks nothing; the flags already there are kept, in order.
    assert listing(box) == ["cur/1.M1P1.h:2,S", "cur/2.M1P1.h:2,FS", "new/3.M1P1.h"]


def test_deleted_messages_get_no_mark(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    put(box, "new/2.M1P1.h")
    s = session(store_for(box.parent))
    s.send(b"RETR 1\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n")
    assert listing(box) == ["cur/2.M1P1.h:2,S"]


def test_rset_forgets_the_marks(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    put(box, "new/2.M1P1.h")
    s = session(store_for(box.parent))
    s.send(b"RETR 1\r\nRSET\r\nRETR 2\r\nQUIT\r\n")
    assert listing(box) == ["cur/2.M1P1.h:2,S", "new/1.M1P1.h"]


def test_marks_apply_when_the_connection_ends_without_quit(box: Path) -> None:
    """As Dovecot: the read marks are not UPDATE-state changes."""
    put(box, "new/1.M1P1.h")
    put(box, "new/2.M1P1.h")
    s = session(store_for(box.parent))
    s.send(b"RETR 1\r\nDELE 2\r\n")
    s.lose()
    assert listing(box) == ["cur/1.M1P1.h:2,S", "new/2.M1P1.h"]  # nothing deleted


def test_flag_updates_no_touches_nothing(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    s = session(store_for(box.parent, ",flag_updates=no"))
    s.send(b"RETR 1\r\nQUIT\r\n")
    assert listing(box) == ["new/1.M1P1.h"]


def test_a_message_expunged_during_the_session(box: Path) -> None:
    """IMAP expunges a message the session listed: RETR says so, and the
    read mark does not bring it back."""
    put(box, "new/1.M1P1.h")
    gone = put(box, "new/2.M1P1.h")
    s = session(store_for(box.parent))
    assert s.send(b"RETR 2\r\n").startswith(b"+OK")
    gone.unlink()
    assert s.send(b"RETR 2\r\n") == b"-ERR [SYS/PERM] Message is no longer available.\r\n"
    assert s.send(b"STAT\r\n").startswith(b"+OK 2 ")
    s.send(b"QUIT\r\n")
    assert listing(box) == ["new/1.M1P1.h"]


def test_last(box: Path) -> None:
    put(box, "cur/1.M1P1.h:2,S")
    put(box, "cur/2.M1P1.h:2,S")
    put(box, "new/3.M1P1.h")
    put(box, "new/4.M1P1.h")
    store = store_for(box.parent)
    assert session(store).send(b"LAST\r\nQUIT\r\n").startswith(b"-ERR")  # off by default
    s = session(store, SessionSettings(enable_last=True))
    assert s.send(b"LAST\r\n") == b"+OK 2\r\n"  # read before the session
    s.send(b"TOP 4 0\r\n")
    assert s.send(b"LAST\r\n") == b"+OK 2\r\n"  # TOP is no access
    s.send(b"RETR 3\r\n")
    assert s.send(b"LAST\r\n") == b"+OK 3\r\n"
    s.send(b"RETR 1\r\n")
    assert s.send(b"LAST x\r\n") == b"+OK 3\r\n"
    assert s.send(b"RSET\r\nLAST\r\n") == b"+OK\r\n+OK 0\r\n"
    s.send(b"RETR 1\r\n")
    assert s.send(b"LAST\r\n") == b"+OK 1\r\n"
    s.send(b"QUIT\r\n")
    # RSET forgot RETR 3; RETR 1 after it changes nothing (seen already).
    assert listing(box) == ["cur/1.M1P1.h:2,S", "cur/2.M1P1.h:2,S", "new/3.M1P1.h",
                            "new/4.M1P1.h"]


def uidl(s: Any) -> list[bytes]:
    lines: list[bytes] = s.send(b"UIDL\r\n").split(b"\r\n")
    return lines[1:-2]


def test_uidl_dovecot(box: Path) -> None:
    put(box, "new/1700000001.M1P1.h")
    put(box, "cur/1700000002.M1P1.h:2,S")
    put(box, "new/1700000003.M1P1.h")
    write(box / "dovecot-uidlist", HEADER + "7 :1700000002.M1P1.h\n8 :1700000001.M1P1.h\n")
    store = store_for(box.parent, ",uidl=dovecot")
    s = session(store)
    assert uidl(s) == [b"1 000000076553f100", b"2 000000086553f100",
                       b"3 1700000003.M1P1.h"]
    s.send(b"QUIT\r\n")
    # Dovecot lists the third message: its UIDL changes to Dovecot's.
    with open(box / "dovecot-uidlist", "a") as f:
        f.write("9 :1700000003.M1P1.h\n")
    assert uidl(session(store))[2] == b"3 000000096553f100"


def test_uidl_format_option(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    write(box / "dovecot-uidlist", HEADER + "12 :1.M1P1.h\n")
    s = session(store_for(box.parent, ",uidl=dovecot,uidl_format=%v.%u"))
    assert uidl(s) == [b"1 1700000000.12"]


def test_the_view_is_kept_while_nothing_changes(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(box, "new/1.M1P1.h")
    write(box / "dovecot-uidlist", HEADER + "1 :1.M1P1.h\n")
    store = store_for(box.parent, ",uidl=dovecot,flag_updates=no")
    old = 1_600_000_000  # time stamps old enough to trust (a kept snapshot)
    for sub in ("cur", "new"):
        os.utime(box / sub, (old, old))
    session(store).send(b"QUIT\r\n")
    reads: list[str] = []
    real = dc.read_uidlist
    def counting(*a: Any, **k: Any) -> Any:
        reads.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(dc, "read_uidlist", counting)
    session(store).send(b"QUIT\r\n")
    assert reads == []
    write(box / "dovecot-uidlist", HEADER + "2 :1.M1P1.h\n")
    assert uidl(session(store)) == [b"1 000000026553f100"]
    assert len(reads) == 1


def test_soft_delete_needs_the_keyword_registered(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    store = store_for(box.parent, ",deleted_flag=$POP3Deleted")
    s = session(store)
    assert s.send(b"DELE 1\r\nQUIT\r\n").endswith(
        b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n")
    assert listing(box) == ["new/1.M1P1.h"]
    write(box / "dovecot-keywords", "0 $Junk\n1 $pop3deleted\n")
    s = session(store)
    assert s.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n").endswith(
        b"+OK Logging out, messages deleted.\r\n")
    assert listing(box) == ["cur/1.M1P1.h:2,b"]  # kept for IMAP, not marked read
    assert session(store).send(b"STAT\r\n") == b"+OK 0 0\r\n"  # hidden from POP3


@pytest.mark.parametrize(("options", "why"), [
    (",flag_updates=maybe", "yes or no"), (",uidl=md5", "filename or dovecot"),
    (",uidl_format=%u", "needs uidl=dovecot"), (",uidl=dovecot,uidl_format=%m", "not supported"),
    (",deleted_flag=\\Deleted", "not an IMAP keyword"), (",deleted_flag=a b", "not an IMAP"),
    (",colour=blue", "unknown option"), (",flag_updates", "key=value"),
])
def test_bad_options(tmp_path: Path, options: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        make_store(f"{tmp_path}/%n{options}", InlineReactor())


def test_options(tmp_path: Path) -> None:
    store = make_store(f"{tmp_path}/%n,uidl=dovecot,flag_updates=no,deleted_flag=$POP3Deleted,"
                       "shared=no", InlineReactor())
    assert store.template == f"{tmp_path}/%n"
    assert not store.options.flag_updates
    assert store.options.dovecot.uidl == dc.parse_format(dc.DEFAULT_FORMAT)
    assert store.options.dovecot.deleted_keyword == "$POP3Deleted"
    assert make_store(f"{tmp_path}/%n", InlineReactor()).options.flag_updates


def test_a_second_close_while_marking_is_a_no_op(box: Path) -> None:
    put(box, "new/1.M1P1.h")
    store = store_for(box.parent)
    drop = successResultOf(store.open_maildrop("alice"))
    assert isinstance(drop, MaildirMaildrop)
    drop.retrieved(0)
    closing = drop.close()
    assert closing is not None
    successResultOf(closing)
    assert drop.close() is None
    assert listing(box) == ["cur/1.M1P1.h:2,S"]
    successResultOf(store.open_maildrop("alice")).close()  # the lock was released
