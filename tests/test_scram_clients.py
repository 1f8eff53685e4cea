"""
SCRAM against a real client: mpop (GNU SASL inside) logs in to a real
popgate with SCRAM-SHA-256 and SCRAM-SHA-1, with keys written by
C{doveadm pw} and by C{popgate pw}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.popgate_server import REPO, PopgateProcess, child_env
from tests.services import need_program

pytestmark = pytest.mark.integration

MESSAGE = b"From: a@example.org\nSubject: scram\n\nfetched with SCRAM\n"


def popgate_pw(scheme: str, password: str) -> str:
    """What C{popgate pw -s SCHEME} prints."""
    result = subprocess.run(
        [sys.executable, "-m", "popgate.cli", "pw", "-s", scheme, "-p", password],
        capture_output=True, text=True, check=True, env=child_env(), cwd=REPO, timeout=60)
    return result.stdout.strip()


def doveadm_pw(scheme: str, password: str) -> str:
    doveadm = need_program("doveadm", "dovecot-core")
    result = subprocess.run([doveadm, "pw", "-s", scheme, "-p", password],
                            capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip()


@dataclass
class Site:
    root: Path
    server: PopgateProcess

    def mail(self, user: str) -> Path:
        return self.root / "mail" / user

    def mpop(self, user: str, password: str, auth: str) -> tuple[subprocess.CompletedProcess[str],
                                                                  bytes]:
        """Run mpop once for C{user}; return its run and what it delivered."""
        program = need_program("mpop", "mpop")
        home = self.root / f"home-{user}-{auth}"
        home.mkdir(exist_ok=True)
        delivered = home / "mbox"
        delivered.touch()
        rc = home / "mpoprc"
        rc.write_text(
            "defaults\n"
            "tls off\n"
            f"auth {auth}\n"
            "account test\n"
            "host 127.0.0.1\n"
            f"port {self.server.port}\n"
            f"user {user}\n"
            f"password {password}\n"
            "keep on\n"
            "timeout 30\n"
            f"uidls_file {home / 'uidls'}\n"
            f"delivery mbox {delivered}\n")
        rc.chmod(0o600)
        env = dict(os.environ, HOME=str(home))
        result = subprocess.run([program, "-C", str(rc), "--debug", "test"],
                                capture_output=True, text=True, env=env, timeout=120)
        return result, delivered.read_bytes()


@pytest.fixture(scope="module")
def users_text() -> str:
    """The passwd-file, made once for the module (three programs run to
    write the keys); each test still gets a server of its own, so no
    test's failed logins or log lines reach another."""
    bob = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(4)).decode()
    return (f"alice:{doveadm_pw('SCRAM-SHA-256', 'alice-pw')}\n"
            f"carol:{doveadm_pw('SCRAM-SHA-1', 'carol-pw')}\n"
            f"erin:{popgate_pw('SCRAM-SHA-256', 'erin-pw')}\n"
            f"bob:{{BLF-CRYPT}}{bob}\n")


@pytest.fixture
def site(tmp_path: Path, users_text: str) -> Iterator[Site]:
    users = tmp_path / "users"
    users.write_text(users_text)
    for user in ("alice", "carol", "erin", "bob"):
        mail = tmp_path / "mail" / user
        for sub in ("new", "cur", "tmp"):
            (mail / sub).mkdir(parents=True)
        (mail / "new" / "1700000000.M1P1.scram").write_bytes(MESSAGE)
    args = ["--auth", f"passwd-file:{users}", "--store", f"maildir:{tmp_path / 'mail'}/%n",
            "--auth-failure-delay", "0.2"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        yield Site(tmp_path, server)


@pytest.mark.parametrize(("user", "password", "auth", "mechanism"), [
    ("alice", "alice-pw", "scram-sha-256", "SCRAM-SHA-256"),  # doveadm's keys
    ("erin", "erin-pw", "scram-sha-256", "SCRAM-SHA-256"),  # popgate pw's keys
    ("carol", "carol-pw", "scram-sha-1", "SCRAM-SHA-1"),
    ("alice", "alice-pw", "on", "SCRAM-SHA-256"),  # mpop's own choice
])
def test_mpop_logs_in_with_scram(site: Site, user: str, password: str, auth: str,
                                 mechanism: str) -> None:
    result, delivered = site.mpop(user, password, auth)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"--> AUTH {mechanism}" in result.stdout + result.stderr
    assert "fetched with SCRAM" in delivered.decode()
    log = site.server.log()
    assert f"Login: user=<{user}>, method={mechanism}" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "wrong"),  # a wrong password
    ("ghost", "alice-pw"),  # nobody
    ("bob", "bob-pw"),  # a bcrypt hash: no SCRAM keys
])
def test_mpop_refused(site: Site, user: str, password: str) -> None:
    result, delivered = site.mpop(user, password, "scram-sha-256")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "-ERR [AUTH] Authentication failed." in output
    assert delivered == b""
    log = site.server.log()
    assert "Login failed: reason=" in log and "Traceback" not in log
    assert f"user=<{user}>, method=SCRAM-SHA-256" in log


def test_a_bcrypt_user_still_logs_in_with_user_pass(site: Site) -> None:
    # SCRAM is offered (the file has keys), so mpop's "auth on" would pick
    # it; a user with a bcrypt hash names the mechanism it can use.
    result, delivered = site.mpop("bob", "bob-pw", "user")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fetched with SCRAM" in delivered.decode()
