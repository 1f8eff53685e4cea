"""
popgate as a POP3 proxy in front of a real Dovecot (Debian's dovecot-pop3d)
on loopback, with TLS to it (STLS and POP3S, certificates checked against
a throwaway CA): byte-exact RETR and TOP on the corpus (dot lines, no
final newline, bare CR, 8-bit, 7 MB) against what Dovecot itself sends,
poplib and fetchmail through popgate, UIDLs stable across sessions and
Dovecot's own, DELE+QUIT removing exactly those messages upstream, a
dropped session removing nothing, [IN-USE] from Dovecot's lock, both
credential modes (upstream, and local with the same password or a master
user), and the faults: upstream down, a wrong certificate name, Dovecot
killed mid-RETR, refused credentials with the login penalty, and a slow
upstream that stalls only its own session.
"""

from __future__ import annotations

import base64
import getpass
import os
import poplib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port
from tests.pop3_oracle import RawClient, top_oracle, wire
from tests.popgate_server import REPO, PopgateProcess, child_env
from tests.services import need_program
from tests.test_dovecot_parity import DovecotProcess
from tests.tlscerts import PKI, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

USERS = {"ann": "ann-pw", "ben": "ben-pw", "cat": "cat-pw", "dan": "dan-pw", "eve": "eve-pw",
         "fay": "fay-pw"}
MASTER = ("gateway", "master-secret")


def big_message() -> bytes:
    """About 7 MB, a leading dot now and then."""
    line = b"z" * 75 + b"\n"
    return b"Subject: big\n\n" + b"".join((b"." + line) if i % 89 == 0 else line
                                          for i in range(92_000))


#: As the Maildirs hold them (LF line ends, as an MTA writes them).
CORPUS = [
    b"Subject: dots\n\n.\n..\n.leading\nmiddle . line\n.\n",
    b"Subject: open end\n\nno newline at the end",
    b"Subject: cr\n\none\rtwo\nthree\r\nfour\r",
    "Subject: =?utf-8?q?caf=C3=A9?=\n\ncafé, naïve, 日本語\n".encode() + bytes(range(128, 256)),
    b"Subject: empty body\n\n",
    big_message(),
]

EXTRA_CONF = """
pop3_lock_session = yes
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/masters
  master = yes
}}
service pop3-login {{
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
"""


