"""
popgate's C{imap:} store in front of a real Dovecot IMAP server (Debian's
dovecot-imapd) on loopback, with TLS to it (STARTTLS and IMAPS,
certificates checked against a throwaway CA): byte-exact RETR and TOP on
the corpus (dot lines, no final newline, bare CR, 8-bit, 7 MB) against
what Dovecot's own POP3 sends for the same Maildir, LIST sizes equal to
the octets received, fetchmail through popgate, UIDLs stable across
sessions, DELE+QUIT removing exactly those messages upstream, a dropped
session removing nothing, mail delivered during a session not shown, both
credential modes, and the faults: refused credentials with the login
penalty, upstream down, Dovecot killed mid-RETR.
"""

from __future__ import annotations

import getpass
import imaplib
import os
import poplib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port
from tests.pop3_oracle import RawClient, top_oracle, wire
from tests.popgate_server import REPO, PopgateProcess, child_env
from tests.services import need, need_program
from tests.test_dovecot_parity import DovecotProcess
from tests.test_proxy_dovecot import CORPUS, SlowRelay
from tests.tlscerts import PKI, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

USERS = {"ann": "ann-pw", "ben": "ben-pw", "cat": "cat-pw", "dan": "dan-pw", "eve": "eve-pw",
         "fay": "fay-pw", "gus": "gus-pw", "hal": "hal-pw"}
MASTER = ("gateway", "master-secret")

EXTRA_CONF = """
protocols = imap pop3
auth_failure_delay = 0
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/masters
  master = yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
  inet_listener imap_plain {{
    address = 127.0.0.3
    port = {imap_port}
  }}
}}
# An IMAP server without UIDPLUS (on 127.0.0.3): popgate's fallback.
local 127.0.0.3 {{
  protocol imap {{
    imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE
  }}
}}
"""


