"""
EXPIRE enforced (RFC 2449 6.7), in memory with a fake clock, on Maildir
and mbox: the first RETR of a message starts its clock (TOP does not), a
later session's QUIT removes what was retrieved N days ago or more,
C{EXPIRE 0} removes at the QUIT of the retrieving session, C{NEVER} never;
a dropped session neither removes nor records.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from popgate.stores.history_files import read_retrievals
from tests.pop3_policy_site import DAY, T0, Site, quit

MESSAGES = [b"Subject: one\n\nbody 1\n", b"Subject: two\n\nbody 2\n", b"Subject: three\n\nbody 3\n"]
ALL = [b"Subject: one", b"Subject: two", b"Subject: three"]


def make(tmp_path: Path, kind: str, **settings: object) -> Site:
    site = Site(tmp_path, kind, **settings)
    site.deliver("alice", *MESSAGES)
    return site


def fetch(site: Site, *commands: bytes) -> bytes:
    """Log in, run C{commands}, QUIT: the QUIT's reply."""
    session = site.session()
    session.login()
    for command in commands:
        assert session.send(command + b"\r\n").startswith(b"+OK"), command
    return quit(session)


@pytest.fixture(params=["maildir", "mbox"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_expire_0_removes_what_the_session_retrieved(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind, expire=0.0)
    assert fetch(site, b"RETR 1", b"TOP 2 0", b"RETR 3") == b"+OK Logging out, messages deleted.\r\n"
    assert site.subjects("alice") == [b"Subject: two"]


def test_expire_0_and_rset(tmp_path: Path, kind: str) -> None:
    """RSET unmarks DELE, not a retrieval: the message was sent."""
    site = make(tmp_path, kind, expire=0.0)
    fetch(site, b"RETR 2", b"DELE 1", b"RSET")
    assert site.subjects("alice") == [b"Subject: one", b"Subject: three"]


def test_a_dropped_session_removes_and_records_nothing(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind, expire=0.0)
    session = site.session()
    session.login()
    session.send(b"RETR 1\r\nDELE 2\r\n")
    session.lose()
    assert site.subjects("alice") == ALL
    assert not site.history_file("alice", "popgate-retrieved").exists()


def test_expire_never_keeps_and_records(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind, expire=float("inf"))
    assert fetch(site, b"RETR 1") == b"+OK Logging out.\r\n"
    site.clock.advance(10000 * DAY)
    assert fetch(site, b"RETR 2") == b"+OK Logging out.\r\n"
    assert site.subjects("alice") == ALL
    # Recorded all the same (EXPIRE is configured): a later change of
    # policy counts from the real first retrieval.
    recorded = sorted(read_retrievals(str(site.history_file("alice", "popgate-retrieved"))).values())
    assert recorded == [T0, T0 + 10000 * DAY]


def test_expire_n_days(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind, expire=30.0)
    assert fetch(site, b"RETR 1", b"TOP 3 5") == b"+OK Logging out.\r\n"
    site.clock.advance(10 * DAY)
    fetch(site, b"RETR 1", b"RETR 2")  # RETR 1 again: its clock keeps running from T0
    site.clock.advance(20 * DAY - 1)
    assert fetch(site) == b"+OK Logging out.\r\n"
    assert site.subjects("alice") == ALL
    site.clock.advance(1)  # 30 days after the first RETR 1
    assert fetch(site, b"STAT") == b"+OK Logging out, messages deleted.\r\n"
    assert site.subjects("alice") == [b"Subject: two", b"Subject: three"]
    site.clock.advance(10 * DAY)  # 30 days after RETR 2; 3 was only ever TOPped
    fetch(site)
    assert site.subjects("alice") == [b"Subject: three"]
    site.clock.advance(1000 * DAY)
    fetch(site)
    assert site.subjects("alice") == [b"Subject: three"]


def test_expired_and_deleted_go_together(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind, expire=1.0)
    fetch(site, b"RETR 1")
    site.clock.advance(DAY)
    session = site.session()
    session.login()
    assert session.send(b"STAT\r\n").startswith(b"+OK 3 ")  # listed until the QUIT
    session.send(b"DELE 3\r\n")
    assert quit(session) == b"+OK Logging out, messages deleted.\r\n"
    assert site.subjects("alice") == [b"Subject: two"]


def test_per_user_expire(tmp_path: Path, kind: str) -> None:
    site = Site(tmp_path, kind, users="alice:{PLAIN}secret::::::expire=0\n"
                                      "bob:{PLAIN}hunter2::::::\n")
    site.deliver("alice", *MESSAGES)
    site.deliver("bob", *MESSAGES)
    fetch(site, b"RETR 1")
    session = site.session()
    session.login(b"bob", b"hunter2")
    session.send(b"RETR 1\r\n")
    quit(session)
    assert site.subjects("alice") == [b"Subject: two", b"Subject: three"]
    assert site.subjects("bob") == ALL
    # Bob's retrievals are recorded (EXPIRE may vary per user here): were
    # his EXPIRE set later, it would count from this RETR.
    assert list(read_retrievals(str(site.history_file("bob", "popgate-retrieved"))).values()) == [T0]


def test_not_configured_records_nothing(tmp_path: Path, kind: str) -> None:
    site = make(tmp_path, kind)
    fetch(site, b"RETR 1")
    assert site.subjects("alice") == ALL
    assert not site.history_file("alice", "popgate-retrieved").exists()


def test_a_record_that_cannot_be_written(tmp_path: Path, kind: str) -> None:
    """QUIT still applies the client's deletions; EXPIRE 0 still applies
    to this session's retrievals, which it knows without the record."""
    site = make(tmp_path, kind, expire=0.0)
    site.history_file("alice", "popgate-retrieved").parent.mkdir(parents=True, exist_ok=True)
    site.history_file("alice", "popgate-retrieved").mkdir()  # neither readable nor writable
    assert fetch(site, b"DELE 3", b"RETR 1") == b"+OK Logging out, messages deleted.\r\n"
    assert site.subjects("alice") == [b"Subject: one", b"Subject: two"]


# -- the Maildir record


def maildir_names(site: Site) -> list[tuple[str, str]]:
    root = site.tmp / "mail" / "alice"
    return sorted((sub, name) for sub in ("new", "cur") for name in os.listdir(root / sub))


def test_the_maildir_record_is_keyed_by_unique_name(tmp_path: Path) -> None:
    """Another program (Dovecot, a client over IMAP) marks the message
    seen and moves it to cur/: its clock keeps running."""
    site = make(tmp_path, "maildir", expire=2.0)
    fetch(site, b"RETR 1")
    root = tmp_path / "mail" / "alice"
    record = read_retrievals(str(root / "popgate-retrieved"))
    ((key, when),) = record.items()
    assert when == T0 and ":" not in key
    (sub, name) = next((s, n) for s, n in maildir_names(site) if n.startswith(key))
    os.rename(root / sub / name, root / "cur" / (key + ":2,S"))
    site.clock.advance(2 * DAY)
    fetch(site)
    assert site.subjects("alice") == [b"Subject: two", b"Subject: three"]


def test_the_maildir_record_drops_messages_deleted_elsewhere(tmp_path: Path) -> None:
    site = make(tmp_path, "maildir", expire=30.0)
    fetch(site, b"RETR 1", b"RETR 2")
    root = tmp_path / "mail" / "alice"
    assert len(read_retrievals(str(root / "popgate-retrieved"))) == 2
    for sub, name in maildir_names(site):
        if (root / sub / name).read_bytes().startswith(b"Subject: one"):
            os.unlink(root / sub / name)  # rm, or an IMAP expunge
    fetch(site, b"RETR 2")  # the next write keeps only what is there (now 2 is three)
    kept = read_retrievals(str(root / "popgate-retrieved"))
    assert len(kept) == 2 and sorted(kept.values()) == [T0, T0]  # two, and three
    assert all(any(n.startswith(k) for _, n in maildir_names(site)) for k in kept)


def test_the_record_is_replaced_whole(tmp_path: Path) -> None:
    """Written under a temporary name and renamed: nothing else is left."""
    site = make(tmp_path, "maildir", expire=30.0)
    fetch(site, b"RETR 1")
    fetch(site, b"RETR 2")
    assert sorted(os.listdir(tmp_path / "mail" / "alice")) == [
        "cur", "new", "popgate-pop3.lock", "popgate-retrieved", "tmp"]
