"""
C{popgate migrate} in memory: its command line, whom C{--all} finds, the
verification's comparison and the report's lines.  (The copy itself,
against PostgreSQL, is tests/test_migrate.py.)
"""

from __future__ import annotations

import argparse

import pytest
from twisted.python import usage

from popgate.maildrop import MessageInfo
from popgate.migrate import command, options, report, users, verify
from popgate.migrate.target import StoredRow

DSN = "postgresql://popgate@db.example.org/mail"


def parse(*argv: str) -> options.Plan:
    parser = argparse.ArgumentParser(prog="popgate")
    command.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["migrate", *argv])
    assert args.func is command.run
    return options.plan_from(args)


def test_the_command_line_is_parsed():
    plan = parse("--from", "maildir:/var/mail/%d/%n", "--to",
                 f"postgresql:dsn={DSN},connect_timeout=9", "alice@example.org", "bob@example.org")
    assert plan.source == "maildir:/var/mail/%d/%n"
    assert plan.target.dsn == DSN and plan.target.connect_timeout == 9
    assert plan.users == ("alice@example.org", "bob@example.org")
    assert (plan.all, plan.dry_run, plan.users_from) == (False, False, None)
    plan = parse("--from", "mbox:/var/mail/%u", "--to", f"postgresql:dsn={DSN}", "--all",
                 "--users-from", "-", "--dry-run")
    assert (plan.all, plan.dry_run, plan.users_from, plan.users) == (True, True, "-", ())


@pytest.mark.parametrize("argv, error", [
    (["--from", "maildir:/m/%u", "--to", f"postgresql:dsn={DSN}"],
     "say whom to copy: USER..., --users-from FILE or --all"),
    (["--from", "maildir:/m/%u", "--to", f"sql:dsn={DSN}", "a"],
     "--to must be the PostgreSQL store: postgresql:dsn=postgresql://USER@HOST/DB"),
    (["--from", "maildir:/m/%u", "--to", "postgresql:dsn=mysql://h/db", "a"],
     "--to: postgresql: dsn= must be a postgresql:// URI"),
    (["--from", "maildir:/m/%u", "--to", f"postgresql:dsn={DSN},pool=3", "a"],
     "--to: postgresql: unknown key pool="),
    (["--from", "maildir", "--to", f"postgresql:dsn={DSN}", "a"],
     "--from needs TYPE:ARGS, e.g. maildir:/var/mail/%d/%n"),
])
def test_a_bad_command_line_says_why(argv, error):
    with pytest.raises(usage.UsageError) as raised:
        parse(*argv)
    assert str(raised.value).startswith(error)


def test_from_and_to_are_required(capsys):
    with pytest.raises(SystemExit) as raised:
        parse("alice")
    assert raised.value.code == 2
    assert "the following arguments are required: --from, --to" in capsys.readouterr().err


def test_the_users_file_skips_blanks_and_comments():
    text = "alice@example.org\n\n# staff\n  bob@example.org  # on leave\n#\n"
    assert users.read_users_file("x", lambda path: text) == ["alice@example.org",
                                                             "bob@example.org"]


def test_merge_keeps_the_first_order():
    assert users.merge(["b", "a"], ["a", "c"], ["c", "d"]) == ["b", "a", "c", "d"]


def maildir(root, *names):
    for name in names:
        for sub in ("new", "cur", "tmp"):
            (root / name / sub).mkdir(parents=True)


def test_all_finds_maildirs_by_domain_and_local_part(tmp_path):
    maildir(tmp_path / "example.org", "alice", "bob")
    maildir(tmp_path / "example.net", "carol")
    maildir(tmp_path / "Example.COM", "dave")  # popgate lower-cases domains: never opened
    (tmp_path / "example.org" / "notes").mkdir()  # no cur/ or new/: not a Maildir
    found, left_out = users.enumerate_users(f"{tmp_path}/%d/%n", "maildir")
    assert found == ["alice@example.org", "bob@example.org", "carol@example.net"]
    assert left_out == [f"{tmp_path}/Example.COM/dave: no user's mailbox (popgate would not "
                        "open it for 'dave@Example.COM')"]


def test_all_finds_maildirs_under_a_fixed_tail_and_a_glob_character(tmp_path):
    root = tmp_path / "mail[1]"
    for user in ("alice@example.org", "bob"):
        (root / user / "Maildir" / "cur").mkdir(parents=True)
    found, _ = users.enumerate_users(f"{root}/%u/Maildir", "maildir")
    assert found == ["alice@example.org", "bob"]


