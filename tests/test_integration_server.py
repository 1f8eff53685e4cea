"""
The real server over real sockets: twistd popgate with an htpasswd file and
Maildirs, driven by python's poplib, curl and a raw socket client.
"""

from __future__ import annotations

import os
import poplib
import socket
import subprocess
import sys
import time

import pytest

from popgate.cli import prepare_demo
from popgate.cred.schemes import hash_password
from tests.harness import ServerProcess, greets
from tests.pop3_oracle import RawClient, normalized, top_oracle, wire
from tests.popgate_server import REPO, PopgateProcess, child_env, free_port, run_twistd
from tests.services import need_program

pytestmark = pytest.mark.integration

PASSWORD = "s3cret pass"  # a space, as RFC 1939 allows

CORPUS: dict[str, bytes] = {
    "lf": b"Subject: lf\n\nbody line\nsecond\n",
    "crlf-dots": b"Subject: dots\r\n\r\n.starts with dot\r\n.\r\n..two\r\nend\r\n",
    "first-dot": b".first line dot\nSubject: x\n\nno final newline",
    "eightbit": b"Subject: 8bit\n\n\xe9t\xe9 \xff\x00 nul\n",
    "bare-cr": b"Subject: cr\n\nbare\rcr\nends with cr\r",
    "empty": b"",
    "only-dot": b".",
    "big": b"Subject: big\n\n" + b"".join(
        (b"." if i % 7 == 0 else b"") + b"line %06d " % i + b"x" * 100 + b"\n" for i in range(6000)),
}


