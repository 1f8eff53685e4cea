"""
C{popgate expire}: EXPIRE applied to mailboxes nobody polls, on Maildir and
mbox; one line per user, C{--dry-run} changing nothing, a mailbox in use
left alone, C{--all} finding mailboxes from the store's template.  In
memory (the work function, a fake clock), and once as the real command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from popgate.admin.expire import ExpireOptions, expire_mailboxes, store_users, template_users
from popgate.stores.history_files import read_retrievals
from popgate.stores.maildir_scan import _order_key, base_name
from tests.pop3_policy_site import DAY, Site, quit
from tests.popgate_server import REPO, child_env

MESSAGES = [b"Subject: one\n\nbody 1\n", b"Subject: two\n\nbody 2\n"]


@pytest.fixture(params=["maildir", "mbox"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    site = Site(tmp_path, request.param, users="alice:{PLAIN}secret::::::\n"
                "bob:{PLAIN}hunter2::::::expire=never\ncarol:{PLAIN}pw::::::expire=1\n",
                expire=30.0)
    for user in ("alice", "bob", "carol"):
        site.deliver(user, *MESSAGES)
        session = site.session()
        session.login(user.encode(), {"alice": b"secret", "bob": b"hunter2",
                                      "carol": b"pw"}[user])
        session.send(b"RETR 1\r\n")
        quit(session)
    return site


def expire(site: Site, users: list[str], dry_run: bool = False) -> tuple[int, list[str]]:
    """Run the command's work; the store's threads run inline, so it is
    done when this returns."""
    lines: list[str] = []
    d = Deferred.fromCoroutine(expire_mailboxes(site.store, [site.checker], users, "30",
                                                dry_run, site.clock, lines.append))
    return d.result, "".join(lines).splitlines()


def test_expire_removes_what_is_old_enough(site: Site) -> None:
    site.clock.advance(DAY)
    status, lines = expire(site, ["alice", "bob", "carol"])
    assert status == 0
    assert lines == [
        "alice: 0 of 2 messages expired (0 octets), EXPIRE 30",
        "bob: EXPIRE NEVER, nothing expires",
        "carol: 1 of 2 messages expired (24 octets), EXPIRE 1",
        "total: 1 message expired (24 octets) in 3 mailboxes",
    ]
    assert site.subjects("carol") == [b"Subject: two"]
    site.clock.advance(29 * DAY)
    status, lines = expire(site, ["alice"])
    assert lines[0] == "alice: 1 of 2 messages expired (24 octets), EXPIRE 30"
    assert site.subjects("alice") == [b"Subject: two"]
    assert site.subjects("bob") == [b"Subject: one", b"Subject: two"]


def test_dry_run_changes_nothing(site: Site) -> None:
    site.clock.advance(30 * DAY)
    record = site.history_file("alice", "popgate-retrieved")
    before = record.read_bytes()
    status, lines = expire(site, ["alice", "carol"], dry_run=True)
    assert lines == [
        "alice: 1 of 2 messages would expire (24 octets), EXPIRE 30",
        "carol: 1 of 2 messages would expire (24 octets), EXPIRE 1",
        "total: 2 messages would expire (48 octets) in 2 mailboxes",
    ]
    assert site.subjects("alice") == site.subjects("carol") == [b"Subject: one", b"Subject: two"]
    assert record.read_bytes() == before


def test_skipped_mailboxes(site: Site) -> None:
    site.clock.advance(30 * DAY)
    polling = site.session()
    polling.login()
    status, lines = expire(site, ["alice", "nobody", "dave"])
    assert status == 0
    assert lines[:2] == ["alice: skipped: in use by a POP3 session", "nobody: skipped: unknown user"]
    quit(polling)


def test_the_record_is_pruned(site: Site) -> None:
    site.clock.advance(2 * DAY)
    expire(site, ["carol"])
    # The removed message's line goes at the next write.
    expire(site, ["carol"])
    assert read_retrievals(str(site.history_file("carol", "popgate-retrieved"))) == {}


def test_no_mailbox_is_created(tmp_path: Path) -> None:
    site = Site(tmp_path, users="erin:{PLAIN}pw::::::\n", expire=0.0)
    status, lines = expire(site, ["erin"])
    assert lines[0] == "erin: skipped: no mailbox"
    assert not (tmp_path / "mail" / "erin").exists()


def test_template_users(tmp_path: Path) -> None:
    for domain, user in (("example.org", "alice"), ("example.org", "bob"), ("b.test", "carol")):
        (tmp_path / domain / user / "cur").mkdir(parents=True)
    (tmp_path / "example.org" / "notmail").mkdir()
    (tmp_path / "example.org" / ".hidden" / "new").mkdir(parents=True)
    assert template_users(str(tmp_path / "%d" / "%n")) == [
        "carol@b.test", "alice@example.org", "bob@example.org"]
    spools = tmp_path / "spool"
    spools.mkdir()
    for name in ("alice", "alice.lock", "alice.popgate-lock", "alice.popgate-retrieved", "bob"):
        (spools / name).write_bytes(b"")
    assert template_users(str(spools / "%u"), mbox=True) == ["alice", "bob"]


def test_all_finds_the_stores_mailboxes(site: Site) -> None:
    assert store_users(site.store) == ["alice", "bob", "carol"]


def test_options() -> None:
    options = ExpireOptions()
    options.parseOptions(["--dry-run", "--store", "maildir:/m/%n", "--auth", "memory:a:b", "a"])
    assert options["dry-run"] and options.users == ["a"]
    for args in (["--store", "maildir:/m/%n", "--auth", "memory:a:b"],
                 ["--all", "--store", "maildir:/m/%n", "--auth", "memory:a:b", "a"]):
        with pytest.raises(Exception, match="name the users, or give --all"):
            ExpireOptions().parseOptions(args)


@pytest.mark.integration
def test_the_command(tmp_path: Path) -> None:
    """The real C{popgate expire} on a Maildir a server wrote."""
    site = Site(tmp_path, expire=0.0)
    site.deliver("alice", *MESSAGES)
    session = site.session()
    session.login()
    session.send(b"RETR 2\r\n")
    session.lose()  # no QUIT: EXPIRE 0 did not apply, nothing recorded
    # A retrieval recorded long ago, as a session with EXPIRE 30 would have.
    key = min((base_name(path.name) for path in (tmp_path / "mail" / "alice" / "new").iterdir()),
              key=_order_key)  # the first delivered (names are not zero-padded)
    (tmp_path / "mail" / "alice" / "popgate-retrieved").write_text(f"{key} 1000.000\n")
    args = [sys.executable, "-m", "popgate.cli", "expire", "--store",
            f"maildir:{tmp_path}/mail/%n", "--auth", f"passwd-file:{site.users}",
            "--expire", "30"]
    dry = subprocess.run(args + ["--dry-run", "--all"], capture_output=True, text=True,
                         env=child_env(), cwd=REPO, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "alice: 1 of 2 messages would expire (24 octets), EXPIRE 30",
        "total: 1 message would expire (24 octets) in 1 mailbox"]
    done = subprocess.run(args + ["alice"], capture_output=True, text=True, env=child_env(),
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "alice: 1 of 2 messages expired (24 octets), EXPIRE 30"
    assert site.subjects("alice") == [b"Subject: two"]
    bad = subprocess.run(args[:4] + ["--expire", "soon", "alice"], capture_output=True,
                         text=True, env=child_env(), cwd=REPO, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--expire: must be a whole number of days, or never" in bad.stderr