class ImapDovecot(DovecotProcess):
    """The parity tests' Dovecot serving IMAP (STARTTLS and IMAPS) and
    POP3 (the reference for the bytes), with a master user; in a process
    group of its own, so a test can kill it and nothing else."""

    kill_group = True

    def __init__(self, base: Path, pki: PKI) -> None:
        super().__init__(base, pki.cert, pki.key)
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.popen = {"start_new_session": True}
        (base / "masters").write_text(f"{MASTER[0]}:{{PLAIN}}{MASTER[1]}\n")
        (base / "passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))

    def config_text(self, uid: int, gid: int) -> str:
        return super().config_text(uid, gid).replace("protocols = pop3\n", "") + \
            EXTRA_CONF.format(base=self.base, imap_port=self.imap_port,
                              imaps_port=self.imaps_port)

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
        self.dovecot = ImapDovecot(base, self.pki)
        self.servers: list[PopgateProcess] = []
        self._stamp = 1700000000
        self.upstream_auth: PopgateProcess

    def fill(self, user: str, messages: list[bytes]) -> None:
        box = self.mail / user
        for sub in ("cur", "new", "tmp"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        for message in messages:
            self._stamp += 1
            path = box / "new" / f"{self._stamp}.M{self._stamp}P1.test"
            path.write_bytes(message)
            os.utime(path, (self._stamp, self._stamp))
            owner = os.stat(box)
            os.chown(path, owner.st_uid, owner.st_gid)

    def start_dovecot(self) -> None:
        self.dovecot = ImapDovecot(self.base, self.pki)
        self.dovecot.start()

    def store(self, scheme: str = "starttls", port: int | None = None,
              name: str = "localhost", extra: str = "") -> str:
        if scheme == "imaps":
            url = f"imaps://127.0.0.1:{port or self.dovecot.imaps_port}"
        else:
            url = f"imap://127.0.0.1:{port or self.dovecot.imap_port}?tls=starttls"
        return f"imap:upstream={url},ca_file={self.pki.ca},server_name={name}{extra}"

    def popgate(self, store: str, *args: str) -> PopgateProcess:
        server = PopgateProcess(["--store", store, *args],
                                log_path=str(self.base / f"popgate-{free_port()}.log"))
        server.start()
        self.servers.append(server)
        return server

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.dovecot.imap_port, timeout=30)
        client.login(user, USERS[user])
        return client

    def upstream_uids(self, user: str) -> list[int]:
        client = self.imap(user)
        client.select("INBOX", readonly=True)
        typ, data = client.uid("SEARCH", "ALL")
        client.logout()
        return [int(w) for w in (data[0] or b"").split()]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.dovecot.stop()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    need_program("dovecot", "dovecot-imapd")
    need(Path("/usr/lib/dovecot/imap").exists(),
         "Dovecot's IMAP server not found (apt-get install dovecot-imapd)")
    base = Path(tempfile.mkdtemp(prefix="popgate-imap-"))
    os.chmod(base, 0o755)  # Dovecot's auth process reads the passwd file
    site = Site(base)
    site.fill("ann", CORPUS)
    for user in ("ben", "cat", "dan", "eve", "gus", "hal"):
        site.fill(user, [f"Subject: {user} {i}\n\nbody {i}\n".encode() for i in range(1, 5)])
    site.fill("fay", [CORPUS[-1]])
    site.start_dovecot()
    site.upstream_auth = site.popgate(site.store())
    try:
        yield site
    finally:
        site.stop()
        if not os.environ.get("PROXY_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


_source = iter(range(10, 250))


def raw(port: int, user: str, password: str | None = None) -> RawClient:
    """A logged-in raw client, from a loopback address of its own (the
    login penalty is per address)."""
    client = RawClient(port, timeout=30, source=f"127.0.5.{next(_source)}")
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


# -- byte-exact

def bodies(client: RawClient) -> dict[bytes, bytes]:
    """Each message's RETR and TOP bodies (without the +OK line: its text
    differs between servers), and LIST."""
    got = {b"LIST": retr(client, b"LIST").split(b"\r\n", 1)[1]}
    for number in range(1, len(CORPUS) + 1):
        for command in [b"RETR %d" % number] + [b"TOP %d %d" % (number, lines)
                                                for lines in (0, 2, 10**6)]:
            got[command] = retr(client, command).split(b"\r\n", 1)[1]
    assert client.cmd(b"QUIT").startswith(b"+OK")
    return got


def test_retr_top_and_sizes_byte_exact(site: Site) -> None:
    proxied = bodies(raw(site.upstream_auth.port, "ann"))
    direct = bodies(raw(site.dovecot.port, "ann"))  # Dovecot's POP3, same Maildir
    for command, reply in direct.items():
        assert proxied[command] == reply, command
    sizes = [int(line.split()[1]) for line in proxied[b"LIST"].split(b"\r\n")[:-2]]
    for number, message in enumerate(CORPUS, 1):
        body = proxied[b"RETR %d" % number]
        assert body == wire(message), number
        top = proxied[b"TOP %d 2" % number]
        assert top_oracle(message, 2) in top.replace(b"\r\n..", b"\r\n."), number
        # The octets LIST announced are the octets the client got (unstuffed,
        # without the terminating line or a CRLF added to an open last line).
        unstuffed = body[:-3].replace(b"\r\n..", b"\r\n.")
        if unstuffed.startswith(b".."):
            unstuffed = unstuffed[1:]
        if not message.endswith(b"\n"):
            unstuffed = unstuffed[:-2]
        assert sizes[number - 1] == len(unstuffed), number


def test_uidls_stable_and_from_uidvalidity(site: Site) -> None:
    port = site.upstream_auth.port
    first = uidl(port, "ann")
    assert first == uidl(port, "ann")
    client = site.imap("ann")
    typ, data = client.select("INBOX", readonly=True)
    uidvalidity = int(client.response("UIDVALIDITY")[1][0])
    client.logout()
    assert [line.split()[1] for line in first] == [
        b"%d.%d" % (uidvalidity, uid) for uid in site.upstream_uids("ann")]


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


def test_fetchmail_through_imap(site: Site) -> None:
    proxied = fetchmail(site, site.upstream_auth.port, "ann")
    assert proxied == fetchmail(site, site.dovecot.port, "ann")


# -- the snapshot and UPDATE

def maildir_count(site: Site, user: str) -> int:
    box = site.mail / user
    return len(os.listdir(box / "new")) + len(os.listdir(box / "cur"))


def test_dele_quit_expunges_exactly_those(site: Site) -> None:
    before = site.upstream_uids("ben")
    client = raw(site.upstream_auth.port, "ben")
    assert client.cmd(b"DELE 2").startswith(b"+OK")
    assert client.cmd(b"DELE 4").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    assert site.upstream_uids("ben") == [before[0], before[2]]
    assert maildir_count(site, "ben") == 2
    # None of the others was left flagged \\Deleted.
    imap = site.imap("ben")
    imap.select("INBOX", readonly=True)
    assert imap.uid("SEARCH", "DELETED")[1] == [b""]
    imap.logout()


def test_without_uidplus_expunges_only_when_no_other_is_flagged(site: Site) -> None:
    server = site.popgate(f"imap:upstream=imap://127.0.0.3:{site.dovecot.imap_port}")
    uids = site.upstream_uids("hal")
    imap = site.imap("hal")
    imap.select("INBOX")
    imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", "(\\Deleted)")  # another client's
    client = raw(server.port, "hal")
    assert client.cmd(b"DELE 2").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"-ERR [SYS/TEMP]")  # EXPUNGE would take uids[0]
    assert site.upstream_uids("hal") == uids
    imap.uid("STORE", str(uids[0]), "-FLAGS.SILENT", "(\\Deleted)")
    imap.logout()
    client = raw(server.port, "hal")
    assert client.cmd(b"DELE 1").startswith(b"+OK")
    assert client.cmd(b"DELE 3").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    assert site.upstream_uids("hal") == [uids[1], uids[3]]


def test_a_dropped_session_removes_nothing(site: Site) -> None:
    client = raw(site.upstream_auth.port, "cat")
    for n in (1, 2, 3):
        assert client.cmd(b"DELE %d" % n).startswith(b"+OK")
    client.close()
    time.sleep(0.5)
    assert len(site.upstream_uids("cat")) == 4
    assert maildir_count(site, "cat") == 4


def test_mail_delivered_during_a_session_is_not_shown(site: Site) -> None:
    client = raw(site.upstream_auth.port, "dan")
    assert client.cmd(b"STAT").startswith(b"+OK 4 ")
    site.fill("dan", [b"Subject: late\n\nlate\n"])
    imap = site.imap("dan")
    imap.append("INBOX", None, None, b"Subject: appended\r\n\r\nappended\r\n")
    imap.logout()
    assert client.cmd(b"STAT").startswith(b"+OK 4 ")
    assert client.cmd(b"RETR 5").startswith(b"-ERR")
    assert client.cmd(b"DELE 1").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    again = raw(site.upstream_auth.port, "dan")
    assert again.cmd(b"STAT").startswith(b"+OK 5 ")  # the new two, less the deleted
    again.cmd(b"QUIT")


def test_a_message_expunged_by_another_client(site: Site) -> None:
    uids = site.upstream_uids("gus")
    client = raw(site.upstream_auth.port, "gus")
    imap = site.imap("gus")
    imap.select("INBOX")
    imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", "(\\Deleted)")
    imap.expunge()
    imap.logout()
    # Dovecot answers BODY[] NIL (or, once the session has been told of the
    # expunge, no FETCH at all); a server may also still serve it (RFC 2180
    # 4.1) -- but never as an empty message.
    for command, end in ((b"RETR 1", b"\r\nbody 1\r\n.\r\n"), (b"TOP 1 0", b"\r\n\r\n.\r\n")):
        reply = client.cmd(command)
        if reply.startswith(b"+OK"):
            assert client.multi().endswith(end)
        else:
            assert reply.startswith(b"-ERR [SYS/PERM]"), reply
    assert retr(client, b"RETR 2").endswith(b"body 2\r\n.\r\n")
    assert client.cmd(b"DELE 1").startswith(b"+OK")
    assert client.cmd(b"DELE 3").startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    assert site.upstream_uids("gus") == [uids[1], uids[3]]


def test_empty_mailbox_and_empty_message(site: Site) -> None:
    client = raw(site.upstream_auth.port, "eve")
    for n in range(1, 5):
        assert client.cmd(b"DELE %d" % n).startswith(b"+OK")
    assert client.cmd(b"QUIT").startswith(b"+OK")
    client = raw(site.upstream_auth.port, "eve")
    assert client.cmd(b"STAT") == b"+OK 0 0"
    listing = retr(client, b"UIDL")
    assert listing.startswith(b"+OK") and listing.endswith(b"\r\n.\r\n")
    assert listing.count(b"\r\n") == 2  # no message lines
    assert client.cmd(b"QUIT").startswith(b"+OK")
    site.fill("eve", [b""])  # no octets at all: served as popgate serves it from a Maildir
    client = raw(site.upstream_auth.port, "eve")
    assert client.cmd(b"LIST 1") == b"+OK 1 0"
    assert retr(client, b"RETR 1").split(b"\r\n", 1)[1] == wire(b"") == b".\r\n"
    assert retr(client, b"TOP 1 0").split(b"\r\n", 1)[1] == b".\r\n"
    client.cmd(b"QUIT")


# -- credentials

def test_refused_credentials_get_auth_and_the_penalty(site: Site) -> None:
    port = site.upstream_auth.port
    client = RawClient(port, timeout=30, source="127.0.6.2")
    assert client.cmd(b"CAPA").startswith(b"+OK")
    capa = client.multi()
    assert b"SASL PLAIN LOGIN" in capa and b"CRAM-MD5" not in capa
    assert b"<" not in client.greeting  # no APOP challenge
    client.cmd(b"USER gus")
    assert client.cmd(b"PASS wrong").startswith(b"-ERR [AUTH]")
    started = time.monotonic()
    client.cmd(b"USER gus")
    assert client.cmd(b"PASS " + USERS["gus"].encode()).startswith(b"+OK")
    assert time.monotonic() - started >= 1.5  # the address's penalty: 2 s
    client.cmd(b"QUIT")


def test_local_authentication_same_password_and_master(site: Site) -> None:
    passwd = site.base / "local-passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))
    same = site.popgate(site.store("imaps"), "--auth", f"passwd-file:{passwd}")
    client = raw(same.port, "fay")
    assert client.cmd(b"STAT").startswith(b"+OK 1 ")
    client.cmd(b"QUIT")
    other = site.base / "other-passwd"
    other.write_text("fay:{PLAIN}local-only::::::\n")
    secret = site.base / "master-secret"
    secret.write_text(MASTER[1] + "\n")
    master = site.popgate(site.store(extra=f",master_user={MASTER[0]},"
                                           f"master_password_file={secret}"),
                          "--auth", f"passwd-file:{other}")
    client = raw(master.port, "fay", "local-only")  # Dovecot never saw this password
    assert client.cmd(b"STAT").startswith(b"+OK 1 ")
    client.cmd(b"QUIT")
    refused = RawClient(master.port, timeout=30, source="127.0.6.4")
    refused.cmd(b"USER fay")
    assert refused.cmd(b"PASS fay-pw").startswith(b"-ERR [AUTH]")


def test_check_config_checks_the_upstreams_certificate(site: Site) -> None:
    def check(store: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "popgate.cli", "check-config", "--store",
                               store], capture_output=True, text=True, timeout=60,
                              env=child_env(), cwd=REPO)

    bad = check(site.store("imaps", name="other.example.org"))
    assert bad.returncode != 0
    assert "certificate" in bad.stdout + bad.stderr