@pytest.fixture
def site(tmp_path):
    """An htpasswd file with two users and their Maildirs."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password(PASSWORD, rounds=4, prefix=False)}\n"
                        f"bob:{hash_password('bobpw', rounds=4, prefix=False)}\n")
    mail = tmp_path / "mail"
    for user in ("alice", "bob"):
        for sub in ("new", "cur", "tmp"):
            (mail / user / sub).mkdir(parents=True)
    for i, (name, data) in enumerate(CORPUS.items()):
        (mail / "alice" / "new" / f"{1700000000 + i}.M{i}P1.test-{name}").write_bytes(data)
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{mail}/%n",
            "--auth-failure-delay", "0.2"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        server.mail = mail  # type: ignore[attr-defined]
        yield server


def maildir_files(server, user: str) -> list[str]:
    root = server.mail / user
    return sorted(os.listdir(root / "new") + os.listdir(root / "cur"))


def test_retr_and_top_are_byte_exact(site):
    client = RawClient(site.port)
    client.login(b"alice", PASSWORD.encode())
    stat = client.cmd(b"STAT")
    messages = list(CORPUS.values())
    assert stat == b"+OK %d %d" % (len(messages), sum(len(normalized(m)) for m in messages))
    for number, message in enumerate(messages, 1):
        assert client.cmd(b"LIST %d" % number) == b"+OK %d %d" % (number, len(normalized(message)))
        first = client.cmd(b"RETR %d" % number)
        assert first == b"+OK %d octets" % len(normalized(message))
        assert client.multi() == wire(message), number
        for lines in (0, 1, 3):
            assert client.cmd(b"TOP %d %d" % (number, lines)).startswith(b"+OK")
            expected = top_oracle(message, lines)
            assert client.multi() == wire(expected), (number, lines)
        # fetchmail's way of downloading: TOP n 99999999 is the whole message.
        assert client.cmd(b"TOP %d 99999999" % number).startswith(b"+OK")
        assert client.multi() == wire(message)
    assert client.cmd(b"QUIT").startswith(b"+OK")


def test_poplib_session_and_uidl_stability(site):
    first = poplib.POP3("127.0.0.1", site.port, timeout=20)
    first.user("alice")
    assert first.pass_(PASSWORD).startswith(b"+OK")
    uids = first.uidl()[1]
    assert len(uids) == len(CORPUS)
    for entry in uids:
        number, uid = entry.split(b" ")
        assert 1 <= len(uid) <= 70 and all(0x21 <= c <= 0x7E for c in uid)
    assert len({u.split()[1] for u in uids}) == len(uids)
    first.quit()
    second = poplib.POP3("127.0.0.1", site.port, timeout=20)
    second.user("alice")
    second.pass_(PASSWORD)
    assert second.uidl()[1] == uids
    assert second.uidl(2).split()[1:] == uids[1].split()
    second.quit()


def test_dele_applies_at_quit_only(site):
    before = maildir_files(site, "alice")
    client = RawClient(site.port)
    client.login(b"alice", PASSWORD.encode())
    assert client.cmd(b"DELE 1").startswith(b"+OK")
    assert client.cmd(b"DELE 1").startswith(b"-ERR")
    assert client.cmd(b"RETR 1").startswith(b"-ERR")
    assert maildir_files(site, "alice") == before  # nothing happens before QUIT
    client.close()  # connection lost: no UPDATE state
    time.sleep(0.5)
    assert maildir_files(site, "alice") == before
    client = RawClient(site.port)  # and the lock was released
    client.login(b"alice", PASSWORD.encode())
    assert client.cmd(b"DELE 1").startswith(b"+OK")
    assert client.cmd(b"DELE 2").startswith(b"+OK")
    assert client.cmd(b"RSET").startswith(b"+OK")
    assert client.cmd(b"DELE 3").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    after = maildir_files(site, "alice")
    assert len(after) == len(before) - 1
    assert not any(name.endswith("test-first-dot") for name in after)


def test_second_session_gets_in_use(site):
    first = RawClient(site.port)
    first.login(b"alice", PASSWORD.encode())
    second = RawClient(site.port)
    assert second.cmd(b"USER alice").startswith(b"+OK")
    reply = second.cmd(b"PASS " + PASSWORD.encode())
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    # bob is not affected
    third = RawClient(site.port)
    third.login(b"bob", b"bobpw")
    third.cmd(b"QUIT")
    first.cmd(b"QUIT")
    second.login(b"alice", PASSWORD.encode())
    second.cmd(b"QUIT")


def test_bad_credentials_look_the_same(site):
    client = RawClient(site.port)
    client.cmd(b"USER alice")
    wrong = client.cmd(b"PASS nope")
    client.cmd(b"USER nosuchuser")
    unknown = client.cmd(b"PASS nope")
    assert wrong == unknown
    assert wrong.startswith(b"-ERR [AUTH]")


def test_pipelined_commands_answered_in_order(site):
    client = RawClient(site.port)
    burst = b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n" + b"".join(
        b"LIST %d\r\nNOOP\r\n" % (i % len(CORPUS) + 1) for i in range(200)) + b"STAT\r\nQUIT\r\n"
    client.sock.sendall(burst)
    assert client.line().startswith(b"+OK")  # USER
    assert client.line() == b"+OK Logged in."
    for i in range(200):
        assert client.line().startswith(b"+OK %d " % (i % len(CORPUS) + 1))
        assert client.line() == b"+OK"
    assert client.line().startswith(b"+OK %d " % len(CORPUS))
    assert client.line().startswith(b"+OK")


def test_bad_input_keeps_session_alive(site):
    client = RawClient(site.port)
    assert client.cmd(b"\x00\xff\xfe junk").startswith(b"-ERR")
    assert client.cmd(b"A" * 300).startswith(b"-ERR")
    client.login(b"alice", PASSWORD.encode())
    for bad in (b"RETR 0", b"RETR -1", b"RETR 99999999999999999999", b"RETR x", b"TOP 1",
                b"LIST 999", b"DELE", b"UIDL 1 2", b"XYZZY"):
        assert client.cmd(bad).startswith(b"-ERR"), bad
    assert client.cmd(b"NOOP") == b"+OK"
    client.cmd(b"QUIT")


def test_curl_fetches_messages(site):
    curl = need_program("curl", "curl")
    url = f"pop3://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{site.port}"
    listing = subprocess.run([curl, "-sS", url + "/"], capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0] == b"1 %d" % len(normalized(CORPUS["lf"]))
    for number, name in ((1, "lf"), (2, "crlf-dots"), (8, "big")):
        out = subprocess.run([curl, "-sS", f"{url}/{number}"], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == normalized(CORPUS[name])


def test_demo_command_serves_welcome_message(tmp_path):
    curl = need_program("curl", "curl")
    port = free_port()
    demo = ServerProcess([sys.executable, "-m", "popgate.cli", "demo",
                          "--dir", str(tmp_path / "var"), "--port", str(port)],
                         log_path=tmp_path / "demo.log", env=child_env(), cwd=REPO,
                         ready=lambda: greets(port, b"+OK"))
    with demo:
        out = subprocess.run([curl, "-sS", f"pop3://demo:demo@127.0.0.1:{port}/1"],
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out
        assert b"Subject: Welcome to popgate" in out.stdout
        assert b"\r\n.\r\n" in out.stdout  # the lone-dot line, unstuffed by curl
    # Running it again keeps the data (no second welcome message); the
    # message curl retrieved is marked read (cur/, flag S), as Dovecot does.
    htpasswd, template = prepare_demo(str(tmp_path / "var"))
    maildir = tmp_path / "var" / "mail" / "demo"
    assert os.listdir(maildir / "new") == []
    (read,) = os.listdir(maildir / "cur")
    assert read.endswith(":2,S")


@pytest.mark.parametrize("args, message", [
    (["--store", "bogus:x", "--auth", "htpasswd:/etc/hostname"], "unknown store type"),
    (["--store", "maildir:/tmp/%q", "--auth", "htpasswd:/etc/hostname"], "unknown placeholder"),
    (["--store", "maildir:/tmp/%n", "--auth", "nope:x"], "unknown user store type"),
    (["--store", "maildir:/tmp/%n"], "no user store"),
    (["--auth", "htpasswd:/etc/hostname"], "no mail store"),
    (["--store", "maildir:/tmp/%n", "--auth", "htpasswd:/nonexistent/file"], "htpasswd"),
    (["--store", "maildir:/tmp/%n", "--auth", "htpasswd:/etc/hostname", "--idle-timeout", "x"],
     "idle-timeout"),
    (["--config", "/nonexistent.toml"], "cannot read config file"),
])
def test_bad_options_give_one_line_error(args, message):
    result = run_twistd(["-n", "--pidfile=", "popgate"] + args)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert message in output, output


def test_config_file_and_command_line(tmp_path, site):
    config = tmp_path / "popgate.toml"
    port = free_port()
    config.write_text(f"""
