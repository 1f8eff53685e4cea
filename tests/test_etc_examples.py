"""The shipped examples in etc/ stay valid: the config loads, the user
files log their documented users in and fit the config's store, the
systemd units parse."""

from __future__ import annotations

import grp
import os
import shutil
import smtplib
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.trial.unittest import SynchronousTestCase

from popgate import config
from popgate.cred.htpasswd import HtpasswdChecker
from popgate.cred.passwdfile import PasswdFileChecker
from popgate.cred.schemes import hash_password
from popgate.stores import mailpath
from tests.helpers import InlineReactor
from tests.popgate_server import REPO, PopgateProcess, free_port
from tests.postfix_server import PostfixServer
from tests.services import need, need_program

ETC = os.path.join(REPO, "etc")
_sync = SynchronousTestCase()


def test_toml_example_loads():
    values = config.load(os.path.join(ETC, "popgate.toml.example"))
    assert values["store"].startswith("maildir:")
    assert values["auth"] and values["pop3"]


def test_cluster_example_loads_and_its_store_and_users_parse():
    """etc/popgate-cluster.toml.example (docs/cluster.md): a node behind
    HAProxy, the mail and the users in PostgreSQL."""
    from popgate.cred.sql_settings import parse_args as sql_args
    from popgate.stores.pg_settings import parse_args as pg_args

    values = config.load(os.path.join(ETC, "popgate-cluster.toml.example"))
    assert all(p.startswith("haproxy:tcp:") for p in values["pop3"])
    assert values["proxy_trusted"] and values["lmtp"] and values["workers"] > 1
    kind, _, args = values["store"].partition(":")
    assert kind == "postgresql" and pg_args(args).pool_size == 4
    kind, _, args = values["auth"][0].partition(":")
    assert kind == "sql" and sql_args(args)["dsn"].startswith("postgresql://")


def test_htpasswd_example_logs_alice_in():
    checker = HtpasswdChecker(os.path.join(ETC, "htpasswd.example"), reactor=InlineReactor())
    d = checker.requestAvatarId(UsernamePassword(b"alice@example.org", b"alice-password"))
    assert _sync.successResultOf(d) == "alice@example.org"


def test_example_users_fit_the_example_store():
    """The user files' names open a mailbox under popgate.toml.example's
    store (a %d template needs names with a domain: a bare 'alice' would
    log in and then get [SYS/PERM])."""
    store = config.load(os.path.join(ETC, "popgate.toml.example"))["store"]
    template = store.partition(":")[2].split(",")[0]
    for name, checker_class in (("htpasswd.example", HtpasswdChecker),
                                ("passwd-file.example", PasswdFileChecker)):
        checker = checker_class(os.path.join(ETC, name), reactor=InlineReactor())
        users = _sync.successResultOf(checker._users())
        assert users, name
        for user in users:
            assert mailpath.expand(template, user).startswith(mailpath.fixed_root(template) + "/")


def test_passwd_file_example_logs_users_in():
    checker = PasswdFileChecker(os.path.join(ETC, "passwd-file.example"), reactor=InlineReactor())
    for user, password in (("alice", "alice-password"), ("bob", "bob-password"),
                           ("carol", "carol-password")):
        name = f"{user}@example.org"
        d = checker.requestAvatarId(UsernamePassword(name.encode(), password.encode()))
        assert _sync.successResultOf(d) == name


