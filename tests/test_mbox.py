"""
The mbox store: reading spools as Postfix local(8) and Exim write them
(From_ quoting, separator blank lines, exact POP3 sizes), stable UIDLs,
locking against the MTAs and other sessions, appending, and a rewrite at
QUIT that is safe whichever step fails or is killed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from popgate import errors
from popgate.stores import mboxappend, mboxfile, mboxlock
from popgate.stores.mbox import MboxStore, parse_argstring
from popgate.wire import wire_size
from tests.helpers import InlineReactor, connect, make_portal

FROM = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n"

CORPUS: dict[str, bytes] = {
    "plain": b"Subject: plain\n\nhello\n",
    "from-lines": b"Subject: quoting\n\nFrom the start\n>From quoted once\n>>From twice\nFromage\n",
    "no-final-newline": b"Subject: x\n\nno newline at the end",
    "crlf": b"Subject: crlf\r\n\r\nbody\r\nFrom here\r\n",
    "bare-cr": b"Subject: cr\n\nbare\rcr\n",
    "eightbit": b"Subject: 8bit\n\n\xe9t\xe9 \xff\x00 nul\n",
    "dots": b"Subject: dots\n\n.\n..\n.x\n",
    "blank-end": b"Subject: blank at the end\n\nbody\n\n\n",
    "long-line": b"Subject: long\n\n" + b"x" * 200_000 + b"\nFrom after a long line\n",
    "many-gt": b"Subject: gt\n\n" + b">" * 70_000 + b"From \n",
    "content-length": b"Subject: cl\nContent-Length: 3\n\nmuch longer than three octets\n",
}



def released(store: MboxStore, key: str) -> bool:
    """Whether no session of this process holds C{key}."""
    try:
        store.sessions.acquire(key)
    except errors.MaildropInUse:
        return False
    store.sessions.release(key)
    return True

def expected_read(message: bytes) -> bytes:
    """What popgate reads back after appending C{message}: it gains a
    final newline if it had none (as with Postfix)."""
    return message if message.endswith(b"\n") or not message else message + b"\n"


def run(d: Any) -> Any:
    """The result of an already-fired Deferred (InlineReactor)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def store(tmp_path: Path) -> MboxStore:
    return MboxStore(parse_argstring(f"{tmp_path}/%u,lock_timeout=0.3"), reactor=InlineReactor())


def spool(tmp_path: Path, user: str = "alice") -> Path:
    return tmp_path / user


def read_all(store: MboxStore, user: str = "alice") -> list[bytes]:
    maildrop = run(store.open_maildrop(user))
    try:
        out = []
        for i in range(len(maildrop.list_messages())):
            with maildrop.open_message(i) as f:
                out.append(f.read())
        return out
    finally:
        maildrop.close()


# -- reading what the MTAs write


POSTFIX_SPOOL = (
    b"From alice@example.org  Mon Mar  2 10:00:00 2026\n"
    b"Return-Path: <alice@example.org>\n"
    b"Delivered-To: bob@example.org\n"
    b"Subject: first\n"
    b"\n"
    b">From the quoted line\n"
    b"body\n"
    b"\n"
    b"From MAILER-DAEMON  Mon Mar  2 10:01:00 2026\n"
    b"Subject: second\n"
    b"\n"
    b"ends with a blank line\n"
    b"\n"
    b"\n"
)


def test_reads_a_spool_as_postfix_writes_it(store, tmp_path):
    spool(tmp_path).write_bytes(POSTFIX_SPOOL)
    first = (b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\nSubject: first\n\n"
             b"From the quoted line\nbody\n")
    second = b"Subject: second\n\nends with a blank line\n\n"
    assert read_all(store) == [first, second]
    maildrop = run(store.open_maildrop("alice"))
    assert [m.size for m in maildrop.list_messages()] == [wire_size(first), wire_size(second)]
    maildrop.close()