def test_all_finds_mbox_spools_but_not_locks(tmp_path):
    (tmp_path / "alice").write_bytes(b"From a Mon Jan  1 00:00:00 2024\n\nx\n")
    (tmp_path / "bob").write_bytes(b"")
    for name in ("alice.lock", "alice.popgate-lock", "alice.popgate-uidl"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "README").write_bytes(b"not a spool")
    (tmp_path / "dir").mkdir()
    found, left_out = users.enumerate_users(f"{tmp_path}/%u", "mbox")
    assert (found, left_out) == (["alice", "bob"], [])


@pytest.mark.parametrize("template, missing", [
    ("/home/%n/Maildir", "the domain (%d)"),
    ("/srv/mail/%d", "the user (%u or %n)"),
])
def test_all_refuses_a_template_that_loses_part_of_the_name(template, missing):
    with pytest.raises(users.EnumerationRefused) as raised:
        users.enumerate_users(template, "maildir")
    assert str(raised.value) == (f"--all cannot tell the users from {template}: its paths do "
                                 f"not hold {missing}; name the users (USER... or --users-from "
                                 "FILE)")


def row(uidl: bytes, wire: int, stored: int | None = None, octets: int | None = None,
        chunks: int = 1, seq_end: int = 1) -> StoredRow:
    stored = wire if stored is None else stored
    return StoredRow(uidl, wire, stored, stored if octets is None else octets, chunks, seq_end)


def test_verification_compares_uidls_sizes_and_chunks():
    source = [MessageInfo(b"a", 10), MessageInfo(b"b", 20), MessageInfo(b"c", 30),
              MessageInfo(b"d", 40), MessageInfo(b"e", 0)]
    rows = [row(b"a", 10), row(b"b", 21), row(b"c", 30, octets=29),
            row(b"d", 40, chunks=1, seq_end=2), row(b"e", 0, chunks=0, seq_end=0),
            row(b"new.1", 5)]
    result = verify.compare(source, rows)
    assert not result.ok
    assert result.problems == [
        "UIDL b is 20 octets in the source, 21 in the target",
        "UIDL c: its chunk rows hold 29 of its 30 octets",
        "UIDL d: 1 of its chunk rows are missing",
    ]
    assert result.only_in_target == 1
    missing = verify.compare([MessageInfo(b"x", 1)], [])
    assert missing.problems == ["UIDL x is missing from the target"]
    assert verify.compare(source[:1], rows[:1]).ok


@pytest.mark.parametrize("octets, text", [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (3_400_000, "3.4 MB"),
    (999_960, "1.0 MB"), (12_345_678_901, "12.3 GB"),
])
def test_sizes_read_as_people_write_them(octets, text):
    assert report.size(octets) == text


def test_the_report_lines():
    done = report.UserResult("alice@example.org", "verified", copied=120,
                             copied_octets=3_400_000)
    assert report.user_line(done) == ("alice@example.org: 120 messages, 3.4 MB copied, "
                                      "0 skipped, verified")
    bad = report.UserResult("bob", "not verified", copied=1, copied_octets=10, skipped=2,
                            unreadable=1, problems=[f"p{i}" for i in range(5)])
    assert report.user_line(bad) == ("bob: 1 message, 10 B copied, 2 skipped, 1 unreadable, "
                                     "NOT VERIFIED: p0; p1; p2; and 2 more problems")
    assert report.user_line(report.UserResult("c", "no mailbox", where="/m/c")) == (
        "c: no mailbox at /m/c: nothing to copy")
    assert report.summary([done, bad]) == ("migrated 2 users: 121 messages, 3.4 MB copied, "
                                           "2 skipped; 1 user not done (see above)")
    again = report.UserResult("alice@example.org", "verified", skipped=120)
    assert report.summary([again]) == ("1 user, nothing more to copy: all 120 messages were "
                                       "there already, verified")
    dry = report.UserResult("alice@example.org", "dry run", copied=3, copied_octets=2000,
                            skipped=1)
    assert report.user_line(dry) == "alice@example.org: would copy 3 messages, 2.0 kB; 1 already there"
    assert report.summary([dry], dry_run=True) == (
        "dry run, nothing written: 1 user, would copy 3 messages, 2.0 kB; 1 already there")
