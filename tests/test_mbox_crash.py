"""
Crash recovery of the mbox store: a dotlock left by a dead process of this
host is broken at once, one whose owner cannot be checked only after the
stale time, a live owner's never; breaking is safe against a lock taken
meanwhile; a QUIT rewrite killed at any point costs the next login nothing
and every message is there exactly once (forked stores and real twistd).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.logger import capturedLogs, formatEvent

from popgate.cred.schemes import hash_password
from popgate.stores import mbox, mboxdotlock, mboxfile, mboxlock, mboxlockowner, mboxspool
from popgate.stores.mbox import MboxStore, parse_argstring
from popgate.stores.mboxlock import LockSettings
from popgate.stores.mboxlockowner import Owner
from tests.helpers import InlineReactor
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess

FROM = b"From s@x Thu Jan  1 00:00:00 2026\n"
QUICK = LockSettings(timeout=0.3)


def spool_with(tmp_path: Path, count: int = 3) -> str:
    path = tmp_path / "alice"
    path.write_bytes(b"".join(FROM + b"Subject: m%d\n\nbody %d\n\n" % (i, i) for i in range(count)))
    return str(path)


def fork(child: Callable[[], None]) -> int:
    """Run C{child} in a forked process; its exit status is 0 if it returned."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def die_holding_the_lock(spool: str) -> Callable[[], None]:
    def child() -> None:
        mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=2))  # never released

    return child