@pytest.mark.integration
def test_systemd_units_parse(tmp_path):
    """systemd-analyze finds nothing to complain about in the unit, the
    socket and each drop-in (the venv's twistd is not there: /bin/true
    stands in for it)."""
    analyze = need_program("systemd-analyze", "systemd")
    source = os.path.join(ETC, "systemd")
    names = []
    for directory, _, files in os.walk(source):
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), source)
            target = tmp_path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(os.path.join(directory, name)) as f:
                target.write_text(f.read().replace("/opt/popgate/bin/twistd", "/bin/true"))
            names.append(relative)
    assert {"popgate.service", "popgate.socket", "popgate.service.d/home-maildir.conf",
            "popgate.service.d/mbox.conf",
            "popgate.service.d/socket-activation.conf"} <= set(names)
    result = subprocess.run([analyze, "verify", str(tmp_path / "popgate.service"),
                             str(tmp_path / "popgate.socket")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def main_cf_values(path: str) -> dict[str, str]:
    """The settings of a main.cf snippet (continuation lines joined)."""
    values: dict[str, str] = {}
    key = None
    with open(path) as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key is not None:
                values[key] += " " + line.strip()
                continue
            key, _, value = line.partition("=")
            key = key.strip()
            values[key] = value.strip()
    return values


@pytest.mark.integration
@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_postfix_lmtp_example_refuses_unknown_recipients_at_rcpt(over):
    """etc/postfix/main.cf.lmtp with a real Postfix and popgate: an unknown
    recipient is refused during the SMTP session (reject_unverified_recipient
    asks popgate over LMTP), so nothing bounces; a known one is delivered.
    Over TCP, and over the UNIX socket docs/postfix.md sets up (its own
    set-group-id directory in the queue, the socket mode 660)."""
    need_program("postfix", "postfix")
    need(os.geteuid() == 0, "starting Postfix needs root")
    # Not pytest's tmp_path: its parents are 0700, and Postfix runs as postfix.
    tmp_path = Path(tempfile.mkdtemp(prefix="popgate-recipe-"))
    tmp_path.chmod(0o755)
    try:
        check_lmtp_recipe(tmp_path, over)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def check_lmtp_recipe(tmp_path: Path, over: str) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice@example.org:{hash_password('pw', rounds=4, prefix=False)}\n")
    mail = tmp_path / "mail"
    main_cf = main_cf_values(os.path.join(ETC, "postfix", "main.cf.lmtp"))
    assert "reject_unverified_recipient" in main_cf["smtpd_recipient_restrictions"]
    main_cf["mynetworks"] = "192.0.2.0/24"  # the test's client is not trusted: it is verified
    lmtp_port = free_port()
    if over == "tcp":
        main_cf["virtual_transport"] = f"lmtp:inet:127.0.0.1:{lmtp_port}"
    else:
        main_cf["virtual_transport"] = "lmtp:unix:popgate/lmtp"
    with PostfixServer(tmp_path / "postfix", main_cf) as postfix:
        if over == "tcp":
            lmtp = f"tcp:{lmtp_port}:interface=127.0.0.1"
        else:
            directory = postfix.queue / "popgate"
            directory.mkdir()
            shutil.chown(directory, "root", "postfix")
            directory.chmod(0o2750)
            lmtp = f"unix:{directory}/lmtp:mode=660"
        args = ["--auth", f"htpasswd:{users}", "--store", f"maildir:{mail}/%d/%n", "--lmtp", lmtp]
        with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as popgate:
            if over == "unix":
                socket_stat = (postfix.queue / "popgate" / "lmtp").stat()
                assert grp.getgrgid(socket_stat.st_gid).gr_name == "postfix"
                assert stat.S_IMODE(socket_stat.st_mode) == 0o660

            def rcpt(address: str) -> tuple[int, bytes]:
                # 450 while verify(8)'s probe is under way; then the answer.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
                        smtp.ehlo("client.example.net")
                        smtp.mail("sender@example.net")
                        code, text = smtp.rcpt(address)
                        if code == 250:
                            smtp.data(b"Subject: verified\r\n\r\nhello\r\n")
                    if code != 450:
                        return code, text
                    time.sleep(0.2)
                raise AssertionError(f"no answer for {address}\n{postfix.log()}\n{popgate.log()}")

            code, text = rcpt("ghost@example.org")
            assert code == 550 and b"User unknown" in text, text
            assert rcpt("alice@example.org")[0] == 250
            new = mail / "example.org" / "alice" / "new"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (new.is_dir() and os.listdir(new)):
                time.sleep(0.05)
            assert [p.read_bytes().endswith(b"hello\n") for p in new.iterdir()] == [True], \
                postfix.log()
        assert "status=bounced" not in postfix.log()