def test_unquoting_is_mboxrd():
    assert mboxfile.unquote(b">From x\n", True) == b"From x\n"
    assert mboxfile.unquote(b">>From x\n", True) == b">From x\n"
    assert mboxfile.unquote(b">From x\n", False) == b">From x\n"  # not at a line start
    assert mboxfile.unquote(b">Fromage\n", True) == b">Fromage\n"
    assert mboxfile.quote(b"From a\n>From b\n>>From c\nx From d\n") == \
        b">From a\n>>From b\n>>>From c\nx From d\n"


def _unquote_by_line(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(mboxfile.unquote(line, True) for line in lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b">", b">>", b"From ", b"From", b"F", b"rom ", b"x", b"\n",
                                 b"\r\n", b">Fromage", b" "]), max_size=60),
       st.lists(st.integers(1, 40), min_size=1, max_size=30))
@example(parts=[b"x\n", b">From y\n", b">>From z"], cuts=[40])
@example(parts=[b">From y\n"], cuts=[40])
def test_chunked_unquoting_is_the_line_by_line_rule(parts, cuts):
    # The RETR reader un-quotes whole chunks; wherever the chunks are cut,
    # the result is the per-line mboxrd rule's.
    data = b"".join(parts)
    unquoter = mboxfile.Unquoter()
    out, pos, sizes = [], 0, iter(cuts * 50)
    while pos < len(data):
        size = next(sizes, 1000)
        out.append(unquoter.feed(data[pos:pos + size]))
        pos += size
    out.append(unquoter.finish())
    assert b"".join(out) == _unquote_by_line(data)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_append_then_read_is_exact(store, tmp_path, name):
    message = CORPUS[name]
    run(store.deliver("alice", message, "sender@example.org"))
    run(store.deliver("alice", b"Subject: next\n\nnext\n", None))
    got = read_all(store)
    assert got == [expected_read(message), b"Subject: next\n\nnext\n"]
    maildrop = run(store.open_maildrop("alice"))
    assert [m.size for m in maildrop.list_messages()] == [wire_size(g) for g in got]
    maildrop.close()


def test_content_length_is_ignored(store, tmp_path):
    spool(tmp_path).write_bytes(FROM + b"Content-Length: 1\n\nabc\nFrom x\n")
    # The unquoted "From x" line is a separator: Content-Length does not
    # make it part of the first message.
    got = read_all(store)
    assert got[0] == b"Content-Length: 1\n\nabc\n"
    assert len(got) == 2


def test_appended_entries_have_a_from_line_and_a_blank_line(store, tmp_path):
    run(store.deliver("alice", b"a\n", "s@x"))
    run(store.deliver("alice", b"b", ""))
    data = spool(tmp_path).read_bytes()
    assert re.fullmatch(rb"From s@x \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\na\n\n"
                        rb"From MAILER-DAEMON .{24}\nb\n\n", data), data


def test_append_after_a_spool_without_final_blank_line(store, tmp_path):
    spool(tmp_path).write_bytes(FROM + b"Subject: x\n\nno newline")
    run(store.deliver("alice", b"second\n", "s@x"))
    assert read_all(store) == [b"Subject: x\n\nno newline\n", b"second\n"]


def test_text_before_the_first_from_line_is_refused(store, tmp_path):
    spool(tmp_path).write_bytes(b"garbage\n" + FROM + b"x\n")
    with pytest.raises(errors.PermanentFailure):
        run(store.open_maildrop("alice"))
    assert released(store, str(spool(tmp_path)))


def test_leading_blank_lines_are_tolerated(store, tmp_path):
    spool(tmp_path).write_bytes(b"\n\n" + FROM + b"x\n")
    assert read_all(store) == [b"x\n"]


def test_missing_and_empty_spools_are_empty_maildrops(store, tmp_path):
    assert read_all(store) == []
    spool(tmp_path).write_bytes(b"")
    assert read_all(store) == []


def test_reader_reads_in_small_pieces(store, tmp_path):
    message = CORPUS["from-lines"] + CORPUS["long-line"]
    run(store.deliver("alice", message, "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    f = maildrop.open_message(0)
    out = b""
    while chunk := f.read(7):
        out += chunk
    f.close()
    maildrop.close()
    assert out == message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 70_000), st.integers(0, 3)), max_size=40))