class UpstreamDovecot(DovecotProcess):
    """The parity tests' Dovecot with TLS (STLS and POP3S), a master user,
    POP3 session locks; in a process group of its own, so a test can kill
    it and its children, and nothing else."""

    kill_group = True

    def __init__(self, base: Path, pki: PKI) -> None:
        super().__init__(base, pki.cert, pki.key)
        self.pop3s_port = free_port()
        self.popen = {"start_new_session": True}
        (base / "masters").write_text(f"{MASTER[0]}:{{PLAIN}}{MASTER[1]}\n")
        (base / "passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))

    def config_text(self, uid: int, gid: int) -> str:
        return super().config_text(uid, gid) + EXTRA_CONF.format(
            base=self.base, pop3s_port=self.pop3s_port)

    def kill(self) -> None:
        pid = self.pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        self.stop()


class Site:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.pki = make_pki(base / "pki")
        self.mail = base / "mail"
        self.dovecot = UpstreamDovecot(base, self.pki)
        self.servers: list[PopgateProcess] = []
        self._stamp = 1700000000

    def fill(self, user: str, messages: list[bytes]) -> None:
        box = self.mail / user
        for sub in ("cur", "new", "tmp"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        for message in messages:
            self._stamp += 1
            path = box / "new" / f"{self._stamp}.M{self._stamp}P1.test"
            path.write_bytes(message)
            os.utime(path, (self._stamp, self._stamp))

    def start_dovecot(self) -> None:
        self.dovecot = UpstreamDovecot(self.base, self.pki)
        self.dovecot.start()

    def upstream(self, scheme: str = "starttls", port: int | None = None,
                 name: str = "localhost", extra: str = "") -> str:
        if scheme == "pop3s":
            url = f"pop3s://127.0.0.1:{port or self.dovecot.pop3s_port}"
        else:
            url = f"pop3://127.0.0.1:{port or self.dovecot.port}?tls=starttls"
        return f"proxy:upstream={url},ca_file={self.pki.ca},server_name={name}{extra}"

    def popgate(self, store: str, *args: str) -> PopgateProcess:
        server = PopgateProcess(["--store", store, *args],
                                log_path=str(self.base / f"popgate-{free_port()}.log"))
        server.start()
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.dovecot.stop()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    need_program("dovecot", "dovecot-pop3d")
    base = Path(tempfile.mkdtemp(prefix="popgate-proxy-"))
    os.chmod(base, 0o755)  # Dovecot's auth process reads the passwd file
    site = Site(base)
    site.fill("ann", CORPUS)
    for user in ("ben", "cat", "dan", "eve"):
        site.fill(user, [f"Subject: {user} {i}\n\nbody {i}\n".encode() for i in range(1, 5)])
    site.fill("fay", [CORPUS[-1]])
    site.start_dovecot()
    # uidl format for stable comparisons is Dovecot's; own files, own ownership.
    site.upstream_auth = site.popgate(site.upstream())  # type: ignore[attr-defined]
    try:
        yield site
    finally:
        site.stop()
        if not os.environ.get("PROXY_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


_source = iter(range(10, 250))


def raw(port: int, user: str, password: str | None = None,
        small_window: bool = False) -> RawClient:
    """A logged-in raw client, from a loopback address of its own (the
    login penalty is per address); with C{small_window}, a receive buffer
    too small for a big message to be all in flight."""
    client = RawClient(port, timeout=30, source=f"127.0.3.{next(_source)}")
    if small_window:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.cmd(b"USER " + user.encode())
    reply = client.cmd(b"PASS " + (password or USERS[user]).encode())
    assert reply.startswith(b"+OK"), reply
    return client


def retr(client: RawClient, command: bytes) -> bytes:
    first = client.cmd(command)
    assert first.startswith(b"+OK"), first
    return first + b"\r\n" + client.multi()


def uidl(port: int, user: str) -> list[bytes]:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    client.user(user)
    client.pass_(USERS[user])
    listing = client.uidl()[1]
    client.quit()
    return listing


# -- byte-exact, through real clients

def replies(client: RawClient) -> dict[bytes, bytes]:
    """Every reply of one session (Dovecot locks the mailbox: one at a time)."""
    got = {b"STAT": client.cmd(b"STAT"), b"LIST": retr(client, b"LIST")}
    for number in range(1, len(CORPUS) + 1):
        for command in [b"RETR %d" % number] + [b"TOP %d %d" % (number, lines)
                                                for lines in (0, 2, 10**6)]:
            got[command] = retr(client, command)
    assert client.cmd(b"QUIT").startswith(b"+OK")
    return got


def test_retr_and_top_byte_exact_against_dovecot(site: Site) -> None:
    proxied = replies(raw(site.upstream_auth.port, "ann"))  # type: ignore[attr-defined]
    direct = replies(raw(site.dovecot.port, "ann"))
    for command, reply in direct.items():
        assert proxied[command] == reply, command
    for number, message in enumerate(CORPUS, 1):
        assert proxied[b"RETR %d" % number].split(b"\r\n", 1)[1] == wire(message), number
        top = proxied[b"TOP %d 2" % number].split(b"\r\n", 1)[1]
        assert top_oracle(message, 2) in top.replace(b"\r\n..", b"\r\n."), number


def test_uidls_stable_and_dovecots_own(site: Site) -> None:
    port = site.upstream_auth.port  # type: ignore[attr-defined]
    first = uidl(port, "ann")
    assert first == uidl(port, "ann") == uidl(site.dovecot.port, "ann")
    assert len(first) == len(CORPUS)


def fetchmail(site: Site, port: int, user: str) -> bytes:
    """fetchmail --keep once, through an MDA appending to a file; what it
    delivered, without the Received: line it adds."""
    program = need_program("fetchmail", "fetchmail")
    home = site.base / f"fetchmail-{port}"
    home.mkdir()
    delivered = home / "delivered"
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 protocol pop3 port {port} auth password timeout 60\n"
        f'  user "{user}" there with password "{USERS[user]}" is "{getpass.getuser()}" here\n'
        "  sslproto '' keep fetchall no stripcr\n"
        f'  mda "cat >> {delivered}"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    result = subprocess.run([program, "--nosyslog", "-f", str(rc)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.sub(rb"Received: from 127\.0\.0\.1[^\n]*\n(?:[ \t][^\n]*\n)*", b"",
                  delivered.read_bytes())


def test_fetchmail_through_the_proxy(site: Site) -> None:
    proxied = fetchmail(site, site.upstream_auth.port, "ann")  # type: ignore[attr-defined]
    assert proxied == fetchmail(site, site.dovecot.port, "ann")
    for message in CORPUS:
        crlf = wire(message)[:-3].replace(b"\r\n..", b"\r\n.")  # CRLF lines, unstuffed
        assert crlf[:4000] in proxied


# -- UPDATE only at QUIT

def maildir_count(site: Site, user: str) -> int:
    box = site.mail / user
    return len(os.listdir(box / "new")) + len(os.listdir(box / "cur"))


def test_dele_quit_removes_exactly_those(site: Site) -> None:
    """Three DELEs: popgate sends them upstream in one write, since
    Dovecot's CAPA offers PIPELINING (seen by a relay in between)."""
    relay = SlowRelay(site.dovecot.port, slow=set(), delay=0)
    try:
        # Plain POP3 (loopback), so that the relay reads the commands.
        server = site.popgate(f"proxy:upstream=pop3://127.0.0.1:{relay.port}")
        before = uidl(site.dovecot.port, "ben")
        client = raw(server.port, "ben")
        for n in (1, 2, 4):
            assert client.cmd(b"DELE %d" % n).startswith(b"+OK")
        assert client.cmd(b"QUIT").startswith(b"+OK")
    finally:
        relay.close()
    after = uidl(site.dovecot.port, "ben")
    kept = [u.split()[1] for n, u in enumerate(before, 1) if n not in (1, 2, 4)]
    assert [u.split()[1] for u in after] == kept
    assert maildir_count(site, "ben") == len(before) - 3
    assert b"DELE 1\r\nDELE 2\r\nDELE 4\r\n" in relay.received, relay.received


def test_a_dropped_session_removes_nothing(site: Site) -> None:
    port = site.upstream_auth.port  # type: ignore[attr-defined]
    client = raw(port, "cat")
    for n in (1, 2, 3):
        assert client.cmd(b"DELE %d" % n).startswith(b"+OK")
    client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until Dovecot has let go of its lock
        try:
            assert len(uidl(site.dovecot.port, "cat")) == 4
            break
        except poplib.error_proto:
            time.sleep(0.2)
    else:
        pytest.fail("Dovecot still locks cat's mailbox")
    assert maildir_count(site, "cat") == 4


def test_upstream_lock_is_in_use(site: Site) -> None:
    port = site.upstream_auth.port  # type: ignore[attr-defined]
    holder = raw(site.dovecot.port, "dan")
    client = RawClient(port, timeout=30, source="127.0.4.1")
    client.cmd(b"USER dan")
    reply = client.cmd(b"PASS " + USERS["dan"].encode())
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    holder.cmd(b"QUIT")


# -- credentials

def test_refused_credentials_get_auth_and_the_penalty(site: Site) -> None:
    port = site.upstream_auth.port  # type: ignore[attr-defined]
    client = RawClient(port, timeout=30, source="127.0.4.2")
    assert client.cmd(b"CAPA").startswith(b"+OK")
    capa = client.multi()
    assert b"SASL PLAIN LOGIN" in capa and b"CRAM-MD5" not in capa
    client.cmd(b"USER eve")
    assert client.cmd(b"PASS wrong").startswith(b"-ERR [AUTH]")
    started = time.monotonic()
    client.cmd(b"USER eve")
    assert client.cmd(b"PASS " + USERS["eve"].encode()).startswith(b"+OK")
    assert time.monotonic() - started >= 1.5  # the address's penalty: 2 s
    client.cmd(b"QUIT")
    apop = RawClient(port, timeout=30, source="127.0.4.3")
    assert b"<" not in apop.greeting  # no APOP challenge: it cannot be relayed


def test_sasl_plain_is_relayed_as_a_password_login(site: Site) -> None:
    client = RawClient(site.upstream_auth.port, timeout=30, source="127.0.4.8")  # type: ignore[attr-defined]
    token = base64.b64encode(b"\0ann\0" + USERS["ann"].encode())
    assert client.cmd(b"AUTH PLAIN " + token).startswith(b"+OK")
    assert client.cmd(b"STAT").startswith(b"+OK %d " % len(CORPUS))
    client.cmd(b"QUIT")
    # A password with a line end in it never reaches the upstream as two commands.
    sneaky = RawClient(site.upstream_auth.port, timeout=30, source="127.0.4.9")  # type: ignore[attr-defined]
    token = base64.b64encode(b"\0ann\0x\r\nDELE 1")
    assert sneaky.cmd(b"AUTH PLAIN " + token).startswith(b"-ERR [AUTH]")


def test_check_config_reaches_the_upstream(site: Site) -> None:
    good = subprocess.run([sys.executable, "-m", "popgate.cli", "check-config", "--store",
                           site.upstream()], capture_output=True, text=True, timeout=60,
                          env=child_env(), cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([sys.executable, "-m", "popgate.cli", "check-config", "--store",
                          site.upstream(name="other.example.org")], capture_output=True,
                         text=True, timeout=60, env=child_env(), cwd=REPO)
    assert bad.returncode != 0
    assert "certificate" in bad.stdout + bad.stderr


def test_local_authentication_same_password_and_master(site: Site) -> None:
    passwd = site.base / "local-passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))
    same = site.popgate(site.upstream("pop3s"), "--auth", f"passwd-file:{passwd}")
    client = raw(same.port, "ann")
    assert client.cmd(b"STAT").startswith(b"+OK %d " % len(CORPUS))
    client.cmd(b"QUIT")
    # A user popgate knows with another password: refused by popgate, [AUTH].
    other = site.base / "other-passwd"
    other.write_text("ann:{PLAIN}local-only::::::\n")
    secret = site.base / "master-secret"
    secret.write_text(MASTER[1] + "\n")
    master = site.popgate(site.upstream(extra=f",master_user={MASTER[0]},"
                                              f"master_password_file={secret}"),
                          "--auth", f"passwd-file:{other}")
    client = raw(master.port, "ann", "local-only")  # Dovecot never saw this password
    assert client.cmd(b"STAT").startswith(b"+OK %d " % len(CORPUS))
    client.cmd(b"QUIT")
    refused = RawClient(master.port, timeout=30, source="127.0.4.4")
    refused.cmd(b"USER ann")
    assert refused.cmd(b"PASS ann-pw").startswith(b"-ERR [AUTH]")


# -- faults

def test_upstream_down_is_sys_temp(site: Site) -> None:
    down = site.popgate(site.upstream(port=free_port()))
    client = RawClient(down.port, timeout=30, source="127.0.4.5")
    client.cmd(b"USER ann")
    assert client.cmd(b"PASS ann-pw").startswith(b"-ERR [SYS/TEMP]")


def test_wrong_certificate_name_is_refused(site: Site) -> None:
    wrong = site.popgate(site.upstream(name="mail.example.org"))
    client = RawClient(wrong.port, timeout=30, source="127.0.4.6")
    client.cmd(b"USER ann")
    assert client.cmd(b"PASS ann-pw").startswith(b"-ERR [SYS/TEMP]")
    log = Path(wrong.log_path).read_text(errors="replace")  # type: ignore[arg-type]
    assert "certificate" in log.lower() or "verify" in log.lower(), log[-2000:]


class SlowRelay:
    """A TCP relay to Dovecot that holds the greeting of the connections
    whose number is in C{slow} (counted from 0) for C{delay} seconds, and
    with C{throttle}, passes the upstream's octets on at about 800 KB/s
    (so a big RETR is still being written when Dovecot is killed).

    @ivar received: what popgate sent, one item per C{recv}.
    """

    def __init__(self, target: int, slow: set[int], delay: float,
                 throttle: bool = False) -> None:
        self.target, self.slow, self.delay, self.throttle = target, slow, delay, throttle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.count = 0
        self.received: list[bytes] = []
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            number, self.count = self.count, self.count + 1
            threading.Thread(target=self._relay, args=(conn, number in self.slow),
                             daemon=True).start()

    def _relay(self, conn: socket.socket, slow: bool) -> None:
        if slow:
            self.stopping.wait(self.delay)
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def pump(a: socket.socket, b: socket.socket, slowly: bool = False,
                 record: list[bytes] | None = None) -> None:
            try:
                while data := a.recv(16384 if slowly else 65536):
                    if record is not None:
                        record.append(data)
                    b.sendall(data)
                    if slowly:
                        time.sleep(0.02)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(upstream, conn, self.throttle),
                         daemon=True).start()
        pump(conn, upstream, record=self.received)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


def test_slow_upstream_stalls_only_its_session(site: Site) -> None:
    relay = SlowRelay(site.dovecot.port, slow={0}, delay=30)
    try:
        url = f"proxy:upstream=pop3://127.0.0.1:{relay.port},greeting_timeout=3"
        server = site.popgate(url)
        slow = RawClient(server.port, timeout=30, source="127.0.4.7")
        slow.cmd(b"USER eve")
        slow.send(b"PASS " + USERS["eve"].encode() + b"\r\n")
        started = time.monotonic()
        fast = raw(server.port, "fay")  # while the first waits for its greeting
        body = retr(fast, b"RETR 1")
        assert body.split(b"\r\n", 1)[1] == wire(CORPUS[-1])
        fast.cmd(b"QUIT")
        assert time.monotonic() - started < 3
        assert slow.line(10).startswith(b"-ERR [SYS/TEMP]")  # the greeting deadline
        assert time.monotonic() - started < 8
    finally:
        relay.close()


def test_dovecot_killed_mid_retr_deletes_nothing(site: Site) -> None:
    relay = SlowRelay(site.dovecot.port, slow=set(), delay=0, throttle=True)
    server = site.popgate(site.upstream(port=relay.port))
    before = maildir_count(site, "fay") + maildir_count(site, "ann")
    try:
        client = raw(server.port, "fay")
        assert client.cmd(b"DELE 1").startswith(b"+OK")
        other = raw(server.port, "ann")
        assert other.cmd(b"DELE 1").startswith(b"+OK")
        assert other.cmd(b"RETR %d" % len(CORPUS)).startswith(b"+OK")
        assert other.recv()  # the RETR has begun
        time.sleep(0.5)
        site.dovecot.kill()
        try:
            # popgate's client: the RETR does not end with its ".": dropped.
            with pytest.raises((EOFError, OSError)):
                other.multi()
            # The idle session hears [SYS/TEMP] at QUIT: its DELE never got there.
            reply = client.cmd(b"QUIT")
            assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
            assert maildir_count(site, "fay") + maildir_count(site, "ann") == before
        finally:
            site.dovecot.start()  # the same ports again
    finally:
        relay.close()
    # popgate heals by itself: the next login works against the new Dovecot.
    client = raw(site.upstream_auth.port, "fay")  # type: ignore[attr-defined]
    assert client.cmd(b"STAT").startswith(b"+OK 1 ")
    client.cmd(b"QUIT")
