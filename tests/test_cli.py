"""
The admin command and twistd's errors as an admin meets them: real
processes, their exit status and what they print.  Errors are one line on
standard error (a server's start-up failure, which comes after twistd
started logging, is one line of its log); C{who} and C{kick} run against
a live C{twistd popgate} with poplib sessions; C{check-config} against
the shipped examples, a real PostgreSQL and a real slapd.
"""

from __future__ import annotations

import errno
import os
import poplib
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from popgate.cred.schemes import hash_password, verify_password
from tests.harness import LOOPBACK
from tests.ldap_server import SERVICE_PASSWORD, LDAPServer, local_slapd  # noqa: F401
from tests.pg_database import throwaway_database
from tests.popgate_server import REPO, PopgateProcess, child_env, free_port, run_twistd
from tests.services import need

pytestmark = pytest.mark.integration

ETC = Path(REPO) / "etc"
PASSWORD = "alice-pw"


def popgate(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the popgate command (as the console script does)."""
    return subprocess.run([sys.executable, "-c", "import sys; from popgate.cli import main; "
                           "sys.exit(main())", *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env or child_env(), cwd=REPO,
                          timeout=timeout, **kw)


def one_line(text: str) -> str:
    """The only line of C{text}."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password(PASSWORD, rounds=4, prefix=False)}\n"
                    f"bob:{hash_password('bob-pw', rounds=4, prefix=False)}\n")
    return path


@pytest.fixture
def server_args(tmp_path: Path, users: Path) -> list[str]:
    (tmp_path / "mail").mkdir()
    return ["--auth", f"htpasswd:{users}", "--store", f"maildir:{tmp_path}/mail/%n"]


# -- popgate --version