[popgate]
pop3 = ["tcp:{port}:interface=127.0.0.1"]
auth = ["htpasswd:{tmp_path / 'htpasswd'}"]
store = "maildir:{site.mail}/%n"
implementation = "from-config"
""")
    # The command line wins over the file for scalar options.
    with PopgateProcess(["--config", str(config), "--implementation", "from-cli"],
                        port=port) as server:
        client = RawClient(server.port)
        capa = client.cmd(b"CAPA")
        assert capa.startswith(b"+OK")
        body = client.multi()
        assert b"IMPLEMENTATION from-cli" in body
    bad = tmp_path / "bad.toml"
    bad.write_text('stroe = "maildir:/x"\n')
    result = run_twistd(["-n", "--pidfile=", "popgate", "--config", str(bad)])
    assert result.returncode != 0 and "unknown key 'stroe'" in result.stdout + result.stderr


@pytest.mark.parametrize("listener, environ, message", [
    (["--pop3", "systemd:domain=INET:index=0"], {},
     "popgate: --pop3 systemd:domain=INET:index=0: no socket passed by systemd "
     "(LISTEN_FDS unset: not started by a socket unit)"),
    (["--pop3", "haproxy:systemd:domain=INET:name=pop3"], {},
     "popgate: --pop3 haproxy:systemd:domain=INET:name=pop3: no socket passed by systemd "
     "(LISTEN_FDS unset: not started by a socket unit)"),
    # Sockets for another process (twistd's parent, say): none for this one.
    (["--pop3", "tcp:0:interface=127.0.0.1", "--lmtp", "systemd:domain=INET:index=0"],
     {"LISTEN_FDS": "1", "LISTEN_PID": "1"},
     "popgate: --lmtp systemd:domain=INET:index=0: no socket passed by systemd "
     "(LISTEN_PID is not this process)"),
])
def test_a_systemd_listener_without_its_socket_is_one_line(
        tmp_path, listener: list[str], environ: dict[str, str], message: str) -> None:
    env = {k: v for k, v in child_env().items() if not k.startswith("LISTEN_")}
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "popgate", "--store", f"maildir:{tmp_path}/%n", "--auth", "memory:a:b",
         *listener], capture_output=True, text=True, env={**env, **environ}, cwd=REPO,
        timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [message], result.stderr


def test_a_systemd_index_beyond_what_systemd_passed_is_one_line(tmp_path) -> None:
    """As a socket unit starts it (LISTEN_PID its own, one socket on fd 3,
    which Twisted takes out of the environment at import): the line says
    what systemd passed."""
    env = {k: v for k, v in child_env().items() if not k.startswith("LISTEN_")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        result = subprocess.run(
            ["bash", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=pop3 exec "$@" 3<&{sock.fileno()}',
             "bash", sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "popgate", "--store", f"maildir:{tmp_path}/%n", "--auth",
             "memory:a:b", "--pop3", "systemd:domain=INET:index=1"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
            pass_fds=(sock.fileno(),))
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "popgate: --pop3 systemd:domain=INET:index=1: systemd passed 1 socket, none with "
        "index 1 (the first is 0)"], result.stderr