def test_cached_reads_mixed_with_blocking_reads_give_the_message(store, tmp_path, monkeypatch, steps):
    # read_cached in the reactor thread, read in a pool thread, alternating
    # as the page cache allows: the same octets in the same order.
    message = CORPUS["from-lines"] + CORPUS["many-gt"] + CORPUS["long-line"]
    if not spool(tmp_path).exists():
        run(store.deliver("alice", message, "s@x"))
    cached = iter(steps)

    def pread_cached(fd: int, size: int, offset: int) -> bytes | None:
        hit, short, _ = next(cached, (True, size, 0))
        return os.pread(fd, min(size, short), offset) if hit else None

    monkeypatch.setattr(mboxfile.nowait, "pread_cached", pread_cached)
    maildrop = run(store.open_maildrop("alice"))
    out = []
    with maildrop.open_message(0) as f:
        for _, size, how in steps:
            piece = f.read_cached(size) if how else f.read(size)
            assert piece is None or len(piece) <= size
            out.append(piece or b"")
        out.append(f.read())
    maildrop.close()
    assert b"".join(out) == message


def test_a_message_survives_closing_the_maildrop_mid_read(store, tmp_path):
    run(store.deliver("alice", b"abc\n", "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    f = maildrop.open_message(0)
    maildrop.close()
    assert f.read() == b"abc\n"
    f.close()


def test_retr_over_pop3_is_byte_exact(store, tmp_path):
    run(store.deliver("alice", CORPUS["from-lines"], "s@x"))
    portal, _ = make_portal(store)
    session = connect(portal)
    session.take()
    session.login()
    reply = session.send(b"LIST 1\r\nRETR 1\r\nQUIT\r\n")
    body = CORPUS["from-lines"].replace(b"\n", b"\r\n")
    assert reply.startswith(b"+OK 1 %d\r\n" % len(body))
    assert body + b".\r\n" in reply


# -- UIDL


def test_uidls_are_stable_and_survive_deletions(store, tmp_path):
    for i in range(4):
        run(store.deliver("alice", b"Subject: %d\n\nbody\n" % i, "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    first = [m.uid for m in maildrop.list_messages()]
    maildrop.close()
    maildrop = run(store.open_maildrop("alice"))
    assert [m.uid for m in maildrop.list_messages()] == first
    run(maildrop.commit([1]))
    maildrop = run(store.open_maildrop("alice"))
    assert [m.uid for m in maildrop.list_messages()] == [first[0], first[2], first[3]]
    maildrop.close()
    assert len(set(first)) == 4 and all(len(u) <= 70 for u in first)


def test_identical_copies_have_unique_ids_that_stay_put(store, tmp_path):
    entry = FROM + b"Subject: same\n\nsame\n\n"
    spool(tmp_path).write_bytes(entry * 3)
    maildrop = run(store.open_maildrop("alice"))
    ids = [m.uid for m in maildrop.list_messages()]
    assert len(set(ids)) == 3
    run(maildrop.commit([0]))
    maildrop = run(store.open_maildrop("alice"))
    assert [m.uid for m in maildrop.list_messages()] == ids[1:]
    run(maildrop.commit([0]))
    spool(tmp_path).write_bytes(spool(tmp_path).read_bytes() + entry)  # a new copy arrives
    maildrop = run(store.open_maildrop("alice"))
    later = [m.uid for m in maildrop.list_messages()]
    maildrop.close()
    assert later[0] == ids[2]
    assert later[1] not in ids  # never a deleted copy's id


def test_x_uidl_header_is_used_when_unique(store, tmp_path):
    spool(tmp_path).write_bytes(
        FROM + b"X-UIDL: abc123\nSubject: a\n\nX-UIDL: not-a-header\n\n"
        + FROM + b"X-UIDL: abc123\nSubject: duplicate id\n\nb\n\n"
        + FROM + b"Subject: c\n\nc\n")
    maildrop = run(store.open_maildrop("alice"))
    ids = [m.uid for m in maildrop.list_messages()]
    maildrop.close()
    assert ids[0] == b"abc123"
    assert ids[1] != b"abc123" and len(set(ids)) == 3


def test_x_uidl_can_be_turned_off(tmp_path):
    store = MboxStore(parse_argstring(f"{tmp_path}/%u,xuidl=no"), reactor=InlineReactor())
    spool(tmp_path).write_bytes(FROM + b"X-UIDL: abc123\n\nx\n")
    maildrop = run(store.open_maildrop("alice"))
    assert maildrop.list_messages()[0].uid != b"abc123"
    maildrop.close()


# -- locking


def test_second_session_is_refused_in_process(store):
    maildrop = run(store.open_maildrop("alice"))
    with pytest.raises(errors.MaildropInUse):
        run(store.open_maildrop("alice"))
    maildrop.close()
    run(store.open_maildrop("alice")).close()


def test_second_session_is_refused_across_processes(store, tmp_path):
    other = MboxStore(parse_argstring(f"{tmp_path}/%u"), reactor=InlineReactor())
    maildrop = run(store.open_maildrop("alice"))
    with pytest.raises(errors.MaildropInUse):  # another store: only the flock says no
        run(other.open_maildrop("alice"))
    maildrop.close()
    run(other.open_maildrop("alice")).close()


def test_lockdir_holds_the_session_lock(tmp_path):
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    store = MboxStore(parse_argstring(f"{tmp_path}/%u,lockdir={lockdir}"), reactor=InlineReactor())
    run(store.open_maildrop("alice")).close()
    flat = str(tmp_path).strip("/").replace("/", "%2F")
    assert [p.name for p in lockdir.iterdir()] == [f"{flat}%2Falice.popgate-lock"]
    assert not (tmp_path / "alice.popgate-lock").exists()


def test_a_held_dotlock_makes_login_and_delivery_wait_then_fail_temporarily(store, tmp_path):
    lock = tmp_path / "alice.lock"
    lock.write_bytes(b"")
    started = time.monotonic()
    with pytest.raises(errors.TemporaryFailure):
        run(store.open_maildrop("alice"))
    with pytest.raises(errors.TemporaryFailure):
        run(store.deliver("alice", b"x\n", "s@x"))
    assert time.monotonic() - started >= 0.5
    assert lock.exists()  # someone else's lock is left alone
    assert released(store, str(spool(tmp_path)))


def test_a_stale_dotlock_is_removed(store, tmp_path):
    lock = tmp_path / "alice.lock"
    lock.write_bytes(b"")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    run(store.deliver("alice", b"x\n", "s@x"))
    assert read_all(store) == [b"x\n"]
    assert not lock.exists()


@pytest.mark.integration
def test_an_fcntl_lock_held_by_another_process_blocks_delivery(store, tmp_path):
    path = spool(tmp_path)
    path.write_bytes(b"")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "MTA": a classic fcntl lock, as Postfix and Exim take
        try:
            fd = os.open(path, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(write_end, b"x")
            time.sleep(1.5)
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        with pytest.raises(mboxlock.LockTimeout):
            run(store.deliver("alice", b"x\n", "s@x"))
    finally:
        os.waitpid(pid, 0)
    run(store.deliver("alice", b"x\n", "s@x"))
    assert read_all(store) == [b"x\n"]


@pytest.mark.integration
def test_no_permission_for_the_dotlock_is_a_temporary_failure(request):
    """A spool directory popgate may not write to (no group mail): the
    delivery is deferred with a message saying why, never bounced."""
    spool_dir = Path(tempfile.mkdtemp(prefix="popgate-mbox-"))  # not under a 0700 tmp_path
    spool_dir.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(spool_dir, ignore_errors=True))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)  # nobody: may not write to the directory
            else:
                spool_dir.chmod(0o555)
            try:
                mboxappend.append_to_spool(str(spool_dir / "alice"), b"x\n", "s@x",
                                     mboxlock.LockSettings(timeout=0.2))
            except errors.TemporaryFailure as e:
                code = 0 if "dotlock" in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_dotlock_can_be_turned_off(tmp_path):
    store = MboxStore(parse_argstring(f"{tmp_path}/%u,dotlock=no"), reactor=InlineReactor())
    (tmp_path / "alice.lock").write_bytes(b"")
    run(store.deliver("alice", b"x\n", "s@x"))
    assert read_all(store) == [b"x\n"]


def test_mta_locks_are_not_held_during_a_session(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    assert not (tmp_path / "alice.lock").exists()
    fd = os.open(spool(tmp_path), os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the MTA does: works at once
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    maildrop.close()


# -- delivery during a session, and the rewrite at QUIT


def test_mail_arriving_during_a_session_is_neither_shown_nor_lost(store, tmp_path):
    for name in ("one", "two", "three"):
        run(store.deliver("alice", b"Subject: %s\n\n%s\n" % (name.encode(), name.encode()), "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    assert len(maildrop.list_messages()) == 3
    run(store.deliver("alice", b"Subject: late\n\nlate\n", "s@x"))
    assert len(maildrop.list_messages()) == 3
    run(maildrop.commit([0, 2]))
    assert read_all(store) == [b"Subject: two\n\ntwo\n", b"Subject: late\n\nlate\n"]


def test_deleting_everything_leaves_an_empty_spool(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    run(maildrop.commit([0]))
    assert spool(tmp_path).read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "alice.popgate-lock"]


def test_commit_without_deletions_does_not_touch_the_spool(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    before = os.stat(spool(tmp_path))
    maildrop = run(store.open_maildrop("alice"))
    run(maildrop.commit([]))
    assert os.stat(spool(tmp_path)).st_ino == before.st_ino
    assert released(store, str(spool(tmp_path)))


def test_rewrite_keeps_owner_and_mode(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    run(store.deliver("alice", b"two\n", "s@x"))
    os.chmod(spool(tmp_path), 0o660)
    if os.geteuid() == 0:
        os.chown(spool(tmp_path), 65534, 8)
    maildrop = run(store.open_maildrop("alice"))
    run(maildrop.commit([0]))
    st = os.stat(spool(tmp_path))
    assert stat.S_IMODE(st.st_mode) == 0o660
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 8)
    assert read_all(store) == [b"two\n"]


def test_rewrite_refuses_when_another_program_changed_the_spool(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    run(store.deliver("alice", b"two\n", "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    data = spool(tmp_path).read_bytes()
    with open(spool(tmp_path), "r+b") as f:  # a mail reader edits in place
        f.write(data.replace(b"one", b"ONE"))
    with pytest.raises(errors.TemporaryFailure):
        run(maildrop.commit([1]))
    assert spool(tmp_path).read_bytes() == data.replace(b"one", b"ONE")
    assert released(store, str(spool(tmp_path)))


def test_rewrite_refuses_when_the_spool_was_replaced(store, tmp_path):
    run(store.deliver("alice", b"one\n", "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    data = spool(tmp_path).read_bytes()
    replacement = tmp_path / "new"
    replacement.write_bytes(data)
    os.rename(replacement, spool(tmp_path))
    with pytest.raises(errors.TemporaryFailure):
        run(maildrop.commit([0]))
    assert spool(tmp_path).read_bytes() == data


# -- crash safety: a failure, or a kill, at every step of the rewrite

_PATCHED = ("open", "read", "pread", "write", "fsync", "close", "rename", "replace", "unlink",
            "fstat", "stat", "fchown", "fchmod", "ftruncate", "link")


class _Fault(Exception):
    pass


def _patch_os(monkeypatch: pytest.MonkeyPatch, on_call: Callable[[str], None]) -> None:
    for name in _PATCHED:
        real = getattr(os, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if _name == "close":  # on Linux a failing close still frees the descriptor
                result = _real(*args, **kw)
                on_call(_name)
                return result
            on_call(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, wrapper)


MESSAGES = [b"Subject: m%d\n\nFrom body %d\nline\n" % (i, i) for i in range(5)]
DELETE = [1, 3]
LATE = b"Subject: late\n\nlate\n"


def _prepare(tmp_path: Path) -> tuple[MboxStore, Any]:
    store = MboxStore(parse_argstring(f"{tmp_path}/%u,lock_timeout=0.3"), reactor=InlineReactor())
    for message in MESSAGES:
        run(store.deliver("alice", message, "s@x"))
    maildrop = run(store.open_maildrop("alice"))
    run(store.deliver("alice", LATE, "s@x"))  # appended during the session
    return store, maildrop


def _check_after_crash(tmp_path: Path, killed: bool = False) -> None:
    """Every message not deleted is there exactly once (the deleted ones may
    still be there if the rename never happened), the late one too.  After
    a kill, whatever the dead process left is cleared by the next login,
    at once: no waiting for a stale time."""
    lock = tmp_path / "alice.lock"
    if not killed and lock.exists():
        lock.unlink()  # a live process's own lock, whose release was made to fail
    store = MboxStore(parse_argstring(f"{tmp_path}/%u"), reactor=InlineReactor())
    started = time.monotonic()
    got = read_all(store)
    assert time.monotonic() - started < 1.0
    kept = [m for i, m in enumerate(MESSAGES) if i not in DELETE]
    assert got in (MESSAGES + [LATE], kept + [LATE]), got
    assert not lock.exists() and not (tmp_path / ".alice.popgate-rewrite").exists()


def _count_rewrite_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    _, maildrop = _prepare(tmp_path / "count")
    calls: list[str] = []
    with monkeypatch.context() as m:
        _patch_os(m, calls.append)
        run(maildrop.commit(DELETE))
    assert calls.count("rename") == 1
    return len(calls)


def test_a_failure_at_any_step_of_the_rewrite_loses_nothing(tmp_path, monkeypatch):
    (tmp_path / "count").mkdir()
    steps = _count_rewrite_calls(tmp_path, monkeypatch)
    assert steps > 10
    for n in range(1, steps + 1):
        where = tmp_path / f"fail{n}"
        where.mkdir()
        store, maildrop = _prepare(where)
        calls: list[str] = []

        def on_call(name: str, calls: list[str] = calls, n: int = n) -> None:
            calls.append(name)
            if len(calls) == n:
                raise _Fault(f"injected at call {n} ({name})")

        with monkeypatch.context() as m:
            _patch_os(m, on_call)
            try:
                run(maildrop.commit(DELETE))
            except (_Fault, errors.TemporaryFailure):
                pass
        assert released(store, str(where / "alice"))
        _check_after_crash(where)


@pytest.mark.integration
def test_a_kill_at_any_step_of_the_rewrite_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL at each system call of the rewrite: the next login takes
    less than a second and finds every message exactly once."""
    (tmp_path / "count").mkdir()
    steps = _count_rewrite_calls(tmp_path, monkeypatch)
    left_locked = 0
    for n in range(1, steps + 1):
        where = tmp_path / f"kill{n}"
        where.mkdir()
        _, maildrop = _prepare(where)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child dies mid-rewrite
            calls = [0]

            def on_call(name: str, calls: list[int] = calls, n: int = n) -> None:
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)

            try:
                _patch_os(monkeypatch, on_call)
                run(maildrop.commit(DELETE))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (n, status)
        maildrop.close()
        left_locked += (where / "alice.lock").exists()
        _check_after_crash(where, killed=True)
    assert left_locked > steps // 2  # most kills hit while the dotlock was held


# -- configuration


def test_argstring_options():
    settings = parse_argstring("/var/mail/%u,lockdir=/run/popgate,lock_timeout=5,stale_lock=60,"
                               "dotlock=no,xuidl=no")
    assert settings.template == "/var/mail/%u"
    assert settings.lockdir == "/run/popgate"
    assert settings.locks == mboxlock.LockSettings(timeout=5.0, stale_after=60.0, dotlock=False)
    assert settings.xuidl is False
    assert parse_argstring("path=/var/mail/%u").template == "/var/mail/%u"


@pytest.mark.parametrize("bad", ["", "/var/mail/%x", "/var/mail/%u,color=red",
                                 "/var/mail/%u,dotlock=maybe", "/var/mail/%u,lock_timeout=soon",
                                 "/var/mail/%u,lockdir"])
def test_bad_argstrings_are_one_line_errors(bad):
    with pytest.raises(ValueError) as e:
        parse_argstring(bad)
    assert "\n" not in str(e.value)


def test_the_store_plugin_builds_an_mbox_store(tmp_path):
    from popgate.stores.registry import make_store

    reactor = InlineReactor()
    store = make_store(f"mbox:{tmp_path}/%u", reactor)
    assert isinstance(store, MboxStore)
    assert store._reactor is reactor


def test_user_names_cannot_leave_the_spool_directory(store):
    with pytest.raises(errors.InvalidUserName):
        run(store.open_maildrop("../etc/passwd"))
    with pytest.raises(errors.InvalidUserName):
        run(store.deliver("../x", b"x\n", "s@x"))


def test_symlinked_spool_is_not_followed(store, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.symlink(target, spool(tmp_path))
    with pytest.raises(errors.TemporaryFailure):
        run(store.deliver("alice", b"x\n", "s@x"))
    assert target.read_bytes() == b""


def test_parse_digest_covers_the_whole_snapshot(tmp_path):
    path = tmp_path / "box"
    path.write_bytes(POSTFIX_SPOOL)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hashlib.sha1()
        entries = mboxfile.parse(fd, len(POSTFIX_SPOOL), digest)
    finally:
        os.close(fd)
    assert digest.hexdigest() == hashlib.sha1(POSTFIX_SPOOL).hexdigest()
    assert entries[0].start == 0 and entries[-1].end == len(POSTFIX_SPOOL)
    assert entries[0].end == entries[1].start


# -- any message round-trips


_LINES = st.lists(st.sampled_from([b"From x", b">From x", b">>From", b"", b".", b"text", b"\xff\x00",
                                   b"From", b" From x", b"\r", b"a\rb", b"X-UIDL: u1"]), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_LINES, ending=st.sampled_from([b"\n", b"\r\n"]), final=st.booleans())
def test_any_message_round_trips_through_the_spool(tmp_path_factory, lines, ending, final):
    where = tmp_path_factory.mktemp("prop")
    store = MboxStore(parse_argstring(f"{where}/%u"), reactor=InlineReactor())
    message = ending.join(lines) + (ending if final and lines else b"")
    run(store.deliver("alice", message, "s@x"))
    run(store.deliver("alice", message, "s@x"))
    got = read_all(store)
    assert got == [expected_read(message)] * 2
    maildrop = run(store.open_maildrop("alice"))
    assert [m.size for m in maildrop.list_messages()] == [wire_size(g) for g in got]
    assert len({m.uid for m in maildrop.list_messages()}) == 2
    maildrop.close()


def test_a_new_spool_for_a_system_user_is_theirs(store, tmp_path):
    run(store.deliver("nobody", b"x\n", "s@x"))
    st = os.stat(tmp_path / "nobody")
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, os.stat(tmp_path).st_gid, 0o660)
    else:  # pragma: no cover
        assert stat.S_IMODE(st.st_mode) == 0o600
    run(store.deliver("nobody@example.org", b"x\n", "s@x"))
    assert stat.S_IMODE(os.stat(tmp_path / "nobody@example.org").st_mode) == 0o600


def test_a_user_whose_spool_directory_does_not_exist_has_an_empty_maildrop(tmp_path):
    store = MboxStore(parse_argstring(f"{tmp_path}/%d/%n"), reactor=InlineReactor())
    maildrop = run(store.open_maildrop("alice@new.example"))
    assert maildrop.list_messages() == []
    with pytest.raises(errors.MaildropInUse):
        run(store.open_maildrop("alice@new.example"))
    run(maildrop.commit([]))
    assert not (tmp_path / "new.example").exists()
    run(store.deliver("alice@new.example", b"x\n", "s@x"))  # the first delivery creates it
    assert read_all(store, "alice@new.example") == [b"x\n"]