# -- faults

def test_upstream_down_is_sys_temp(site: Site) -> None:
    down = site.popgate(site.store(port=free_port()))
    client = RawClient(down.port, timeout=30, source="127.0.6.5")
    client.cmd(b"USER ann")
    assert client.cmd(b"PASS ann-pw").startswith(b"-ERR [SYS/TEMP]")
    wrong = site.popgate(site.store(name="mail.example.org"))
    client = RawClient(wrong.port, timeout=30, source="127.0.6.6")
    client.cmd(b"USER ann")
    assert client.cmd(b"PASS ann-pw").startswith(b"-ERR [SYS/TEMP]")


def test_dovecot_killed_mid_retr_deletes_nothing(site: Site) -> None:
    relay = SlowRelay(site.dovecot.imap_port, slow=set(), delay=0, throttle=True)
    server = site.popgate(site.store(port=relay.port))
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
            with pytest.raises((EOFError, OSError)):
                other.multi()
            reply = client.cmd(b"QUIT")
            assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
            assert maildir_count(site, "fay") + maildir_count(site, "ann") == before
        finally:
            site.dovecot.start()  # the same ports again
    finally:
        relay.close()
    client = raw(site.upstream_auth.port, "fay")
    assert client.cmd(b"STAT").startswith(b"+OK 1 ")
    client.cmd(b"QUIT")
