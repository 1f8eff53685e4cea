"""
C{popgate deliver}: the local delivery agent for Postfix and Exim pipes.
The delivery logic in-process, then the real command in a subprocess for
its sysexits exit codes, which the MTAs act on (bounce or retry).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from zope.interface import implementer

from popgate import errors
from popgate.cli import main
from popgate.delivery import deliver
from popgate.delivery.deliver import EX_CANTCREAT, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from popgate.interfaces import IDeliveryTarget
from popgate.stores.maildir import MaildirStore
from popgate.stores.mbox import MboxStore, parse_argstring
from popgate.stores.memory import MemoryStore
from tests.helpers import InlineReactor
from tests.popgate_server import REPO, child_env

HTPASSWD = "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
MESSAGE = b"Subject: hello\n\nFrom the body\n.\nend\n"


def run_delivery(store: Any, checkers: list[Any], user: str, sender: str | None, raw: bytes) -> int:
    d = defer.Deferred.fromCoroutine(
        deliver.deliver_message(store, checkers, user, sender, raw))
    assert d.called
    return d.result  # type: ignore[no-any-return]


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(HTPASSWD)
    return path


@pytest.fixture
def checker(htpasswd: Path) -> Any:
    from popgate.cred.htpasswd import HtpasswdChecker

    return HtpasswdChecker(str(htpasswd), InlineReactor())


def test_delivers_with_trace_headers(checker):
    store = MemoryStore()
    assert run_delivery(store, [checker], "alice@example.org", "s@example.net", MESSAGE) == EX_OK
    assert store.messages("alice") == [
        b"Return-Path: <s@example.net>\nDelivered-To: alice@example.org\n" + MESSAGE]


def test_from_line_from_local8_is_removed_and_gives_the_sender(checker):
    store = MemoryStore()
    raw = b"From s@example.net  Thu Jan  1 00:00:00 2026\n" + MESSAGE
    assert run_delivery(store, [checker], "alice", None, raw) == EX_OK
    assert store.messages("alice") == [b"Return-Path: <s@example.net>\nDelivered-To: alice\n" + MESSAGE]


def test_headers_the_mta_added_are_not_doubled(checker):
    store = MemoryStore()
    raw = (b"From MAILER-DAEMON  Thu Jan  1 00:00:00 2026\n"
           b"Return-Path: <>\nX-Original-To: alice\nDelivered-To: alice\n" + MESSAGE)
    assert run_delivery(store, [checker], "alice", None, raw) == EX_OK
    assert store.messages("alice") == [raw.split(b"\n", 1)[1]]


def test_mailer_daemon_is_the_null_sender(checker):
    store = MemoryStore()
    assert run_delivery(store, [checker], "alice", "MAILER-DAEMON", MESSAGE) == EX_OK
    assert store.messages("alice")[0].startswith(b"Return-Path: <>\n")


def test_unknown_user_is_ex_nouser(checker):
    store = MemoryStore()
    assert run_delivery(store, [checker], "carol", "s@x", MESSAGE) == EX_NOUSER
    assert store.messages("carol") == []


def test_user_store_outage_is_ex_tempfail(checker, htpasswd):
    htpasswd.unlink()
    assert run_delivery(MemoryStore(), [checker], "alice", "s@x", MESSAGE) == EX_TEMPFAIL


def test_no_user_lookup_accepts_anyone():
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    store = MemoryStore()
    assert run_delivery(store, [InMemoryUsernamePasswordDatabaseDontUse()], "zed", "s@x", MESSAGE) == EX_OK
    assert len(store.messages("zed")) == 1


@implementer(IDeliveryTarget)
class _Failing:
    def __init__(self, failure: BaseException) -> None:
        self.failure = failure

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> Any:
        return defer.fail(self.failure)


@pytest.mark.parametrize(("failure", "code"), [
    (errors.TemporaryFailure("disk full"), EX_TEMPFAIL),
    (errors.InvalidUserName("../x"), EX_NOUSER),
    (errors.PermanentFailure("not an mbox"), EX_CANTCREAT),
])
def test_store_failures(failure, code, checker):
    assert run_delivery(_Failing(failure), [checker], "alice", "s@x", MESSAGE) == code


def test_maildir_and_mbox_targets(tmp_path, checker):
    maildir = MaildirStore(str(tmp_path / "md" / "%n"), reactor=InlineReactor())
    assert run_delivery(maildir, [checker], "alice", "s@x", MESSAGE) == EX_OK
    (name,) = os.listdir(tmp_path / "md" / "alice" / "new")
    assert (tmp_path / "md" / "alice" / "new" / name).read_bytes().endswith(MESSAGE)
    mbox = MboxStore(parse_argstring(str(tmp_path / "%n")), reactor=InlineReactor())
    assert run_delivery(mbox, [checker], "alice", "s@x", MESSAGE) == EX_OK
    assert (tmp_path / "alice").read_bytes().startswith(b"From s@x ")


def test_the_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as e:
        main(["deliver", "--help"])
    assert e.value.code == 0
    assert "67 unknown user" in capsys.readouterr().out


# -- the real command


def popgate_deliver(args: list[str], stdin: bytes = MESSAGE, cwd: str = REPO) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "popgate.cli", "deliver", *args], input=stdin,
                          capture_output=True, env=child_env(), cwd=cwd, timeout=60)


@pytest.mark.integration
def test_exit_0_and_the_message_is_in_the_maildir(tmp_path, htpasswd):
    result = popgate_deliver(["-f", "s@example.net", "-u", "alice@example.org",
                              "--store", f"maildir:{tmp_path}/mail/%n", "--auth", f"htpasswd:{htpasswd}"])
    assert result.returncode == EX_OK, result.stderr
    (name,) = os.listdir(tmp_path / "mail" / "alice" / "new")
    assert (tmp_path / "mail" / "alice" / "new" / name).read_bytes() == \
        b"Return-Path: <s@example.net>\nDelivered-To: alice@example.org\n" + MESSAGE


@pytest.mark.integration
def test_exit_67_for_an_unknown_user(tmp_path, htpasswd):
    result = popgate_deliver(["-u", "carol", "--store", f"maildir:{tmp_path}/%n",
                              "--auth", f"htpasswd:{htpasswd}"])
    assert result.returncode == EX_NOUSER
    assert b"no such user: carol" in result.stderr
    assert not (tmp_path / "carol").exists()


@pytest.mark.integration
def test_exit_75_when_the_store_cannot_be_written(tmp_path, htpasswd):
    (tmp_path / "file").write_text("not a directory")
    result = popgate_deliver(["-u", "alice", "--store", f"maildir:{tmp_path}/file/%n",
                              "--auth", f"htpasswd:{htpasswd}"])
    assert result.returncode == EX_TEMPFAIL
    assert b"temporary failure" in result.stderr


@pytest.mark.integration
def test_exit_75_for_configuration_errors(tmp_path, htpasswd):
    for args in (["--store", "maildr:/x/%n", "--auth", f"htpasswd:{htpasswd}"],
                 ["--store", f"maildir:{tmp_path}/%n", "--auth", f"htpasswd:{tmp_path}/missing"],
                 ["--store", f"maildir:{tmp_path}/%n", "--auth", "nosuchtype:x"],
                 ["--config", str(tmp_path / "missing.toml")]):
        result = popgate_deliver(["-u", "alice", *args])
        assert result.returncode == EX_TEMPFAIL, (args, result.stderr)
        assert b"configuration error" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("args", [[], ["-u"], ["-u", "alice", "--bogus"], ["-u", "alice", "extra"]])
def test_exit_64_for_a_malformed_command_line(args):
    result = popgate_deliver(args)
    assert result.returncode == EX_USAGE, result.stderr
    assert b"usage:" in result.stderr


@pytest.mark.integration
def test_no_store_is_a_configuration_error(htpasswd):
    result = popgate_deliver(["-u", "alice", "--auth", f"htpasswd:{htpasswd}"])
    # No --store and no --config: the command line is incomplete, but it
    # may be the MTA's configuration: keep the mail (EX_TEMPFAIL).
    assert result.returncode == EX_TEMPFAIL
    assert b"no mail store" in result.stderr


@pytest.mark.integration
def test_config_file_gives_store_and_auth(tmp_path, htpasswd):
    config = tmp_path / "popgate.toml"
    config.write_text(f'[popgate]\nstore = "mbox:{tmp_path}/%n"\nauth = ["htpasswd:{htpasswd}"]\n'
                      'pop3 = ["tcp:1110"]\n')
    result = popgate_deliver(["-u", "bob", "-f", "", "--config", str(config)])
    assert result.returncode == EX_OK, result.stderr
    data = (tmp_path / "bob").read_bytes()
    assert data.startswith(b"From MAILER-DAEMON ")
    assert b"\nReturn-Path: <>\nDelivered-To: bob\n" in data
    assert b"\n>From the body\n" in data
    result = popgate_deliver(["-u", "carol", "--config", str(config)])
    assert result.returncode == EX_NOUSER


@pytest.mark.integration
def test_command_line_wins_over_the_config_file(tmp_path, htpasswd):
    config = tmp_path / "popgate.toml"
    config.write_text(f'store = "mbox:{tmp_path}/%n"\nauth = ["htpasswd:{tmp_path}/missing"]\n')
    result = popgate_deliver(["-u", "alice", "--config", str(config), "--store",
                              f"maildir:{tmp_path}/md/%n", "--auth", f"htpasswd:{htpasswd}"])
    assert result.returncode == EX_OK, result.stderr
    assert os.listdir(tmp_path / "md" / "alice" / "new")