def test_version() -> None:
    done = popgate("--version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["popgate", "Twisted", "Python", "OpenSSL"]
    assert re.fullmatch(r"popgate \d+\.\d+\.\d+.*", lines[0])
    assert "pyOpenSSL" in lines[3]


# -- twistd popgate: every error in one line


@pytest.mark.parametrize("args, message", [
    (["--idle-timeout", "x"],
     "popgate: --idle-timeout must be a number, not 'x' (see twistd popgate --help)"),
    (["--bogus"], "popgate: option --bogus not recognized (see twistd popgate --help)"),
    (["--pop3", "1110"], "popgate: --pop3 1110: Unknown endpoint type: '1110'"),
    (["--auth", "file:/etc/passwd"],
     "popgate: --auth: 'file' is Twisted's checker, not a user store popgate can use "
     "(see --help-auth)"),
    (["--auth", "memory:"], "popgate: --auth memory: give USER:PASSWORD pairs, e.g. "
     "memory:alice:secret"),
    (["--help-auth-type", "unix"], "popgate: --help-auth-type: 'unix' is Twisted's checker, "
     "not a user store popgate can use (see --help-auth)"),
])
def test_twistd_errors_are_one_line(server_args: list[str], args: list[str],
                                    message: str) -> None:
    done = run_twistd(["-n", "--pidfile=", "popgate", *server_args, *args])
    assert done.returncode == 1
    assert one_line(done.stderr) == message
    assert done.stdout == ""


@pytest.mark.parametrize("module, auth, extra", [
    ("ldaptor", "ldap:url=ldap://127.0.0.1/,base=dc=example,dc=org", "ldap"),
    ("psycopg", "sql:dsn=postgresql://popgate@127.0.0.1/mail", "sql"),
    ("pymysql", "sql:dsn=mysql://popgate@127.0.0.1/mail", "sql"),
])
def test_a_missing_library_is_one_line_with_the_extra(tmp_path: Path, server_args: list[str],
                                                     module: str, auth: str,
                                                     extra: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] == {module!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = child_env()
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{env['PYTHONPATH']}"
    done = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                           "-n", "--pidfile=", "popgate", "--store", "memory:", "--auth", auth],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert done.returncode == 1
    assert one_line(done.stderr) == (f"popgate: --auth {auth.partition(':')[0]}: the {module} "
                                     f"module is missing: pip install 'popgate[{extra}]'")


def test_a_port_in_use_is_one_log_line(tmp_path: Path, server_args: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_twistd(["-n", "--pidfile=", "popgate", *server_args,
                           "--pop3", f"tcp:{port}:interface={LOOPBACK}"])
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    failures = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(failures) == 1, output
    assert failures[0].endswith(f"[popgate.build#critical] --pop3 tcp:{port}:interface={LOOPBACK}"
                                f": cannot listen on {LOOPBACK}:{port}: Address already in use")


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_a_daemon_that_cannot_listen_says_so_and_exits(tmp_path: Path, server_args: list[str],
                                                       workers: list[str]) -> None:
    """twistd without -n: its first process waits for a word from the
    daemon, and got none when a listener's failure ended the daemon
    (twistd tells it only of exceptions), so it waited for ever."""
    pidfile = tmp_path / "twistd.pid"
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_twistd([f"--logfile={tmp_path / 'twistd.log'}", f"--pidfile={pidfile}",
                           "popgate", *server_args, "--pop3", f"tcp:{port}:interface={LOOPBACK}",
                           *workers], timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 20
    assert f"--pop3 tcp:{port}:interface={LOOPBACK}: cannot listen" in done.stderr
    assert "Address already in use" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not pidfile.exists()  # nothing to say "another twistd is running"


def test_help_auth_offers_popgate_stores_only() -> None:
    done = run_twistd(["popgate", "--help-auth"])
    assert done.returncode == 0
    types = {line.split()[0] for line in done.stdout.splitlines()
             if re.match(r"  \S", line)}
    assert types == {"htpasswd", "ldap", "passwd-file", "sql"}
    done = run_twistd(["popgate", "--help-auth-type", "sql"])
    assert done.returncode == 0
    for key in ("dsn", "query", "user_query", "scheme", "pool_min", "pool_max", "timeout"):
        assert re.search(rf"^  {key}=  ", done.stdout, re.M), key


# -- popgate passwd and popgate pw


def test_passwd(tmp_path: Path) -> None:
    path = tmp_path / "users"
    done = popgate("passwd", str(path), "alice", stdin="s3cret\ns3cret\n")
    assert done.returncode == 0 and done.stdout == f"added alice in {path}\n", done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    done = popgate("passwd", str(path), "alice", stdin="n3w\nn3w\n")
    assert done.returncode == 0 and "changed alice" in done.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    name, stored = path.read_text().strip().split(":", 1)
    assert name == "alice" and verify_password(b"n3w", stored)


@pytest.mark.parametrize("args, stdin, message", [
    (["alice"], "", "popgate passwd: no password given (standard input ended)"),
    (["alice"], "one\ntwo\n", "popgate passwd: the passwords do not match"),
    (["alice"], "\n", "popgate passwd: empty password refused"),
    (["bad:name", "--password", "x"], "",
     "popgate passwd: the user name 'bad:name' contains ':', which ends a name in the file"),
    (["bad name", "--password", "x"], "",
     "popgate passwd: the user name 'bad name' contains whitespace or a control character"),
])
def test_passwd_errors_are_one_line(tmp_path: Path, args: list[str], stdin: str,
                                    message: str) -> None:
    path = tmp_path / "users"
    done = popgate("passwd", str(path), *args, stdin=stdin)
    assert done.returncode == 1
    assert one_line(done.stderr) == message
    assert not path.exists()


def test_passwd_file_errors(tmp_path: Path) -> None:
    done = popgate("passwd", str(tmp_path / "no" / "users"), "alice", "--password", "x")
    assert (done.returncode, one_line(done.stderr)) == (
        1, f"popgate passwd: cannot create {tmp_path}/no/users: no directory {tmp_path}/no")
    done = popgate("passwd", str(tmp_path), "alice", "--password", "x")
    assert (done.returncode, one_line(done.stderr)) == (1, f"popgate passwd: {tmp_path} is a "
                                                           "directory")


def test_pw() -> None:
    done = popgate("pw", "-s", "ssha512", "-p", "s3cret")
    assert done.returncode == 0
    stored = done.stdout.strip()
    assert stored.startswith("{SSHA512}") and verify_password(b"s3cret", stored)
    done = popgate("pw", stdin="s3cret\ns3cret\n")
    assert done.returncode == 0 and done.stdout.startswith("{BLF-CRYPT}$2y$10$")
    assert popgate("pw", "-p", "s3cret", "-t", stored).returncode == 0
    assert popgate("pw", "-p", "wrong", "-t", stored).returncode == 1
    listed = popgate("pw", "-l").stdout
    assert {"BLF-CRYPT", "ARGON2ID", "SHA512-CRYPT", "SSHA", "PLAIN"} <= {
        line.split()[0] for line in listed.splitlines()}
    done = popgate("pw", "-s", "ROT13", "-p", "x")
    assert (done.returncode, one_line(done.stderr)) == (
        2, "popgate pw: unknown scheme 'ROT13' (popgate pw -l lists them)")


# -- popgate check-config


def test_check_config_ok(server_args: list[str]) -> None:
    done = popgate("check-config", *server_args, "--pop3", "tcp:1110")
    assert done.returncode == 0, done.stdout
    assert one_line(done.stdout) == ("popgate check-config: ok: store maildir, 1 listener, "
                                     "htpasswd (2 users)")


def test_check_config_lists_each_problem_once(tmp_path: Path) -> None:
    done = popgate("check-config", "--store", f"maildir:{tmp_path}/nomail/%n",
                   "--auth", f"htpasswd:{tmp_path}/nousers",
                   "--auth", f"sql:dsn=sqlite://{tmp_path}/none.db",
                   "--auth", f"ldap:url=ldap://{LOOPBACK}:{free_port()}/,base=dc=example,dc=org",
                   "--pop3", "1110")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"--auth htpasswd: htpasswd: no such file: {tmp_path}/nousers",
        "--pop3 1110: Unknown endpoint type: '1110'",
        f"--store maildir: the mail root {tmp_path}/nomail does not exist",
        f"--auth sql: the database {tmp_path}/none.db does not exist",
        *[line for line in done.stdout.splitlines() if line.startswith("--auth ldap: cannot "
                                                                       "connect to")],
        "popgate check-config: 5 problems",
    ]
    assert "Connection refused" in done.stdout


def test_check_config_option_errors_are_one_line() -> None:
    done = popgate("check-config", "--idle-timeout", "x")
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["--idle-timeout must be a number, not 'x'",
                                        "popgate check-config: 1 problem"]


def test_check_config_as_the_uid_user() -> None:
    need(os.geteuid() == 0, "checking files as another user needs root")
    # Outside pytest's temporary root, which is root's only (0700).
    top = Path(tempfile.mkdtemp(prefix="popgate-check-", dir="/tmp"))
    try:
        top.chmod(0o755)
        (top / "mail").mkdir()
        users = top / "users"
        users.write_text(f"alice:{hash_password(PASSWORD, rounds=4, prefix=False)}\n")
        users.chmod(0o600)
        args = ["--auth", f"htpasswd:{users}", "--store", f"maildir:{top}/mail/%n"]
        done = popgate("check-config", "--uid", "nobody", *args)
        assert done.returncode == 1
        assert done.stdout.splitlines() == [
            f"--auth htpasswd: {users} is not readable by user nobody (mode 0600, owner root, "
            "group root)", "popgate check-config: 1 problem"]
        users.chmod(0o644)
        done = popgate("check-config", "--uid", "nobody", *args)
        assert done.returncode == 0, done.stdout
    finally:
        shutil.rmtree(top)


def test_check_config_of_the_shipped_examples(tmp_path: Path, users: Path) -> None:
    """
    popgate.toml.example is a whole configuration: with its two paths
    pointed at files that exist here, it passes.  The others are a user
    file each (htpasswd, passwd-file: not TOML) or a fragment to paste
    (ldap, sql: no store, and servers that are not there).
    """
    (tmp_path / "vhosts").mkdir()
    done = popgate("check-config", "--config", str(ETC / "popgate.toml.example"),
                   "--auth", f"htpasswd:{users}", "--store", f"maildir:{tmp_path}/vhosts/%d/%n")
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("popgate check-config: ok: store maildir, 1 listener")
    done = popgate("check-config", "--config", str(ETC / "popgate.toml.example"))
    assert done.returncode == 1
    assert "--auth htpasswd: htpasswd: no such file: /etc/popgate/users" in done.stdout
    for name in ("htpasswd.example", "passwd-file.example"):
        done = popgate("check-config", "--config", str(ETC / name))
        assert done.returncode == 1 and done.stdout.startswith(f"config file {ETC / name}: ")
    for name in ("ldap.example", "sql.example"):
        done = popgate("check-config", "--config", str(ETC / name))
        assert done.returncode == 1
        assert done.stdout.splitlines()[0] == ("no mail store: give --store TYPE:ARGS "
                                               "(see --help-stores)")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database with a users table; its DSN."""
    psycopg = pytest.importorskip("psycopg")
    with throwaway_database("popgate_check") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (userid text PRIMARY KEY, password text)")
            conn.execute("INSERT INTO users VALUES (%s, %s)",
                         ("alice", hash_password(PASSWORD, rounds=4)))
        yield dsn


def test_check_config_against_postgresql(tmp_path: Path, pg_database: str) -> None:
    (tmp_path / "mail").mkdir()
    store = ["--store", f"maildir:{tmp_path}/mail/%n"]
    done = popgate("check-config", *store, "--auth", f"sql:dsn={pg_database}")
    assert done.returncode == 0, done.stdout
    assert f"sql ({pg_database}: the query runs)" in done.stdout
    done = popgate("check-config", *store, "--auth", f"sql:dsn={pg_database},query=SELECT "
                   "passwd FROM users WHERE userid = %(user)s")
    assert done.returncode == 1
    assert re.match(r'--auth sql: user database unavailable: UndefinedColumn: column "passwd" '
                    r"does not exist", done.stdout), done.stdout
    port = free_port()
    wrong_port = re.sub(r":\d+/", f":{port}/", pg_database)
    done = popgate("check-config", *store, "--auth", f"sql:dsn={wrong_port}")
    assert done.returncode == 1
    line = done.stdout.splitlines()[0]
    assert line.startswith("--auth sql: user database unavailable: OperationalError: ")
    assert f"port {port} failed" in line


def test_check_config_against_slapd(tmp_path: Path, local_slapd: LDAPServer) -> None:  # noqa: F811
    (tmp_path / "mail").mkdir()
    store = ["--store", f"maildir:{tmp_path}/mail/%n"]
    done = popgate("check-config", *store, "--auth", f"ldap:{local_slapd.argstring()}")
    assert done.returncode == 0, done.stdout
    assert f"base {local_slapd.base})" in done.stdout
    done = popgate("check-config", *store,
                   "--auth", f"ldap:{local_slapd.argstring(base='ou=nobody,' + local_slapd.base)}")
    assert done.returncode == 1
    assert f"base ou=nobody,{local_slapd.base} does not exist" in done.stdout
    done = popgate("check-config", *store,
                   "--auth", f"ldap:{local_slapd.argstring(bindpw='not-' + SERVICE_PASSWORD)}")
    assert done.returncode == 1
    assert re.search(rf"--auth ldap: .*: bind as {re.escape(local_slapd.binddn)} failed: "
                     r"LDAPInvalidCredentials", done.stdout), done.stdout


# -- popgate auth test / lookup


def test_auth_test(server_args: list[str], tmp_path: Path) -> None:
    done = popgate("auth", "test", *server_args, "alice", PASSWORD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "alice: authentication succeeded", "  user: alice",
        f"  mail: maildir:{tmp_path}/mail/alice (the --store template)"]
    done = popgate("auth", "test", *server_args, "alice", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and "succeeded" in done.stdout
    done = popgate("auth", "test", *server_args, "alice", "wrong")
    assert (done.returncode, done.stdout) == (
        1, "alice: authentication failed: wrong password (or unknown user)\n")
    done = popgate("auth", "test", *server_args, "nobody", "x")
    assert (done.returncode, done.stdout) == (1, "nobody: authentication failed: unknown user\n")
    done = popgate("auth", "test", *server_args, "alice")
    assert (done.returncode, one_line(done.stderr)) == (
        2, "popgate auth test: no password given (standard input ended)")


def test_auth_lookup(tmp_path: Path) -> None:
    store = ["--store", f"maildir:{tmp_path}/%d/%n"]
    done = popgate("auth", "lookup", "--auth", f"passwd-file:{ETC / 'passwd-file.example'}",
                   *store, "Bob@Example.ORG")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "--auth passwd-file: exists as bob@example.org (it holds no mail location)",
        "Bob@Example.ORG: user bob@example.org",
        f"  mail: maildir:{tmp_path}/example.org/bob (the --store template)"]
    done = popgate("auth", "lookup", "--auth", f"passwd-file:{ETC / 'passwd-file.example'}",
                   *store, "nobody@example.org")
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "nobody@example.org: unknown user"


def test_auth_lookup_in_ldap(tmp_path: Path, local_slapd: LDAPServer) -> None:  # noqa: F811
    done = popgate("auth", "lookup", "--store", f"maildir:{tmp_path}/%n", "--auth",
                   f"ldap:{local_slapd.argstring(mail_attribute=local_slapd.mail_attribute)}",
                   "erin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "--auth ldap: exists as erin, mail location /srv/mail/erin/Maildir",
        "erin: user erin", "  mail: maildir:/srv/mail/erin/Maildir (from the user store)"]


def test_auth_usage_errors(server_args: list[str]) -> None:
    done = popgate("auth", "test", *server_args)
    assert (done.returncode, one_line(done.stderr)) == (
        2, "popgate auth test: expected USER [PASSWORD] after the server options, got 0 "
           "arguments")
    assert popgate("auth").returncode == 2


# -- popgate who / kick against a running server


def _session(port: int, user: str | None = None, password: str = "") -> poplib.POP3:
    client = poplib.POP3(LOOPBACK, port, timeout=10)
    if user is not None:
        client.user(user)
        if password:
            client.pass_(password)
    return client


def _wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory anyone may search (pytest's own are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="popgate-admin-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_who_and_kick(tmp_path: Path, server_args: list[str], socket_dir: Path) -> None:
    sock = socket_dir / "admin.sock"
    with PopgateProcess([*server_args, "--admin-socket", str(sock)],
                        log_path=str(tmp_path / "log")) as server:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        alice = _session(server.port, "alice", PASSWORD)
        bob = _session(server.port, "bob", "bob-pw")
        anonymous = _session(server.port)
        who = popgate("who", "--socket", str(sock))
        assert who.returncode == 0, who.stderr
        lines = who.stdout.splitlines()
        assert lines[0].split() == ["USER", "IP", "SINCE", "STATE", "RETRIEVED", "PID", "SESSION"]
        rows = [line.split() for line in lines[1:-1]]
        assert [(r[0], r[1], r[4]) for r in rows] == [
            ("alice", LOOPBACK, "transaction"), ("bob", LOOPBACK, "transaction"),
            ("-", LOOPBACK, "authorization")]
        assert lines[-1] == "3 sessions"
        assert popgate("who", "-s", str(sock), "bob").stdout.splitlines()[-1] == (
            "1 session matching bob")

        kick = popgate("kick", "--socket", str(sock), "alice")
        assert (kick.returncode, kick.stdout) == (0, "kicked 1 session of alice\n")
        with pytest.raises(poplib.error_proto, match=r"SYS/PERM\] Disconnected by the "
                                                      "administrator"):
            alice.noop()
        assert bob.noop().startswith(b"+OK")
        kick = popgate("kick", "-s", str(sock), "carol")
        assert (kick.returncode, kick.stdout) == (1, "kicked 0 sessions of carol\n")
        kick = popgate("kick", "-s", str(sock), f"{LOOPBACK}/8")
        assert kick.stdout == "kicked 2 sessions of 127.0.0.1/8\n"
        _wait_for(lambda: popgate("who", "-s", str(sock)).stdout == "0 sessions\n")
        for client in (bob, anonymous):
            client.sock.close()
        if os.geteuid() == 0:  # root-only: another user cannot connect
            assert _connect_as_nobody(str(sock)) == errno.EACCES
            sock.chmod(0o666)  # (the check can tell)
            assert _connect_as_nobody(str(sock)) == 0
            sock.chmod(0o600)
    log = (tmp_path / "log").read_text()
    assert re.search(r"Logout: reason=kicked, rip=127\.0\.0\.1", log), log
    assert not sock.exists()


def _connect_as_nobody(path: str) -> int:
    """The errno of connecting to C{path} as nobody (0: it connected)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            code = 0
        except OSError as e:
            code = e.errno or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def test_who_without_a_server(tmp_path: Path) -> None:
    done = popgate("who", "-s", str(tmp_path / "admin.sock"))
    assert (done.returncode, one_line(done.stderr)) == (
        1, f"popgate who: no admin socket at {tmp_path}/admin.sock (is popgate running with "
           f"--admin-socket {tmp_path}/admin.sock?)")
    done = popgate("who")
    assert done.returncode == 2 and "--socket PATH, or --config FILE" in done.stderr
    config = tmp_path / "popgate.toml"
    config.write_text(f'admin_socket = "{tmp_path}/admin.sock"\n')
    done = popgate("who", "-c", str(config))
    assert done.returncode == 1 and "no admin socket at" in done.stderr


def test_who_asks_every_worker(tmp_path: Path, server_args: list[str]) -> None:
    sock = tmp_path / "admin.sock"
    with PopgateProcess([*server_args, "--admin-socket", str(sock), "--workers", "2"],
                        log_path=str(tmp_path / "log")) as server:
        _wait_for(lambda: Path(f"{sock}.1").exists())
        # Not logged in (a mailbox is one session at a time): the kernel
        # spreads them over both processes.
        clients = [_session(server.port) for _ in range(8)]
        try:
            _wait_for(lambda: popgate("who", "-s", str(sock)).stdout.endswith("\n8 sessions\n"))
            who = popgate("who", "-s", str(sock)).stdout.splitlines()
            pids = {line.split()[5] for line in who[1:-1]}
            assert 1 <= len(pids) <= 2
            kick = popgate("kick", "-s", str(sock), LOOPBACK)
            assert kick.stdout == "kicked 8 sessions of 127.0.0.1\n"
        finally:
            for client in clients:
                client.sock.close()


# -- start-up with a user store that is down


def test_an_unreachable_user_store_is_one_error_line_and_start_up_goes_on(
        tmp_path: Path, server_args: list[str]) -> None:
    ldap = f"ldap:url=ldap://{LOOPBACK}:{free_port()}/,base=dc=example,dc=org"
    with PopgateProcess([*server_args, "--auth", ldap], log_path=str(tmp_path / "log")) as server:
        client = _session(server.port, "alice", PASSWORD)  # the htpasswd file still works
        client.quit()
        _wait_for(lambda: "userstore: Error" in (tmp_path / "log").read_text())
    lines = [line for line in (tmp_path / "log").read_text().splitlines()
             if "userstore: Error" in line]
    assert len(lines) == 1
    assert "#error] userstore: Error: op=probe, kind=temporary" in lines[0]
    assert "why=<--auth ldap: cannot connect to 127.0.0.1:" in lines[0]
