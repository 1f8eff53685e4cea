"""
LOGIN-DELAY enforced (RFC 2449 6.5, 8.1.1), in memory with a fake clock:
refused with C{-ERR [LOGIN-DELAY]} only once the password is right, counted
from the last successful login (a refused one never moves it), kept in the
mail store where another process sees it, per user from the user store.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.logger import LogEvent

from tests.pop3_policy_site import T0, Site, quit

REFUSED = b"-ERR [LOGIN-DELAY] Logins must be at least 900 seconds apart.\r\n"


@pytest.fixture(params=["maildir", "mbox"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    site = Site(tmp_path, request.param, login_delay=900)
    site.deliver("alice", b"Subject: one\n\nbody\n")
    return site




def login(site: Site, user: bytes = b"alice", password: bytes = b"secret") -> bytes:
    return site.session().send(b"USER " + user + b"\r\nPASS " + password + b"\r\n")


def test_a_login_sooner_than_the_delay_is_refused(site: Site) -> None:
    session = site.session()
    session.login()
    assert quit(session) == b"+OK Logging out.\r\n"
    site.clock.advance(899)
    assert login(site) == b"+OK\r\n" + REFUSED
    site.clock.advance(1)
    assert login(site).endswith(b"+OK Logged in.\r\n")


def test_the_delay_runs_from_login_to_login_not_from_the_session_end(site: Site) -> None:
    session = site.session()
    session.login()
    site.clock.advance(1000)  # a long session
    quit(session)
    assert login(site).endswith(b"+OK Logged in.\r\n")


def test_a_refused_login_does_not_reset_the_clock(site: Site) -> None:
    session = site.session()
    session.login()
    quit(session)
    for _ in range(3):
        site.clock.advance(299)
        assert login(site).endswith(REFUSED)
    site.clock.advance(3)  # 900 s after the one successful login
    assert login(site).endswith(b"+OK Logged in.\r\n")
    assert float(site.history_file("alice", "popgate-lastlogin").read_text()) == T0 + 900


def test_nothing_tells_a_client_without_the_password_that_the_user_exists(site: Site) -> None:
    session = site.session()
    session.login()
    quit(session)
    wrong = site.session()
    assert wrong.send(b"USER alice\r\nPASS wrong\r\n") == b"+OK\r\n"
    site.clock.advance(1)  # --auth-failure-delay
    assert wrong.take() == b"-ERR [AUTH] Authentication failed.\r\n"
    unknown = site.session()
    unknown.send(b"USER nobody\r\nPASS secret\r\n")
    site.clock.advance(1)
    assert unknown.take() == b"-ERR [AUTH] Authentication failed.\r\n"
    # The wrong password recorded nothing either.
    assert float(site.history_file("alice", "popgate-lastlogin").read_text()) == T0


def test_a_login_refused_in_use_records_nothing(site: Site) -> None:
    first = site.session()
    first.login()
    site.clock.advance(1000)
    second = site.session()
    assert second.send(b"USER alice\r\nPASS secret\r\n").endswith(b"-ERR [IN-USE] Mailbox is "
                                                                  b"locked by another POP3 "
                                                                  b"session.\r\n")
    quit(first)
    assert float(site.history_file("alice", "popgate-lastlogin").read_text()) == T0
    assert login(site).endswith(b"+OK Logged in.\r\n")


def test_the_session_continues_after_a_refusal(site: Site) -> None:
    site.session().login()
    session = site.session()
    site.clock.advance(60)
    assert session.send(b"USER alice\r\nPASS secret\r\n").endswith(REFUSED)
    assert session.send(b"NOOP\r\n") == b"-ERR Unknown command.\r\n"
    assert session.send(b"QUIT\r\n") == b"+OK Logging out.\r\n"


def test_another_process_on_the_same_mail_sees_the_login(site: Site) -> None:
    """--workers and cluster nodes: a second store object, as another
    process builds, reads the time the first one wrote."""
    session = site.session()
    session.login()
    quit(session)
    site.clock.advance(10)
    other = site.session(site.make_store())
    assert other.send(b"USER alice\r\nPASS secret\r\n").endswith(REFUSED)


def test_per_user_delay_from_the_passwd_file(tmp_path: Path) -> None:
    site = Site(tmp_path, users="alice:{PLAIN}secret::::::login_delay=60\n"
                                "bob:{PLAIN}hunter2::::::\n", login_delay=900)
    for user, password in ((b"alice", b"secret"), (b"bob", b"hunter2")):
        session = site.session()
        session.login(user, password)
        quit(session)
    site.clock.advance(60)
    assert login(site).endswith(b"+OK Logged in.\r\n")
    assert login(site, b"bob", b"hunter2").endswith(REFUSED)
    (tmp_path / "z").mkdir()
    zero = Site(tmp_path / "z", users="carol:{PLAIN}pw::::::login_delay=0\n", login_delay=900)
    for _ in range(2):
        session = zero.session()
        assert session.send(b"USER carol\r\nPASS pw\r\n").endswith(b"+OK Logged in.\r\n")
        quit(session)
    # No delay for carol: no record kept for her either.
    assert not zero.history_file("carol", "popgate-lastlogin").exists()


def test_without_a_delay_nothing_is_recorded(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.deliver("alice", b"Subject: one\n\nbody\n")
    for _ in range(2):
        session = site.session()
        session.login()
        quit(session)
    assert sorted(os.listdir(tmp_path / "mail" / "alice")) == ["cur", "new", "popgate-pop3.lock",
                                                              "tmp"]


def test_the_log_says_login_delay(site: Site, captured: list[LogEvent]) -> None:
    site.session().login()
    site.clock.advance(5)
    login(site)
    (refused,) = [e for e in captured if e["event"] == "pop3.login" and e["result"] != "ok"]
    assert (refused["result"], refused["reason"], refused["account"]) == (
        "failed", "login-delay", "alice")
    assert refused["attempts"] == 0  # not a failed password


def test_a_history_that_cannot_be_read_lets_the_user_in(tmp_path: Path) -> None:
    site = Site(tmp_path, login_delay=900)
    site.deliver("alice", b"Subject: one\n\nbody\n")
    site.history_file("alice", "popgate-lastlogin").mkdir()  # unreadable, unwritable
    for _ in range(2):
        session = site.session()
        assert session.send(b"USER alice\r\nPASS secret\r\n").endswith(b"+OK Logged in.\r\n")
        quit(session)


def test_a_broken_record_counts_as_none(tmp_path: Path) -> None:
    site = Site(tmp_path, login_delay=900)
    site.deliver("alice", b"Subject: one\n\nbody\n")
    site.history_file("alice", "popgate-lastlogin").write_text("yesterday\n")
    assert login(site).endswith(b"+OK Logged in.\r\n")


@pytest.mark.parametrize(("ahead", "refused"), [(5, True), (899, True), (901, False)])
def test_a_last_login_in_the_future(tmp_path: Path, ahead: int, refused: bool) -> None:
    """Another node's clock ahead: counts as now, unless more than the
    delay ahead (a clock set wrong once must not lock the user out)."""
    site = Site(tmp_path, login_delay=900)
    site.deliver("alice", b"Subject: one\n\nbody\n")
    site.history_file("alice", "popgate-lastlogin").write_text(f"{T0 + ahead}\n")
    assert login(site).endswith(REFUSED if refused else b"+OK Logged in.\r\n")
