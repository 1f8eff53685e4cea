"""
UIDL migration with real clients (issue 15): fetchmail (C{--uidl --keep},
an idfile), mpop (C{uidls_file}) and getmail6 (oldmail files) poll a real
Dovecot POP3; the mail
moves to popgate (files renamed, as a copy made anew would be, so none of
popgate's own UIDLs equals Dovecot's); C{popgate uidl import} from the
live Dovecot, or separately from its C{dovecot-uidlist}; the next poll of
popgate downloads nothing.  The clients name the server the same way for
both polls (fetchmail's C{via}, mpop's C{host}, getmail's oldmail file
name), as after a DNS switch.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.popgate_server import REPO, PopgateProcess, child_env
from tests.services import need_program
from tests.test_dovecot_parity import USERS, DovecotProcess, make_maildirs, write_passwd

pytestmark = pytest.mark.integration

POLLED = ("alice", "bob")
MASTER_CONF = """
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/master-passwd
  master = yes
}}
"""


class DovecotWithMaster(DovecotProcess):
    """Dovecot with a master user, C{migrator} (C{user*migrator} logins)."""

    def config_text(self, uid: int, gid: int) -> str:
        (self.base / "master-passwd").write_text("migrator:{PLAIN}masterpw::::::\n")
        return super().config_text(uid, gid) + MASTER_CONF.format(base=self.base)


class Site:
    """Dovecot on the old Maildirs; popgate on renamed copies."""

    def __init__(self, base: Path) -> None:
        self.base = base
        make_maildirs(base / "mail")
        write_passwd(base / "passwd")
        (base / "plain-passwords").write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
        self.dovecot = DovecotWithMaster(base, None, None)
        self.servers: list[PopgateProcess] = []

    def new_store(self, name: str) -> Path:
        """The old Maildirs copied, each file under a new base name."""
        root = self.base / name
        for user in USERS:
            for sub in ("cur", "new", "tmp"):
                (root / user / sub).mkdir(parents=True)
            old_files = sorted((d, n) for d in ("cur", "new")
                               for n in os.listdir(self.base / "mail" / user / d))
            for i, (sub, old) in enumerate(old_files):
                flags = old.partition(":")[2]
                shutil.copyfile(self.base / "mail" / user / sub / old,
                                root / user / sub / (f"{1800000000 + i}.M{i}P9.newhost"
                                                     + (":" + flags if flags else "")))
        return root

    def popgate(self, root: Path) -> PopgateProcess:
        server = PopgateProcess(["--auth", f"passwd-file:{self.base / 'passwd'}",
                                 "--store", f"maildir:{root}/%n"],
                                log_path=str(self.base / f"popgate-{root.name}.log"))
        server.start()
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.dovecot.stop()


@pytest.fixture
def site() -> Iterator[Site]:
    need_program("dovecot", "dovecot-pop3d")
    base = Path(tempfile.mkdtemp(prefix="popgate-uidl-"))
    os.chmod(base, 0o755)
    running = Site(base)
    try:
        running.dovecot.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def popgate_uidl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from popgate.cli import main; "
                           "raise SystemExit(main())", "uidl", *args],
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=120)


class Client:
    home: Path

    def poll(self, port: int) -> int:
        raise NotImplementedError

    def clone(self, home: Path) -> Client:
        """Another client with this one's state (its UIDL file) so far."""
        shutil.copytree(self.home, home)
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.home = home
        if isinstance(twin, Fetchmail):
            twin.delivered = home / "delivered"
        return twin


class Fetchmail(Client):
    """fetchmail --uidl --keep, its idfile kept from poll to poll."""

    def __init__(self, home: Path) -> None:
        self.program = need_program("fetchmail", "fetchmail")
        self.home = home
        home.mkdir()
        self.delivered = home / "delivered"
        self.delivered.touch()

    def poll(self, port: int) -> int:
        """One poll of every user; how many messages it delivered."""
        rc = self.home / "fetchmailrc"
        users = "".join(f'  user "{u}" there with password "{USERS[u]}" is "{getpass.getuser()}"'
                        " here\n  sslproto '' no stripcr\n"
                        f'  mda "cat >> {self.delivered}; echo >> {self.delivered}.count"\n'
                        for u in POLLED)
        rc.write_text("set no syslog\n"
                      f"set idfile {self.home / 'idfile'}\n"
                      f"poll mail.example.org via 127.0.0.1 protocol pop3 port {port} "
                      "auth password timeout 30\n" + users)
        rc.chmod(0o600)
        count = self.home / "delivered.count"
        before = count.read_text().count("\n") if count.exists() else 0
        env = dict(os.environ, HOME=str(self.home), FETCHMAILHOME=str(self.home))
        result = subprocess.run([self.program, "--uidl", "--keep", "--nosyslog", "-f", str(rc)],
                                capture_output=True, text=True, env=env, timeout=60)
        # 0: mail delivered; 1: no new mail.
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return (count.read_text().count("\n") if count.exists() else 0) - before


