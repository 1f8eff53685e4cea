"""
Start-up refuses what cannot work: every path needed after twistd's
--uid/--gid is checked as that user (popgate.startup_checks), and a mail
template without a per-user placeholder needs shared=yes.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from popgate import startup_checks, tap
from popgate.backends import build_checkers, build_store
from popgate.build import build_server, build_tls
from popgate.cred.userinfo import AvatarId
from popgate.startup_checks import READ, SEARCH, WRITE, WRITE_OR_CREATE, RunAs
from popgate.stores import mailpath
from popgate.stores.registry import make_store
from tests import popgate_server
from tests.pop3_oracle import RawClient
from tests.popgate_server import REPO, PopgateProcess, run_twistd
from tests.tlscerts import make_pki

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
SHARED = ("has no per-user placeholder (%u, %n); every user would share one mailbox — "
          "add shared=yes if that is really wanted")


def nobody() -> RunAs:
    entry = pwd.getpwnam("nobody")
    return RunAs(entry.pw_uid, entry.pw_gid, "nobody")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="popgate-checks-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def parse(args: list[str], parent: dict[str, Any] | None = None) -> tap.Options:
    options = tap.Options()
    if parent is not None:
        options.parent = parent  # type: ignore[assignment]
    options.parseOptions(args)
    return options


def build(args: list[str], parent: dict[str, Any] | None = None) -> Any:
    """What makeService does (the checks run there), on a fake reactor."""
    return build_server(parse(args, parent).config, MemoryReactorClock())


def needs(args: list[str]) -> list[startup_checks.Need]:
    config = parse(args).config
    return startup_checks.needs(config, build_store(config, MemoryReactorClock()), build_checkers(config),
                                build_tls(config))


# -- shared=yes


@pytest.mark.parametrize("description", ["maildir:/srv/mail/shared", "mbox:/var/mail/shared",
                                         "maildir:/srv/100%%u", "mbox:/var/mail/x,dotlock=no"])
def test_a_template_without_a_user_is_refused(description: str) -> None:
    kind, _, rest = description.partition(":")
    template = rest.split(",")[0]
    with pytest.raises(usage.UsageError) as e:
        build_store(parse(["--store", description, "--auth", "memory:alice:pw"]).config,
                    MemoryReactorClock())
    assert str(e.value) == f"--store: {kind}: the path {template} {SHARED}"


def test_the_domain_alone_is_not_per_user() -> None:
    with pytest.raises(ValueError, match="every user of a domain would share one mailbox"):
        make_store("maildir:/srv/mail/%d", MemoryReactorClock())


@pytest.mark.parametrize("description", ["maildir:/srv/mail/shared,shared=yes",
                                         "mbox:/var/mail/shared,shared=yes,dotlock=no",
                                         "mbox:/var/mail/shared,dotlock=no,shared=YES",
                                         "maildir:/srv/%n,shared=no", "maildir:/srv/%u",
                                         "mbox:/var/mail/%d/%n"])
def test_shared_yes_or_a_user_placeholder_is_accepted(description: str) -> None:
    store = make_store(description, MemoryReactorClock())
    template = store.template if hasattr(store, "template") else store.settings.template
    assert template == description.partition(":")[2].split(",")[0]


def test_shared_takes_yes_or_no() -> None:
    with pytest.raises(ValueError, match="maildir: shared must be yes or no"):
        make_store("maildir:/srv/%n,shared=maybe", MemoryReactorClock())
    with pytest.raises(ValueError, match="mbox: shared must be yes or no"):
        make_store("mbox:/var/mail/%u,shared=", MemoryReactorClock())


def test_a_location_from_the_user_store_still_wins() -> None:
    """LDAP mail_attribute / SQL column 2: the user's own location, not the
    template, whatever the template says."""
    store = make_store("maildir:/var/mail/%d/%n", MemoryReactorClock())
    assert store.maildir_for(AvatarId("bob@example.org", "/srv/bob")) == "/srv/bob"
    assert store.maildir_for(AvatarId("bob@example.org", "maildir:/srv/b")) == "/srv/b"
    assert store.maildir_for(AvatarId("bob@example.org")) == "/var/mail/example.org/bob"


def test_the_shipped_examples_give_each_user_a_mailbox() -> None:
    found = []
    files = [Path(REPO, "README.md"), *sorted(Path(REPO, "docs").glob("*.md"))] + \
        [p for p in Path(REPO, "etc").rglob("*") if p.is_file()]
    for path in files:
        # Not the expanded location `popgate auth test` prints ("  mail: maildir:/...").
        text = re.sub(r"(?m)^  mail: .*$", "", path.read_text())
        for match in re.finditer(r"\b(?:maildir|mbox):(/[^\s'\"`)]*)", text):
            template, *options = match.group(1).rstrip(".").split(",")
            found.append(template)
            assert mailpath.is_per_user(template) or "shared=yes" in options, (path, template)
    assert len(found) > 20


def test_fixed_root() -> None:
    assert mailpath.fixed_root("/var/mail/vhosts/%d/%n") == "/var/mail/vhosts"
    assert mailpath.fixed_root("/home/%n/Maildir") == "/home"
    assert mailpath.fixed_root("/srv/mail/user-%n") == "/srv/mail"
    assert mailpath.fixed_root("/srv/100%%/%u") == "/srv/100%"
    assert mailpath.fixed_root("/srv/shared") == "/srv/shared"


# -- what is checked, and for whom


def test_no_check_without_a_uid_or_as_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = parse(["--store", "memory:", "--auth", "memory:alice:pw"])
    assert startup_checks.run_as(options) is None  # no twistd parent (workers, tests)
    options.parent = {"uid": None, "gid": 65534}  # type: ignore[assignment]
    assert startup_checks.run_as(options) is None
    options.parent = {"uid": 0, "gid": None}  # type: ignore[assignment]
    assert startup_checks.run_as(options) is None
    options.parent = {"uid": nobody().uid, "gid": None, "chroot": "/srv"}  # type: ignore[assignment]
    assert startup_checks.run_as(options) is None
    options.parent = {"uid": nobody().uid, "gid": None}  # type: ignore[assignment]
    assert startup_checks.run_as(options) == nobody()  # twistd's default: the user's group
    options.parent = {"uid": nobody().uid, "gid": 0}  # type: ignore[assignment]
    assert startup_checks.run_as(options) == RunAs(nobody().uid, 0, "nobody")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert startup_checks.run_as(options) is None


def test_the_paths_the_options_need(tmp_path: Path) -> None:
    users = write(tmp_path / "users", "alice:{PLAIN}pw\n", 0o600)
    pki = make_pki(tmp_path / "pki")
    found = needs(["--auth", f"htpasswd:{users}", "--auth", f"passwd-file:{users}",
                   "--store", "maildir:/srv/mail/%d/%n",
                   "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                   "--lmtp", "unix:/run/popgate/lmtp.sock:mode=660",
                   "--lmtp", "unix:/run/other/lmtp.sock:lockfile=1"])
    assert [(n.option, n.path, n.access) for n in found] == [
        ("--auth htpasswd", str(users), READ),
        ("--auth passwd-file", str(users), READ),
        ("--tls-cert", str(pki.cert), READ),
        ("--tls-key", str(pki.key), READ),
        ("--store maildir", "/srv/mail", SEARCH),
        ("--lmtp unix:/run/popgate/lmtp.sock:mode=660", "/run/popgate", WRITE),
    ]
    mbox = needs(["--auth", f"htpasswd:{users}", "--store", "mbox:/var/mail/%u,lockdir=/run/pl"])
    assert [(n.path, n.access) for n in mbox][1:] == [
        ("/var/mail", WRITE), ("/run/pl", WRITE)]
    virtual = needs(["--auth", f"htpasswd:{users}", "--store", "mbox:/var/mail/%d/%n"])
    assert [(n.path, n.access) for n in virtual][1:] == [
        ("/var/mail", SEARCH)]


# -- probing as the user (root only)


@pytest.mark.integration
@as_root
def test_probe_as_nobody_finds_what_blocks(base: Path) -> None:
    secret = write(base / "secret", "x", 0o600)
    public = write(base / "public", "x", 0o644)
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    hidden = write(closed / "file", "x", 0o644)
    mine = base / "mine"
    mine.mkdir()
    os.chown(mine, nobody().uid, nobody().gid)
    paths = [(str(secret), READ), (str(public), READ), (str(hidden), READ),
             (str(base), SEARCH), (str(base), WRITE), (str(mine / "a" / "b"), WRITE_OR_CREATE),
             (str(base / "new"), WRITE_OR_CREATE), (str(base / "gone"), SEARCH),
             (str(public), SEARCH)]
    assert startup_checks.probe_as(nobody(), paths) == [
        ("denied", str(secret)), ("ok", str(public)), ("denied", str(closed)),
        ("ok", str(base)), ("denied", str(base)), ("ok", str(mine)),
        ("cannot-create", str(base)), ("missing", str(base / "gone")),
        ("not-a-directory", str(public))]


def member_of_a_supplementary_group() -> tuple[pwd.struct_passwd, grp.struct_group] | None:
    for group in grp.getgrall():
        for name in group.gr_mem:
            try:
                user = pwd.getpwnam(name)
            except KeyError:
                continue
            if user.pw_uid != 0 and user.pw_gid != group.gr_gid:
                return user, group
    return None


@pytest.mark.integration
@as_root
def test_supplementary_groups_count_as_twistd_sets_them(base: Path) -> None:
    found = member_of_a_supplementary_group()
    if found is None:
        pytest.skip("no user with a supplementary group on this host")
    user, group = found
    shared = write(base / "group-readable", "x", 0o640)
    os.chown(shared, 0, group.gr_gid)
    other = write(base / "root-group", "x", 0o640)
    who = RunAs(user.pw_uid, user.pw_gid, user.pw_name)
    assert startup_checks.probe_as(who, [(str(shared), READ), (str(other), READ)]) == [
        ("ok", str(shared)), ("denied", str(other))]


@pytest.mark.integration
@as_root
def test_check_raises_one_line_naming_the_file(base: Path) -> None:
    users = write(base / "users", "alice:{PLAIN}pw\n", 0o600)
    parent = {"uid": nobody().uid, "gid": None}
    with pytest.raises(usage.UsageError) as e:
        build(["--auth", f"htpasswd:{users}", "--store", f"maildir:{base}/%n"], parent)
    assert str(e.value) == (f"--auth htpasswd: {users} is not readable by user nobody "
                            "(mode 0600, owner root, group root)")
    users.chmod(0o644)
    mail = base / "mail"
    mail.mkdir(mode=0o700)
    mail.chmod(0o700)
    with pytest.raises(usage.UsageError) as e:
        build(["--auth", f"htpasswd:{users}", "--store", f"maildir:{mail}/%n"], parent)
    assert str(e.value) == (f"--store maildir: the mail root {mail} is not searchable by user "
                            "nobody (mode 0700, owner root, group root)")
    # A root-owned mail root the user can enter is fine: its Maildirs may
    # be made by the admin.
    mail.chmod(0o755)
    build(["--auth", f"htpasswd:{users}", "--store", f"maildir:{mail}/%n"], parent)
    build(["--auth", f"htpasswd:{users}", "--store", f"maildir:{base}/%n"], parent)  # fine now


# -- real twistd (root only)


def twistd(*args: str) -> str:
    result = run_twistd(["--uid", "nobody", "--gid", "nogroup", "-n", "--pidfile=", "popgate",
                         "--pop3", "tcp:0:interface=127.0.0.1", *args])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return output


@as_root
@pytest.mark.integration
def test_twistd_refuses_a_root_only_user_file_in_one_line(base: Path) -> None:
    users = write(base / "users", "alice:{PLAIN}pw\n", 0o600)
    output = twistd("--auth", f"htpasswd:{users}", "--store", f"maildir:{base}/%n")
    line = (f"--auth htpasswd: {users} is not readable by user nobody "
            "(mode 0600, owner root, group root)")
    assert len([entry for entry in output.splitlines() if line in entry]) == 1, output


@as_root
@pytest.mark.integration
def test_twistd_refuses_a_key_sighup_could_not_reread(base: Path) -> None:
    pki = make_pki(base / "pki")
    for path in (base / "pki", pki.cert):
        path.chmod(0o755 if path.is_dir() else 0o644)
    pki.key.chmod(0o600)
    users = write(base / "users", "alice:{PLAIN}pw\n", 0o644)
    os.chown(base, nobody().uid, nobody().gid)
    output = twistd("--auth", f"htpasswd:{users}", "--store", f"maildir:{base}/%n",
                    "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    line = (f"--tls-key: the key {pki.key} is not readable by user nobody (mode 0600, owner "
            "root, group root); SIGHUP could not re-read it")
    assert len([entry for entry in output.splitlines() if line in entry]) == 1, output


@as_root
@pytest.mark.integration
def test_a_configuration_nobody_can_use_starts_and_serves_as_nobody(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check refuses only what would fail: with the files readable and
    the mail root nobody's, twistd drops to nobody and logins work."""
    users = write(base / "users", "alice:{PLAIN}pw\n", 0o644)
    mail = base / "mail"
    (mail / "alice" / "new").mkdir(parents=True)
    (mail / "alice" / "new" / "1700000000.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    for path in [mail, *mail.rglob("*")]:
        os.chown(path, nobody().uid, nobody().gid)
    command = popgate_server.twistd_command
    monkeypatch.setattr(popgate_server, "twistd_command",
                        lambda: command() + ["--uid", "nobody", "--gid", "nogroup"])
    args = ["--auth", f"htpasswd:{users}", "--store", f"maildir:{mail}/%n",
            "--auth-failure-delay", "0"]
    with PopgateProcess(args, log_path=str(base / "log")) as server:
        client = RawClient(server.port)
        client.login(b"alice", b"pw")
        assert client.cmd(b"STAT").startswith(b"+OK 1 ")
        assert client.cmd(b"QUIT").startswith(b"+OK")
        assert server.process is not None
        owner = os.stat(f"/proc/{server.process.pid}").st_uid
        assert owner == nobody().uid
    # The mailbox was opened after the drop: its lock file is nobody's.
    assert os.stat(mail / "alice" / "popgate-pop3.lock").st_uid == nobody().uid
