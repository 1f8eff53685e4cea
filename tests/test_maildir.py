"""
The Maildir store: snapshots, sizes, unique ids, the flock lock, UPDATE,
and other agents renaming or removing files under a session.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from popgate import errors, wire
from popgate.interfaces import IMaildrop, IMailStore
from popgate.maildrop import is_valid_uid
from popgate.pop3.encoder import encode_message
from popgate.stores import maildir, maildir_scan
from popgate.stores.maildir import MaildirMaildrop, MaildirStore, make_store
from popgate.wire import wire_size

from .helpers import InlineReactor, connect, make_portal

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def store(root: Path) -> MaildirStore:
    return MaildirStore(str(root / "%n"), reactor=InlineReactor())


def deliver(root: Path, name: str, data: bytes, user: str = "alice", subdir: str = "new") -> Path:
    box = root / user
    maildir.ensure_maildir(str(box))
    path = box / subdir / name
    path.write_bytes(data)
    return path


def opening(store: MaildirStore, user: str = "alice") -> defer.Deferred[MaildirMaildrop]:
    # A store may refuse at once (the in-process lock, a bad name): the
    # realm calls it through maybeDeferred, so do the same.
    return defer.maybeDeferred(store.open_maildrop, user)


def open_drop(store: MaildirStore, user: str = "alice") -> MaildirMaildrop:
    return successResultOf(opening(store, user))


def read(drop: MaildirMaildrop, index: int) -> bytes:
    f = drop.open_message(index)
    if isinstance(f, Deferred):
        f = successResultOf(f)
    try:
        return f.read()
    finally:
        f.close()


# -- plugin and creation


def test_make_store_needs_a_template() -> None:
    with pytest.raises(ValueError):
        make_store("", InlineReactor())
    with pytest.raises(ValueError):
        make_store("/var/mail/%x", InlineReactor())
    assert make_store("/var/mail/%d/%n", InlineReactor()).template == "/var/mail/%d/%n"


def test_interfaces(store: MaildirStore) -> None:
    verifyObject(IMailStore, store)
    drop = open_drop(store)
    verifyObject(IMaildrop, drop)
    drop.close()


def test_missing_maildir_is_created(store: MaildirStore, root: Path) -> None:
    drop = open_drop(store)
    for sub in ("cur", "new", "tmp"):
        path = root / "alice" / sub
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert drop.list_messages() == []
    assert (root / "alice" / maildir.LOCK_FILE).exists()
    drop.close()


def test_missing_maildir_without_create(root: Path) -> None:
    store = MaildirStore(str(root / "%n"), reactor=InlineReactor(), create=False)
    failureResultOf(opening(store), errors.PermanentFailure)
    assert not (root / "alice").exists()
    # The failed open released the in-process lock.
    maildir.ensure_maildir(str(root / "alice"))
    open_drop(store).close()


def test_invalid_user_name_is_refused(store: MaildirStore) -> None:
    failureResultOf(store.open_maildrop("../etc"), errors.InvalidUserName)


def test_unreadable_maildir_is_a_temporary_failure(store: MaildirStore, root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, "1.M1P1.h", b"a\n")
    real_listdir = os.listdir

    def listdir(path: Any) -> list[str]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "listdir", listdir)
    failureResultOf(opening(store), errors.TemporaryFailure)
    monkeypatch.setattr(os, "listdir", real_listdir)
    # Both locks were given back.
    drop = open_drop(store)
    assert len(drop.list_messages()) == 1
    drop.close()


# -- the snapshot


def test_snapshot_order_is_delivery_order_over_new_and_cur(store: MaildirStore, root: Path) -> None:
    deliver(root, "1000.M2P1.host", b"third\n", subdir="cur")
    deliver(root, "999.M5P1.host:2,S", b"first\n", subdir="cur")
    deliver(root, "1000.M1P1.host", b"second\n", subdir="new")
    deliver(root, "1000.P9Q1.host", b"also second\n", subdir="new")
    deliver(root, "weird-name", b"last\n", subdir="new")
    deliver(root, "1001.M0P1.host", b"fourth\n", subdir="new")
    drop = open_drop(store)
    contents = [read(drop, i) for i in range(len(drop.list_messages()))]
    assert contents == [b"first\n", b"also second\n", b"second\n", b"third\n", b"fourth\n", b"last\n"]
    drop.close()


def test_dot_files_and_tmp_are_ignored(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"a\n")
    deliver(root, ".hidden", b"b\n")
    deliver(root, "2.M1P1.h", b"being delivered\n", subdir="tmp")
    drop = open_drop(store)
    assert [m.uid for m in drop.list_messages()] == [b"1.M1P1.h"]
    drop.close()


def test_a_message_in_new_and_cur_at_once_is_listed_once(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"a\n", subdir="new")
    deliver(root, "1.M1P1.h:2,S", b"a\n", subdir="cur")
    drop = open_drop(store)
    assert [m.uid for m in drop.list_messages()] == [b"1.M1P1.h"]
    drop.close()


def test_sizes_are_crlf_octets(store: MaildirStore, root: Path) -> None:
    bodies = [b"a\nb\n", b"a\r\nb\r\n", b"a\rb", b"", b"x" * 200000 + b"\n" * 70000]
    for i, body in enumerate(bodies):
        deliver(root, f"{i + 1}.M1P1.h", body)
    drop = open_drop(store)
    assert [m.size for m in drop.list_messages()] == [wire_size(b) for b in bodies]
    for i, body in enumerate(bodies):
        assert encode_message([read(drop, i)]) == encode_message([body])
    drop.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"."]), max_size=40).map(b"".join),
       st.integers(1, 5))
def test_file_wire_size_across_read_chunks(tmp_path_factory: Any, data: bytes, chunk: int) -> None:
    path = tmp_path_factory.mktemp("sizes") / "m"
    path.write_bytes(data)
    original = wire._READ_CHUNK
    wire._READ_CHUNK = chunk
    try:
        assert maildir_scan.file_wire_size(str(path)) == wire_size(data)
    finally:
        wire._READ_CHUNK = original


def no_reading(path: str, dir_fd: int | None = None) -> int:
    raise AssertionError(f"read {path}")


def test_w_size_in_the_name_is_used_without_reading(store: MaildirStore, root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, "1.M1P1.h,S=3,W=4:2,S", b"a\nb", subdir="cur")
    deliver(root, "2.M1P1.h,S=10,W=12", b"a\nb")
    monkeypatch.setattr(maildir_scan, "file_wire_size", no_reading)
    drop = open_drop(store)
    assert [m.size for m in drop.list_messages()] == [4, 12]
    assert [m.uid for m in drop.list_messages()] == [b"1.M1P1.h,S=3,W=4", b"2.M1P1.h,S=10,W=12"]
    drop.close()


def test_size_cache_is_written_and_reused(store: MaildirStore, root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, "1.M1P1.h", b"one\ntwo\n")
    deliver(root, "2.M1P1.h:2,S", b"three\r\n", subdir="cur")
    drop = open_drop(store)
    first = drop.list_messages()
    drop.close()
    cache = (root / "alice" / maildir_scan.SIZE_CACHE).read_bytes()
    assert sorted(cache.splitlines()) == [b"1.M1P1.h 10", b"2.M1P1.h 7"]
    monkeypatch.setattr(maildir_scan, "file_wire_size", no_reading)
    # A flag change (new -> cur, :2,S) keeps the size and the uid.
    os.rename(root / "alice" / "new" / "1.M1P1.h", root / "alice" / "cur" / "1.M1P1.h:2,S")
    drop = open_drop(store)
    assert drop.list_messages() == first
    drop.close()


def test_size_cache_forgets_removed_messages(store: MaildirStore, root: Path) -> None:
    for i in range(1, 5):
        deliver(root, f"{i}.M1P1.h", b"x\n")
    open_drop(store).close()
    for i in range(1, 4):
        os.unlink(root / "alice" / "new" / f"{i}.M1P1.h")
    open_drop(store).close()
    cache = (root / "alice" / maildir_scan.SIZE_CACHE).read_bytes()
    assert cache == b"4.M1P1.h 3\n"


def test_bad_size_cache_lines_are_ignored(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"one\n")
    (root / "alice" / maildir_scan.SIZE_CACHE).write_bytes(b"garbage\n 5\n1.M1P1.h x\n\xff\xfe 3\n")
    drop = open_drop(store)
    assert [m.size for m in drop.list_messages()] == [5]
    drop.close()


def test_names_with_a_newline_cannot_poison_the_size_cache(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h\n2.M1P1.h", b"x" * 100)
    open_drop(store).close()
    deliver(root, "2.M1P1.h", b"y\n")
    drop = open_drop(store)
    assert sorted(m.size for m in drop.list_messages()) == [3, 100]
    drop.close()


def test_uids(store: MaildirStore, root: Path) -> None:
    long_name = "2." + "x" * 100
    deliver(root, "1.M1P1.host", b"a\n")
    deliver(root, long_name, b"b\n")
    deliver(root, "3.M1P1.h\u00e9", b"c\n")
    deliver(root, "4.M1 P1.h", b"d\n")
    drop = open_drop(store)
    ids = [m.uid for m in drop.list_messages()]
    drop.close()
    assert ids[0] == b"1.M1P1.host"
    assert all(is_valid_uid(uid) for uid in ids)
    assert len(set(ids)) == 4
    assert len(ids[1]) == 40
    assert ids[1] == maildir_scan.unique_id(long_name)
    # Stable: same names, same ids, in a new session.
    drop = open_drop(store)
    assert [m.uid for m in drop.list_messages()] == ids
    drop.close()


def test_unique_id_ignores_flags() -> None:
    assert maildir_scan.base_name("1.M1P1.h:2,RS") == "1.M1P1.h"
    assert maildir_scan.unique_id(maildir_scan.base_name("1.M1P1.h:2,S")) == maildir_scan.unique_id("1.M1P1.h")


# -- the lock


def test_second_open_is_in_use(store: MaildirStore) -> None:
    drop = open_drop(store)
    failureResultOf(opening(store), errors.MaildropInUse)
    drop.close()
    open_drop(store).close()


def test_flock_refuses_another_process_or_store(store: MaildirStore, root: Path) -> None:
    other = MaildirStore(str(root / "%n"), reactor=InlineReactor())
    drop = open_drop(store)
    failureResultOf(opening(other), errors.MaildropInUse)
    drop.close()
    drop = open_drop(other)
    failureResultOf(opening(store), errors.MaildropInUse)
    successResultOf(drop.commit([]))
    open_drop(store).close()


def test_close_is_idempotent(store: MaildirStore) -> None:
    drop = open_drop(store)
    drop.close()
    drop.close()
    open_drop(store).close()


def test_other_users_are_not_locked(store: MaildirStore) -> None:
    alice = open_drop(store, "alice")
    bob = open_drop(store, "bob")
    alice.close()
    bob.close()


# -- UPDATE


def test_commit_removes_only_the_deleted(store: MaildirStore, root: Path) -> None:
    paths = [deliver(root, f"{i}.M1P1.h", b"m%d\n" % i) for i in range(1, 4)]
    drop = open_drop(store)
    assert successResultOf(drop.commit([0, 2])) is None
    assert [p.exists() for p in paths] == [False, True, False]
    open_drop(store).close()  # released


def test_commit_with_nothing_deleted(store: MaildirStore, root: Path) -> None:
    path = deliver(root, "1.M1P1.h", b"a\n")
    drop = open_drop(store)
    successResultOf(drop.commit([]))
    assert path.exists()


def test_mail_delivered_after_open_is_not_listed_nor_deleted(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"a\n")
    drop = open_drop(store)
    late = deliver(root, "0.M1P1.h", b"late\n")
    assert len(drop.list_messages()) == 1
    assert read(drop, 0) == b"a\n"
    successResultOf(drop.commit([0]))
    assert late.exists()
    assert os.listdir(root / "alice" / "new") == ["0.M1P1.h"]


def test_deleting_a_file_already_gone_is_fine(store: MaildirStore, root: Path) -> None:
    path = deliver(root, "1.M1P1.h", b"a\n")
    keep = deliver(root, "2.M1P1.h", b"b\n")
    drop = open_drop(store)
    path.unlink()
    successResultOf(drop.commit([0]))
    assert keep.exists()


def test_a_message_renamed_by_another_agent_is_read_and_deleted(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"a\n")
    drop = open_drop(store)
    os.rename(root / "alice" / "new" / "1.M1P1.h", root / "alice" / "cur" / "1.M1P1.h:2,S")
    assert read(drop, 0) == b"a\n"
    successResultOf(drop.commit([0]))
    assert os.listdir(root / "alice" / "cur") == []
    assert os.listdir(root / "alice" / "new") == []


def test_a_removed_message_cannot_be_read(store: MaildirStore, root: Path) -> None:
    path = deliver(root, "1.M1P1.h", b"a\n")
    drop = open_drop(store)
    path.unlink()
    failureResultOf(drop.open_message(0), errors.PermanentFailure)
    drop.close()


def test_unlink_failure_fails_the_commit_and_releases(store: MaildirStore, root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bad = deliver(root, "1.M1P1.h", b"a\n")
    good = deliver(root, "2.M1P1.h", b"b\n")
    drop = open_drop(store)
    real_unlink = os.unlink

    def unlink(path: Any) -> None:
        if str(path) == str(bad):
            raise PermissionError(13, "Permission denied")
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    failureResultOf(drop.commit([0, 1]), errors.TemporaryFailure)
    assert bad.exists() and not good.exists()
    open_drop(store).close()


# -- through the protocol


def test_pop3_session_over_a_maildir(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"Subject: one\n\n.body\n")
    deliver(root, "2.M1P1.h,S=99,W=16", b"Subject: two\r\n\r\nx")
    portal, _ = make_portal(store)
    session = connect(portal)
    session.take()
    session.login()
    assert session.send(b"LIST\r\n") == b"+OK 2 messages:\r\n1 23\r\n2 16\r\n.\r\n"
    assert session.send(b"RETR 1\r\n") == b"+OK 23 octets\r\nSubject: one\r\n\r\n..body\r\n.\r\n"
    second = connect(portal)
    second.take()
    assert b"[IN-USE]" in second.send(b"USER alice\r\nPASS secret\r\n")
    assert session.send(b"DELE 1\r\nQUIT\r\n") == b"+OK Marked to be deleted.\r\n+OK Logging out, messages deleted.\r\n"
    session.lose()
    assert os.listdir(root / "alice" / "new") == ["2.M1P1.h,S=99,W=16"]
    second.login()


def test_mail_location_from_user_store_overrides_template(tmp_path):
    """An avatar id carrying a mail location (LDAP/SQL) opens that Maildir."""
    from popgate.cred.userinfo import AvatarId
    from popgate.errors import PermanentFailure
    from popgate.stores.maildir import MaildirStore

    store = MaildirStore(str(tmp_path / "template" / "%n"), InlineReactor())
    elsewhere = tmp_path / "elsewhere"
    assert store.maildir_for(AvatarId("alice", f"maildir:{elsewhere}")) == str(elsewhere)
    assert store.maildir_for(AvatarId("alice", str(elsewhere))) == str(elsewhere)
    assert store.maildir_for(AvatarId("alice")) == str(tmp_path / "template" / "alice")
    with pytest.raises(PermanentFailure):
        store.maildir_for(AvatarId("alice", "relative/path"))


def test_snapshot_reused_while_maildir_unchanged(tmp_path, monkeypatch):
    """A second login to an unchanged Maildir reuses the snapshot (two
    stat() calls, no scan); a delivery, or a directory changed too recently
    to trust its time stamp, forces a new scan."""
    from popgate.stores import maildir_snapshots

    root = tmp_path / "box"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / "1700000000.M1P1.host").write_bytes(b"Subject: a\n\nx\n")
    cache = maildir_snapshots.SnapshotCache()

    # Just delivered: the time stamps are too fresh to trust, no reuse.
    first = cache.get(str(root))
    assert len(first) == 1
    assert cache.get(str(root)) is not first

    old = 1_600_000_000
    for sub in ("cur", "new"):
        os.utime(root / sub, (old, old))
    kept = cache.get(str(root))
    real_scan = maildir_snapshots.scan
    monkeypatch.setattr(maildir_snapshots, "scan", lambda d: pytest.fail("rescanned an unchanged Maildir"))
    assert cache.get(str(root)) is kept

    monkeypatch.setattr(maildir_snapshots, "scan", real_scan)
    (root / "new" / "1700000001.M1P1.host").write_bytes(b"Subject: b\n\ny\n")
    assert [e.base for e in cache.get(str(root))] == ["1700000000.M1P1.host", "1700000001.M1P1.host"]


def test_snapshot_cache_is_bounded(tmp_path):
    from popgate.stores import maildir_snapshots

    cache = maildir_snapshots.SnapshotCache(budget=3)
    old = 1_600_000_000
    for n in range(3):
        root = tmp_path / f"box{n}"
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True)
        for i in range(2):
            (root / "new" / f"17000000{i:02d}.M1P1.host").write_bytes(b"x\n")
        for sub in ("cur", "new"):
            os.utime(root / sub, (old, old))
        cache.get(str(root))
    assert cache._held <= 3


def _aged_store(tmp_path):
    """A Maildir store on a L{CountingReactor}, with one message in
    C{alice}'s Maildir, whose directories are old enough for a snapshot
    to be kept."""
    from popgate.stores.maildir import MaildirStore
    from tests.test_output import CountingReactor

    reactor = CountingReactor()
    store = MaildirStore(str(tmp_path / "%n"), reactor=reactor)
    root = tmp_path / "alice"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / "1700000000.M1P1.h").write_bytes(b"a\n")
    old = 1_600_000_000
    for sub in ("cur", "new"):
        os.utime(root / sub, (old, old))
    return reactor, store, root


def test_open_with_a_kept_snapshot_needs_no_thread(tmp_path):
    """A login to a Maildir whose snapshot is kept is served inline (lock +
    two stat calls); a stale snapshot goes back to the thread pool."""
    reactor, store, root = _aged_store(tmp_path)
    drop = successResultOf(store.open_maildrop("alice"))
    assert reactor.pool.calls == 1
    successResultOf(drop.commit([]))
    drop = successResultOf(store.open_maildrop("alice"))
    assert reactor.pool.calls == 1  # served from the kept snapshot
    assert len(drop.list_messages()) == 1
    failureResultOf(store.open_maildrop("alice"), errors.MaildropInUse)
    drop.close()
    (root / "new" / "1700000001.M1P1.h").write_bytes(b"b\n")
    drop = successResultOf(store.open_maildrop("alice"))
    assert reactor.pool.calls == 2 and len(drop.list_messages()) == 2
    drop.close()


def test_what_the_kernel_has_not_cached_is_opened_in_a_thread(tmp_path, monkeypatch):
    """When an open could wait for the disk (nowait says None), the login
    with a kept snapshot and the RETR open both go to the thread pool."""
    from popgate.stores import nowait

    reactor, store, _ = _aged_store(tmp_path)
    successResultOf(successResultOf(store.open_maildrop("alice")).commit([]))
    assert reactor.pool.calls == 1
    monkeypatch.setattr(nowait, "open_cached", lambda path, flags: None)
    drop = successResultOf(store.open_maildrop("alice"))
    assert reactor.pool.calls == 2  # the kept snapshot, checked in a thread
    source = successResultOf(defer.maybeDeferred(drop.open_message, 0))
    assert reactor.pool.calls == 3
    assert source.read(10) == b"a\n"
    source.close()
    drop.close()


def test_a_message_is_read_from_the_page_cache_or_by_offset(store: MaildirStore, root: Path) -> None:
    deliver(root, "1.M1P1.h", b"0123456789")
    drop = open_drop(store)
    source = successResultOf(defer.maybeDeferred(drop.open_message, 0))
    assert source.blocking
    first = source.read_cached(4)
    assert first in (None, b"0123")  # None: the kernel would have waited
    rest = source.read(100) if first is None else b"0123" + source.read(100)
    assert rest == b"0123456789"
    assert source.read(100) == b"" and source.read_cached(100) in (None, b"")
    source.close()
    drop.close()


def test_scan_pauses_cyclic_collection_and_resumes(root: Path, monkeypatch: Any) -> None:
    """The scan builds its snapshot with the cyclic collector paused (a
    fresh 100k-message Maildir spent a third of its scan in collections),
    and leaves it as it found it, also when the scan fails."""
    import gc
    deliver(root, "1.M1P1.h", b"one\n")
    deliver(root, "2.M1P1.h", b"two\n")
    box = str(root / "alice")
    states = []
    real = maildir_scan.file_wire_size

    def sizing(path: str, dir_fd: int | None = None) -> int:
        states.append(gc.isenabled())
        return real(path, dir_fd)
    monkeypatch.setattr(maildir_scan, "file_wire_size", sizing)
    assert gc.isenabled()
    assert len(maildir_scan.scan(box)) == 2
    assert states == [False, False] and gc.isenabled()

    def broken(path: str, dir_fd: int | None = None) -> int:
        raise PermissionError(path)
    monkeypatch.setattr(maildir_scan, "file_wire_size", broken)
    os.remove(root / "alice" / maildir_scan.SIZE_CACHE)
    with pytest.raises(PermissionError):
        maildir_scan.scan(box)
    assert gc.isenabled()


def test_a_folder_removed_during_the_first_scan_lists_what_is_left(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The files are opened by name in their folder (one descriptor per
    # folder); a folder that goes between the listing and the sizing
    # takes its files with it, as a file that goes alone does.
    import shutil
    deliver(root, "1.M1P1.h", b"one\n")
    deliver(root, "2.M1P1.h:2,S", b"two\n", subdir="cur")
    box = root / "alice"
    listdir = os.listdir

    def listing_then_removing_new(path: Any) -> list[str]:
        names = listdir(path)
        if str(path).endswith("new"):
            shutil.rmtree(path)
        return names
    monkeypatch.setattr(os, "listdir", listing_then_removing_new)
    entries = maildir_scan.scan(str(box))
    assert [(e.subdir, e.base) for e in entries] == [("cur", "2.M1P1.h")]
    assert [e.info.size for e in entries] == [5]


def test_gc_pause_nests_and_keeps_a_disabled_collector_disabled() -> None:
    import gc

    from popgate.stores import gcpause
    with gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer section still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()  # someone else's choice stays
    finally:
        gc.enable()