class Mpop(Client):
    """mpop with keep on, only_new on and a uidls_file."""

    def __init__(self, home: Path) -> None:
        self.program = need_program("mpop", "mpop")
        self.home = home
        home.mkdir()

    def poll(self, port: int) -> int:
        rc = self.home / "mpoprc"
        count = self.home / "count"
        rc.write_text("".join(
            f"account {u}\nhost 127.0.0.1\nport {port}\ntls off\nauth user\nuser {u}\n"
            f"password {USERS[u]}\nkeep on\nonly_new on\n"
            f"uidls_file {self.home / 'uidls'}\n"
            f"delivery mda \"cat > /dev/null; echo >> {count}\"\n\n" for u in POLLED))
        rc.chmod(0o600)
        before = count.read_text().count("\n") if count.exists() else 0
        result = subprocess.run([self.program, "-C", str(rc), *POLLED], capture_output=True,
                                text=True, env=dict(os.environ, HOME=str(self.home)), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return (count.read_text().count("\n") if count.exists() else 0) - before


class Getmail(Client):
    """getmail6, read_all off and delete off: its oldmail files remember.
    They are named after the server and port; popgate on another port
    than the old server stands for the same name after the switch, so the
    files are carried to the port polled."""

    def __init__(self, home: Path) -> None:
        self.program = need_program("getmail", "getmail6")
        self.home = home
        home.mkdir()
        self.last_port: int | None = None

    def poll(self, port: int) -> int:
        count = self.home / "count"
        if self.last_port is not None and self.last_port != port:
            for u in POLLED:
                old = self.home / f"oldmail-127.0.0.1-{self.last_port}-{u}"
                if old.exists():
                    shutil.copyfile(old, self.home / f"oldmail-127.0.0.1-{port}-{u}")
        self.last_port = port
        rcs = []
        for u in POLLED:
            rc = self.home / f"getmailrc-{u}"
            rc.write_text(
                f"[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {port}\n"
                f"username = {u}\npassword = {USERS[u]}\n\n"
                "[destination]\ntype = MDA_external\npath = /bin/sh\n"
                f"arguments = (\"-c\", \"cat > /dev/null; echo >> {count}\")\n"
                "allow_root_commands = true\n\n"
                "[options]\nread_all = false\ndelete = false\nverbose = 0\n")
            rcs += ["-r", rc.name]
        before = count.read_text().count("\n") if count.exists() else 0
        result = subprocess.run([self.program, "--getmaildir", str(self.home), *rcs],
                                capture_output=True, text=True,
                                env=dict(os.environ, HOME=str(self.home)), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return (count.read_text().count("\n") if count.exists() else 0) - before


def clients(site: Site) -> list[Client]:
    found: list[Client] = [Fetchmail(site.base / "fetchmail"), Mpop(site.base / "mpop"),
                           Getmail(site.base / "getmail")]
    total = 7  # alice's five and bob's two
    for client in found:
        assert client.poll(site.dovecot.port) == total
        assert client.poll(site.dovecot.port) == 0  # it keeps UIDLs indeed
    return found


def test_import_from_live_dovecot_then_clients_download_nothing(site: Site) -> None:
    polled = clients(site)
    root = site.new_store("new")
    server = site.popgate(root)
    store = f"maildir:{root}/%n"
    source = ("--from-pop3", f"127.0.0.1:{site.dovecot.port}",
              "--passwords", str(site.base / "plain-passwords"), *POLLED)
    verify = popgate_uidl("verify", "--store", store, *source)
    assert verify.returncode == 1 and "alice: NOT OK" in verify.stdout, verify.stdout
    done = popgate_uidl("import", "--store", store, *source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alice: 5 old UIDLs, 5 matched (5 by digest), changed 5; 0 old unmatched, " \
           "0 new unmatched" in done.stdout, done.stdout
    verify = popgate_uidl("verify", "--store", store, *source)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for client in polled:
        assert client.poll(server.port) == 0, type(client).__name__
    # Mail that arrives after the migration is new to the clients.
    (root / "bob" / "new" / "1900000000.M1P1.later").write_bytes(
        b"Subject: after the move\n\nnew mail\n")
    for client in polled:
        assert client.poll(server.port) == 1, type(client).__name__


def test_import_from_dovecot_uidlist_then_clients_download_nothing(site: Site) -> None:
    polled = clients(site)
    assert (site.base / "mail" / "alice" / "dovecot-uidlist").exists()
    root = site.new_store("new")
    server = site.popgate(root)
    # Without the import, a client would download everything again.
    for client in polled:
        assert client.clone(client.home.with_name(client.home.name + "-control")) \
            .poll(server.port) == 7
    store = f"maildir:{root}/%n"
    source = ("--from-dovecot", f"{site.base}/mail/%n", "--uidl-format", "%08Xu%08Xv", *POLLED)
    dry = popgate_uidl("import", "--dry-run", "--store", store, *source)
    assert dry.returncode == 0 and "would change 5" in dry.stdout, dry.stdout + dry.stderr
    assert not (root / "alice" / "popgate-uidls").exists()
    done = popgate_uidl("import", "--store", store, *source)
    assert done.returncode == 0, done.stdout + done.stderr
    again = popgate_uidl("import", "--store", store, *source)
    assert "changed 0" in again.stdout, again.stdout
    assert popgate_uidl("verify", "--store", store, *source).returncode == 0
    for client in polled:
        assert client.poll(server.port) == 0, type(client).__name__


def test_import_with_a_master_user(site: Site) -> None:
    polled = clients(site)
    root = site.new_store("new")
    server = site.popgate(root)
    (site.base / "master-secret").write_text("masterpw\n")
    store = f"maildir:{root}/%n"
    source = ("--from-pop3", f"127.0.0.1:{site.dovecot.port}", "--master", "migrator",
              "--master-password-file", str(site.base / "master-secret"), *POLLED)
    done = popgate_uidl("import", "--store", store, *source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bob: 2 old UIDLs, 2 matched (2 by digest), changed 2" in done.stdout, done.stdout
    for client in polled:
        assert client.poll(server.port) == 0, type(client).__name__
    (site.base / "master-secret").write_text("wrong\n")
    refused = popgate_uidl("import", "--store", store, *source)
    assert refused.returncode == 1
    assert "alice: not imported: old server: login refused" in refused.stdout, refused.stdout