def held_by_a_live_child(spool: str) -> tuple[int, int]:
    """A child holding the dotlock until the returned pipe is written to."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> None:
        lock = mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=2))
        os.write(ready_w, b"x")
        os.read(go_r, 1)
        mboxdotlock.release_dotlock(lock)

    pid = fork(child)
    assert os.read(ready_r, 1) == b"x"
    for fd in (ready_r, ready_w, go_r):
        os.close(fd)
    return pid, go_w


def timed_acquire(spool: str, settings: LockSettings = QUICK) -> tuple[mboxdotlock.Dotlock, float]:
    started = time.monotonic()
    lock = mboxdotlock.acquire_dotlock(spool, settings)
    assert lock is not None
    return lock, time.monotonic() - started


def age(path: Path | str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- what popgate writes into its dotlock


def test_the_dotlock_names_its_owner_as_liblockfile_and_dovecot_read_it(tmp_path):
    spool = spool_with(tmp_path)
    lock = mboxdotlock.acquire_dotlock(spool, QUICK)
    data = Path(spool + ".lock").read_bytes()
    mboxdotlock.release_dotlock(lock)
    first, second, end = data.split(b"\n")
    host = mboxlockowner.this_host()
    assert first == b"%d:%s" % (os.getpid(), host.name.encode())  # atoi() reads the PID
    assert int(re.match(rb"\d+", data).group()) == os.getpid()
    assert end == b""
    assert re.fullmatch(rb"popgate boot=[0-9a-f-]+ pidns=\d+ start=\d+", second), second
    owner = mboxlockowner.parse_owner(data)
    assert (owner.pid, owner.host, owner.start) == (os.getpid(), host.name, host.start)
    assert not Path(spool + ".lock").exists()


@pytest.mark.parametrize("data, pid, host, start", [
    (b"", None, None, None),  # Postfix
    (b"1234\n", 1234, None, None),  # liblockfile
    (b"1234:mx1", 1234, "mx1", None),  # Dovecot
    (b"1234:mx1\npopgate boot=b pidns=7 start=55\n", 1234, "mx1", 55),
    (b"1234:mx1\npopgate boot=b pidns=7 start=5", 1234, "mx1", None),  # half written
    (b"garbage\n", None, None, None),
    (b"0:mx1\n", None, None, None),
    (b"99999999999:mx1\n", None, None, None),
    (b"12 34\n", None, None, None),
])
def test_parse_owner(data, pid, host, start):
    owner = mboxlockowner.parse_owner(data)
    assert (owner.pid, owner.host, owner.start) == (pid, host, start)


@pytest.mark.integration
def test_the_process_start_time_is_read_from_proc():
    state = mboxlockowner.process_state(os.getpid())
    assert state is not None and state[0] in "RS"
    assert state[1] == mboxlockowner.this_host().start
    assert mboxlockowner.process_state(dead_pid()) is None


def dead_pid() -> int:
    pid = fork(lambda: None)
    reap(pid)
    return pid


# -- the owner check


@pytest.mark.integration
def test_a_dead_owners_lock_is_broken_at_once(tmp_path):
    spool = spool_with(tmp_path)
    pid = fork(die_holding_the_lock(spool))
    assert reap(pid) == 0
    assert Path(spool + ".lock").read_bytes().startswith(b"%d:" % pid)
    with capturedLogs() as events:
        lock, took = timed_acquire(spool, LockSettings(timeout=20))
    assert took < 0.5
    assert Path(spool + ".lock").read_bytes().startswith(b"%d:" % os.getpid())
    mboxdotlock.release_dotlock(lock)
    lines = [formatEvent(e) for e in events]
    assert lines == [f"removed the dotlock {spool}.lock: its owner, process {pid}, is gone"]


@pytest.mark.integration
def test_an_exited_but_unreaped_owner_is_dead(tmp_path):
    spool = spool_with(tmp_path)
    pid = fork(die_holding_the_lock(spool))
    deadline = time.monotonic() + 5
    while (mboxlockowner.process_state(pid) or ("Z",))[0] != "Z":  # a zombie: kill(pid, 0) works
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        lock, took = timed_acquire(spool)
        mboxdotlock.release_dotlock(lock)
    finally:
        reap(pid)
    assert took < 0.2


@pytest.mark.integration
def test_a_live_owners_lock_is_waited_for_however_old(tmp_path):
    spool = spool_with(tmp_path)
    pid, go = held_by_a_live_child(spool)
    try:
        age(spool + ".lock", 3600)  # a live owner is never overridden (as liblockfile)
        started = time.monotonic()
        with pytest.raises(mboxlock.LockTimeout, match=f"held by process {pid}$"):
            mboxdotlock.acquire_dotlock(spool, QUICK)
        assert time.monotonic() - started >= 0.3
        assert Path(spool + ".lock").read_bytes().startswith(b"%d:" % pid)
    finally:
        os.write(go, b"x")
        os.close(go)
        assert reap(pid) == 0
    lock, took = timed_acquire(spool)  # released by its owner: free at once
    mboxdotlock.release_dotlock(lock)
    assert took < 0.2


def test_another_thread_of_this_process_is_a_live_owner(tmp_path):
    """An LMTP delivery and a QUIT rewrite in one popgate: same PID, same
    start time, and the lock is theirs."""
    spool = spool_with(tmp_path)
    held = mboxdotlock.acquire_dotlock(spool, QUICK)
    try:
        with pytest.raises(mboxlock.LockTimeout):
            mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=0.2))
    finally:
        mboxdotlock.release_dotlock(held)


UNCHECKABLE = {
    "foreign host": b"4242:elsewhere.example\npopgate boot=x pidns=1 start=1\n",
    "empty (Postfix)": b"",
    "pid without host (liblockfile)": b"%d\n" % os.getpid(),
    "unreadable garbage": b"\x00\xff lock\n",
}


@pytest.mark.parametrize("kind", sorted(UNCHECKABLE))
def test_a_lock_whose_owner_cannot_be_checked_waits_for_the_stale_time(tmp_path, kind):
    spool = spool_with(tmp_path)
    lock_file = Path(spool + ".lock")
    lock_file.write_bytes(UNCHECKABLE[kind])
    settings = LockSettings(timeout=0.2, stale_after=5)
    age(lock_file, 4)
    with pytest.raises(mboxlock.LockTimeout):
        mboxdotlock.acquire_dotlock(spool, settings)
    assert lock_file.read_bytes() == UNCHECKABLE[kind]
    age(lock_file, 6)
    lock, took = timed_acquire(spool, settings)
    mboxdotlock.release_dotlock(lock)
    assert took < 0.2


def test_the_default_stale_time_is_ten_minutes():
    host = mboxlockowner.this_host()
    now = time.time()
    foreign = UNCHECKABLE["foreign host"]
    assert mboxlockowner.stale_reason(foreign, now - 590, LockSettings(), host, now) is None
    why = mboxlockowner.stale_reason(foreign, now - 610, LockSettings(), host, now)
    assert why == "it belongs to host elsewhere.example and is 610 s old (stale_lock=600)"


def test_pid_reuse_is_told_by_the_start_time_popgate_records(tmp_path):
    """A lock naming this very process (alive) but another start time: it
    was written by an earlier process that had the same PID."""
    host = mboxlockowner.this_host()
    assert host.start is not None
    earlier = dataclasses.replace(host, start=host.start - 1)
    data = mboxlockowner.lock_content(earlier)
    assert mboxlockowner.owner_state(mboxlockowner.parse_owner(data), time.time(), host) == \
        (Owner.DEAD, f"its owner is gone: process {os.getpid()} is another process now")
    spool = spool_with(tmp_path)
    Path(spool + ".lock").write_bytes(data)
    lock, took = timed_acquire(spool)
    mboxdotlock.release_dotlock(lock)
    assert took < 0.2


@pytest.mark.integration
def test_pid_reuse_without_a_recorded_start_compares_the_mtime(tmp_path):
    """Dovecot's C{PID:HOST}: a live process that started after the lock
    was made is not the one that made it."""
    spool = spool_with(tmp_path)
    lock_file = Path(spool + ".lock")
    pid, go = held_by_a_live_child(str(tmp_path / "other"))  # some live process
    try:
        lock_file.write_bytes(b"%d:%s" % (pid, mboxlockowner.this_host().name.encode()))
        with pytest.raises(mboxlock.LockTimeout):  # made now, by a running process
            mboxdotlock.acquire_dotlock(spool, QUICK)
        age(lock_file, 60)  # made before that process started
        lock, took = timed_acquire(spool)
        mboxdotlock.release_dotlock(lock)
        assert took < 0.2
    finally:
        os.write(go, b"x")
        os.close(go)
        reap(pid)


def test_a_lock_from_before_the_last_boot_is_dead_another_boot_id_alone_is_not():
    host = mboxlockowner.this_host()
    if host.booted_at is None or host.boot_id is None:  # pragma: no cover - not Linux
        pytest.skip("no /proc/stat btime or boot_id")
    data = mboxlockowner.lock_content(dataclasses.replace(host, boot_id="an-earlier-boot"))
    owner = mboxlockowner.parse_owner(data)
    assert mboxlockowner.owner_state(owner, host.booted_at - 60, host)[0] is Owner.DEAD
    # Written since this boot: a machine of the same name sharing the spool.
    assert mboxlockowner.owner_state(owner, time.time(), host)[0] is Owner.UNKNOWN
    other_ns = mboxlockowner.lock_content(dataclasses.replace(host, pid_ns="1"))
    assert mboxlockowner.owner_state(mboxlockowner.parse_owner(other_ns), time.time(), host) == \
        (Owner.UNKNOWN, "it belongs to another PID namespace (container)")


@pytest.mark.integration
def test_a_delivery_breaks_a_dead_owners_lock_too(tmp_path):
    store = MboxStore(parse_argstring(f"{tmp_path}/%u"), reactor=InlineReactor())
    spool = spool_with(tmp_path)
    reap(fork(die_holding_the_lock(spool)))
    started = time.monotonic()
    failures: list[object] = []
    store.deliver("alice", b"Subject: late\n\nlate\n", "s@x").addErrback(failures.append)
    assert not failures and time.monotonic() - started < 0.5
    assert Path(spool).read_bytes().count(b"Subject: late") == 1


# -- breaking safely


@pytest.mark.integration
def test_a_live_lock_taken_while_breaking_is_put_back(tmp_path, monkeypatch):
    """Between looking at a dead owner's lock and moving it aside, someone
    else broke it and a live process took it anew: the live lock is linked
    back, with its inode, and the breaker keeps waiting."""
    spool = spool_with(tmp_path)
    lock_file = Path(spool + ".lock")
    reap(fork(die_holding_the_lock(spool)))
    live = mboxlockowner.lock_content(mboxlockowner.this_host())
    real_rename = os.rename
    fresh: list[int] = []

    def rename(src, dst):
        if src == str(lock_file) and not fresh:
            lock_file.unlink()
            lock_file.write_bytes(live)
            fresh.append(lock_file.stat().st_ino)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(mboxlock.LockTimeout):
        mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=0.2))
    assert fresh and lock_file.stat().st_ino == fresh[0] and lock_file.read_bytes() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "alice.lock"]


@pytest.mark.integration
def test_breakers_take_turns(tmp_path):
    spool = spool_with(tmp_path)
    reap(fork(die_holding_the_lock(spool)))
    turn = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(turn, fcntl.LOCK_EX)  # another breaker is at work
        with pytest.raises(mboxlock.LockTimeout):
            mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=0.2))
        assert Path(spool + ".lock").exists()
    finally:
        os.close(turn)
    lock, took = timed_acquire(spool)
    mboxdotlock.release_dotlock(lock)
    assert took < 0.2


def test_release_leaves_a_lock_that_replaced_ours(tmp_path):
    spool = spool_with(tmp_path)
    lock = mboxdotlock.acquire_dotlock(spool, QUICK)
    lock_file = Path(spool + ".lock")
    lock_file.unlink()
    lock_file.write_bytes(b"")  # someone broke ours and holds their own
    with capturedLogs() as events:
        mboxdotlock.release_dotlock(lock)
    assert lock_file.exists()
    assert [formatEvent(e) for e in events] == [
        f"the dotlock {spool}.lock was removed or replaced by another program while held"]


@pytest.mark.integration
def test_processes_racing_over_dead_owners_locks_never_share_the_lock(tmp_path):
    """Four processes take the lock in turn while eight others take it and
    die holding it: whoever breaks a dead owner's lock, exactly one
    process at a time holds it."""
    spool = spool_with(tmp_path)
    inside = tmp_path / "inside"

    def hold_once() -> mboxdotlock.Dotlock | None:
        lock = mboxdotlock.acquire_dotlock(spool, LockSettings(timeout=15))
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            os._exit(3)  # two holders at once
        os.close(fd)
        time.sleep(0.002)
        os.unlink(inside)
        return lock

    def taker() -> None:
        for _ in range(15):
            mboxdotlock.release_dotlock(hold_once())

    def dier() -> None:
        hold_once()  # and exit with the lock in place

    started = time.monotonic()
    takers = [fork(taker) for _ in range(4)]
    diers = []
    for _ in range(8):
        time.sleep(random.uniform(0, 0.03))
        diers.append(fork(dier))
    codes = [reap(pid) for pid in takers + diers]
    assert codes == [0] * 12
    assert time.monotonic() - started < 20


# -- leftovers of a killed rewrite


def test_a_leftover_rewrite_file_is_removed_at_login(tmp_path):
    spool = spool_with(tmp_path)
    leftover = Path(mboxspool.rewrite_path(spool))
    leftover.write_bytes(FROM + b"Subject: m0\n\nbody 0\n\n")  # a half-written copy
    store = MboxStore(parse_argstring(f"{tmp_path}/%u,lock_timeout=0.3"), reactor=InlineReactor())
    with capturedLogs() as events:
        opened: list[mbox.MboxMaildrop] = []
        store.open_maildrop("alice").addCallback(opened.append)
    assert not leftover.exists()
    assert len(opened[0].list_messages()) == 3
    assert [formatEvent(e) for e in events] == [
        f"removed {leftover}, left over from an interrupted QUIT (the spool is intact)"]
    opened[0].commit([0])
    assert spool_subjects(spool) == [b"m1", b"m2"]


def test_a_leftover_uidl_record_temp_file_is_overwritten(tmp_path):
    spool = tmp_path / "alice"
    spool.write_bytes((FROM + b"Subject: same\n\nsame\n\n") * 2)  # twins: the record is written
    record = Path(mbox.uidl_record_path(str(spool), None))
    Path(str(record) + ".tmp").write_bytes(b"half a record")
    store = MboxStore(parse_argstring(f"{tmp_path}/%u"), reactor=InlineReactor())
    opened: list[mbox.MboxMaildrop] = []
    store.open_maildrop("alice").addCallback(opened.append)
    opened[0].close()
    assert not Path(str(record) + ".tmp").exists()
    assert len(record.read_bytes().split()) == 4  # digest, next number, two ids


def spool_subjects(spool: str | Path) -> list[bytes]:
    fd = os.open(spool, os.O_RDONLY)
    try:
        entries = mboxfile.parse(fd, os.fstat(fd).st_size)
        return [re.search(rb"Subject: (\S+)", os.pread(fd, e.body_end - e.body_start, e.body_start))
                .group(1) for e in entries]
    finally:
        os.close(fd)


# -- the real server killed during a QUIT rewrite


PASSWORD = "crash test"
BODY = b"".join(b"line %04d " % i + b"y" * 990 + b"\n" for i in range(100))  # 100 KB
COUNT = 100
DELETE = (2, 5, 50, 99)  # message numbers


def fill(spool: Path) -> None:
    with open(spool, "wb") as f:
        f.writelines(FROM + b"Subject: m%d\n\n" % i + BODY + b"\n" for i in range(1, COUNT + 1))


def wait_for(path: Path, limit: float = 10) -> bool:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def start_quit(server: PopgateProcess) -> RawClient:
    client = RawClient(server.port)
    client.login(b"alice", PASSWORD.encode())
    for number in DELETE:
        assert client.cmd(b"DELE %d" % number).startswith(b"+OK")
    return client


@pytest.mark.integration
def test_the_real_server_killed_during_quit_costs_the_next_login_nothing(tmp_path):
    """
    Two popgate servers on one spool directory.  The first is SIGKILLed
    during the QUIT rewrite, at three points: waiting for the fcntl lock
    with the dotlock taken (an MTA holds the spool), once the rewrite file
    exists, and right after QUIT was sent.  The second one's next login
    answers within a second, and every message is there exactly once.
    """
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password(PASSWORD, rounds=4, prefix=False)}\n")
    mail = tmp_path / "mail"
    mail.mkdir()
    spool = mail / "alice"
    fill(spool)
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"mbox:{mail}/%n"]
    everything = [b"m%d" % i for i in range(1, COUNT + 1)]
    kept = [s for i, s in enumerate(everything, 1) if i not in DELETE]
    survivor = PopgateProcess(args, log_path=str(tmp_path / "survivor.log"))
    with survivor:
        for point in ("fcntl-wait", "rewrite-file", "at-once"):
            fill(spool)
            victim = PopgateProcess(args, log_path=str(tmp_path / f"victim-{point}.log"))
            with victim:
                client = start_quit(victim)
                mta = None
                if point == "fcntl-wait":
                    mta = os.open(spool, os.O_RDWR)
                    fcntl.lockf(mta, fcntl.LOCK_EX)  # as Postfix does while appending
                client.sock.sendall(b"QUIT\r\n")
                if point == "fcntl-wait":
                    assert wait_for(mail / "alice.lock")
                    time.sleep(0.1)
                elif point == "rewrite-file":
                    wait_for(Path(mboxspool.rewrite_path(str(spool))))
                victim.stop(signal.SIGKILL)
                assert victim.process is not None and victim.process.returncode == -signal.SIGKILL
                if mta is not None:
                    assert (mail / "alice.lock").exists()  # what kept logins out for minutes
                    os.close(mta)
                client.close()

            client = RawClient(survivor.port)
            assert client.cmd(b"USER alice").startswith(b"+OK")
            started = time.monotonic()
            reply = client.cmd(b"PASS " + PASSWORD.encode())
            took = time.monotonic() - started
            assert reply.startswith(b"+OK"), (point, reply, survivor.log())
            assert took < 1.0, (point, took)
            stat = client.cmd(b"STAT")
            assert client.cmd(b"QUIT").startswith(b"+OK")
            client.close()
            subjects = spool_subjects(spool)
            assert subjects in (everything, kept), point
            assert stat.startswith(b"+OK %d " % len(subjects)), (point, stat)
            assert not (mail / "alice.lock").exists()
            assert not Path(mboxspool.rewrite_path(str(spool))).exists()
    assert "Traceback" not in survivor.log()
