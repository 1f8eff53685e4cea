"""
The real server (twistd popgate with --tls-cert, --pop3 and --pop3s) and real
TLS clients: openssl s_client, curl, python's poplib and fetchmail, over
STLS and implicit TLS, with every login mechanism (USER/PASS, APOP, SASL
PLAIN, LOGIN and CRAM-MD5); the STLS injection guard over a raw socket;
certificate reload on SIGHUP; option errors.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import poplib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess, run_twistd
from tests.services import need_program
from tests.tlscerts import PKI, common_name, make_pki

pytestmark = pytest.mark.integration

PASSWORD = "s3cret pass"  # a space, as RFC 1939 allows
MESSAGES = [
    b"Subject: first\n\nbody line\n.starts with a dot\n.\n",
    b"Subject: 8bit\n\n\xe9t\xe9 \xff\n",
    b"Subject: big\n\n" + b"".join(
        (b"." if i % 5 == 0 else b"") + b"line %05d " % i + b"y" * 70 + b"\n" for i in range(5000)),
]


def crlf(message: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", message)


class Site:
    """A running popgate with TLS, a passwd-file (alice, {PLAIN}: APOP and
    CRAM-MD5 work) and alice's Maildir."""

    def __init__(self, root: Path, pki: PKI, server: PopgateProcess) -> None:
        self.root = root
        self.pki = pki
        self.server = server
        self.mail = root / "mail" / "alice"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        assert self.server.pop3s_port is not None
        return self.server.pop3s_port

    def files(self) -> list[str]:
        return sorted(os.listdir(self.mail / "new") + os.listdir(self.mail / "cur"))

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca))


@contextlib.contextmanager
def start_site(root: Path, cert: Path, key: Path, pki: PKI) -> Iterator[Site]:
    users = root / "users"
    users.write_text(f"alice:{{PLAIN}}{PASSWORD}\n")
    mail = root / "mail" / "alice"
    for sub in ("new", "cur", "tmp"):
        (mail / sub).mkdir(parents=True)
    for i, message in enumerate(MESSAGES):
        (mail / "new" / f"{1700000000 + i}.M{i}P1.tls-test").write_bytes(message)
    args = ["--auth", f"passwd-file:{users}", "--store", f"maildir:{root / 'mail'}/%n",
            "--tls-cert", str(cert), "--tls-key", str(key), "--auth-failure-delay", "0.2"]
    with PopgateProcess(args, log_path=str(root / "popgate.log"), pop3s=True) as server:
        yield Site(root, pki, server)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def site(tmp_path: Path, pki: PKI) -> Iterator[Site]:
    with start_site(tmp_path, pki.cert, pki.key, pki) as running:
        yield running


# -- openssl s_client


def s_client(site: Site, args: list[str], commands: bytes) -> subprocess.CompletedProcess[bytes]:
    openssl = need_program("openssl", "openssl")
    return subprocess.run(
        [openssl, "s_client", "-brief", "-ign_eof", "-CAfile", str(site.pki.ca),
         "-verify_return_error", "-verify_hostname", "localhost", *args],
        input=commands, capture_output=True, timeout=60)


LOGIN = b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_openssl_s_client(site: Site, mode: str) -> None:
    if mode == "starttls":
        args = ["-starttls", "pop3", "-connect", f"127.0.0.1:{site.port}"]
    else:
        args = ["-connect", f"127.0.0.1:{site.tls_port}"]
    result = s_client(site, args, b"CAPA\r\n" + LOGIN + b"RETR 1\r\nQUIT\r\n")
    assert result.returncode == 0, result.stderr
    assert b"Verification: OK" in result.stderr
    out = result.stdout
    if mode == "implicit":
        assert out.startswith(b"+OK popgate ready.")
        out = out.split(b"\r\n", 1)[1]
    capa, _, rest = out.partition(b"\r\n.\r\n")
    caps = capa.split(b"\r\n")[1:]
    assert b"STLS" not in caps and b"USER" in caps and b"SASL PLAIN LOGIN CRAM-MD5" in caps
    assert rest == (b"+OK\r\n+OK Logged in.\r\n+OK %d octets\r\n" % len(crlf(MESSAGES[0]))
                    + b"Subject: first\r\n\r\nbody line\r\n..starts with a dot\r\n..\r\n.\r\n"
                    + b"+OK Logging out.\r\n")


@pytest.mark.parametrize("version, works", [("-tls1_2", True), ("-tls1_3", True), ("-tls1_1", False)])
def test_openssl_protocol_versions(site: Site, version: str, works: bool) -> None:
    for args in (["-connect", f"127.0.0.1:{site.tls_port}"],
                 ["-starttls", "pop3", "-connect", f"127.0.0.1:{site.port}"]):
        result = s_client(site, [version, "-cipher", "DEFAULT:@SECLEVEL=0", *args], b"QUIT\r\n")
        if works:
            assert result.returncode == 0, result.stderr
            assert b"Protocol version: TLSv1." + version[-1:].encode() in result.stderr
        else:
            assert result.returncode != 0
            assert b"alert protocol version" in result.stderr, result.stderr


# -- curl


def curl(site: Site, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    program = need_program("curl", "curl")
    return subprocess.run([program, "-sS", "-v", "--max-time", "30", "--cacert", str(site.pki.ca),
                           *extra, url], capture_output=True, timeout=60)


def credentials_url(scheme: str, port: int) -> str:
    return f"{scheme}://alice:{PASSWORD.replace(' ', '%20')}@localhost:{port}"


@pytest.mark.parametrize("mechanism, sent", [
    ("PLAIN", b"> AUTH PLAIN\r\n"),  # two steps: AUTH PLAIN, "+ ", response
    ("LOGIN", b"> AUTH LOGIN\r\n"),
    ("CRAM-MD5", b"> AUTH CRAM-MD5\r\n"),
    ("+APOP", b"> APOP alice "),
])
def test_curl_pop3s_with_each_mechanism(site: Site, mechanism: str, sent: bytes) -> None:
    result = curl(site, credentials_url("pop3s", site.tls_port) + "/1",
                  "--login-options", f"AUTH={mechanism}")
    assert result.returncode == 0, result.stderr
    assert sent in result.stderr
    assert result.stdout == crlf(MESSAGES[0])


def test_curl_plain_with_initial_response(site: Site) -> None:
    result = curl(site, credentials_url("pop3s", site.tls_port) + "/2",
                  "--login-options", "AUTH=PLAIN", "--sasl-ir")
    assert result.returncode == 0, result.stderr
    assert re.search(rb"> AUTH PLAIN [A-Za-z0-9+/=]+\r\n", result.stderr)
    assert result.stdout == crlf(MESSAGES[1])


def test_curl_stls_with_ssl_reqd(site: Site) -> None:
    listing = curl(site, credentials_url("pop3", site.port) + "/", "--ssl-reqd")
    assert listing.returncode == 0, listing.stderr
    assert b"> STLS\r\n" in listing.stderr
    assert listing.stdout.splitlines() == [b"%d %d" % (i + 1, len(crlf(m)))
                                           for i, m in enumerate(MESSAGES)]
    big = curl(site, credentials_url("pop3", site.port) + "/3", "--ssl-reqd")
    assert big.returncode == 0, big.stderr
    assert big.stdout == crlf(MESSAGES[2])


def test_curl_refuses_a_certificate_it_cannot_verify(site: Site) -> None:
    program = need_program("curl", "curl")
    result = subprocess.run([program, "-sS", "--max-time", "30", "--ssl-reqd",
                             credentials_url("pop3", site.port) + "/1"],
                            capture_output=True, timeout=60)
    assert result.returncode != 0 and result.stdout == b""


# -- python poplib


def test_poplib_stls(site: Site) -> None:
    client = poplib.POP3("127.0.0.1", site.port, timeout=20)
    assert "STLS" in client.capa()
    client.stls(site.context())
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps
    client.user("alice")
    client.pass_(PASSWORD)
    for number, message in enumerate(MESSAGES, 1):
        assert b"\r\n".join(client.retr(number)[1]) + b"\r\n" == crlf(message)
    client.dele(1)
    client.quit()
    assert len(site.files()) == len(MESSAGES) - 1


def test_poplib_pop3_ssl_and_apop(site: Site) -> None:
    client = poplib.POP3_SSL("127.0.0.1", site.tls_port, context=site.context(), timeout=20)
    assert client.apop("alice", PASSWORD).startswith(b"+OK")
    assert client.stat() == (len(MESSAGES), sum(len(crlf(m)) for m in MESSAGES))
    assert client.uidl()[1]
    client.quit()


# -- fetchmail


def fetchmail(site: Site, server_options: str,
              user_options: str) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run fetchmail once with a private HOME and rc file; return its run
    and what it delivered (through an MDA appending to a file)."""
    program = need_program("fetchmail", "fetchmail")
    home = site.root / "fetchmail-home"
    home.mkdir(exist_ok=True)
    delivered = home / "delivered"
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 {server_options} timeout 20\n"
        f'  user "alice" there with password "{PASSWORD}" is "{getpass.getuser()}" here\n'
        f"  sslcertck sslcertfile \"{site.pki.ca}\" sslcommonname localhost\n"
        f"  {user_options}\n"
        f'  mda "cat >> {delivered}"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    result = subprocess.run([program, "-v", "--nosyslog", "-f", str(rc)], capture_output=True,
                            text=True, env=env, timeout=120)
    return result, delivered.read_bytes() if delivered.exists() else b""


def without_received(mbox: bytes) -> bytes:
    """Drop the Received: header (and its continuation lines) fetchmail adds."""
    return re.sub(rb"Received: from 127\.0\.0\.1[^\n]*\n(?:[ \t][^\n]*\n)*", b"", mbox)


def test_fetchmail_stls_keeps_the_messages(site: Site) -> None:
    before = site.files()
    result, delivered = fetchmail(site, f"protocol pop3 port {site.port} auth password",
                                  "sslproto 'TLS1.2+' keep fetchall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POP3> STLS" in result.stdout and "upgrade to TLS succeeded" in result.stdout
    assert "POP3> USER alice" in result.stdout
    assert without_received(delivered) == b"".join(MESSAGES)
    # Kept, and marked read (flag S), as Dovecot's POP3 does after a RETR.
    assert site.files() == [f"{name.partition(':')[0]}:2,S" for name in before]


def test_fetchmail_implicit_tls_deletes_the_messages(site: Site) -> None:
    result, delivered = fetchmail(site, f"protocol pop3 port {site.tls_port} auth password",
                                  "ssl sslproto 'TLS1.2+' fetchall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POP3> STLS" not in result.stdout
    assert without_received(delivered) == b"".join(MESSAGES)
    assert site.files() == []


def test_fetchmail_cram_md5(site: Site) -> None:
    result, delivered = fetchmail(site, f"protocol pop3 port {site.port} auth cram-md5",
                                  "sslproto 'TLS1.2+' keep fetchall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POP3> AUTH CRAM-MD5" in result.stdout
    assert without_received(delivered) == b"".join(MESSAGES)


def test_fetchmail_apop(site: Site) -> None:
    result, delivered = fetchmail(site, f"protocol apop port {site.tls_port}",
                                  "ssl sslproto 'TLS1.2+' keep fetchall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POP3> APOP alice" in result.stdout
    assert without_received(delivered) == b"".join(MESSAGES)


# -- raw sockets




def test_commands_sent_with_stls_are_never_answered(site: Site) -> None:
    """CVE-2011-0411: "STLS\\r\\nCAPA\\r\\n" in one packet, then the
    handshake: the CAPA is answered neither in clear nor over TLS."""
    client = RawClient(site.port, timeout=20, nodelay=True)
    assert client.greeting is not None and client.greeting.startswith(b"+OK popgate ready.")
    client.send(b"STLS\r\nCAPA\r\n")
    assert client.line() == b"+OK Begin TLS negotiation now."
    assert client.quiet_for(0.5)
    client.starttls(site.context())
    client.send(b"QUIT\r\n")
    assert client.until_eof(20) == b"+OK Logging out.\r\n"
    client.close()


def test_plaintext_login_from_loopback_is_allowed(site: Site) -> None:
    """Loopback counts as secure (Dovecot does the same); remote clients are
    refused, which the in-memory tests show."""
    client = poplib.POP3("127.0.0.1", site.port, timeout=20)
    caps = client.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN", "CRAM-MD5"]
    client.user("alice")
    client.pass_(PASSWORD)
    client.quit()


# -- certificate reload, option errors


def test_sighup_reloads_the_certificate_without_dropping_sessions(tmp_path: Path, pki: PKI) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.cert, live / "fullchain.pem")
    shutil.copy(pki.key, live / "privkey.pem")
    with start_site(tmp_path, live / "fullchain.pem", live / "privkey.pem", pki) as site:
        old = poplib.POP3_SSL("127.0.0.1", site.tls_port, context=site.context(), timeout=20)
        old.user("alice")
        old.pass_(PASSWORD)
        assert common_name(old.sock.getpeercert(binary_form=True)) == "localhost"

        # certbot renews: new files, then its deploy hook sends SIGHUP.
        shutil.copy(pki.other_cert, live / "fullchain.pem")
        shutil.copy(pki.other_key, live / "privkey.pem")
        assert site.server.process is not None
        site.server.process.send_signal(signal.SIGHUP)

        def served() -> str:
            client = poplib.POP3_SSL("127.0.0.1", site.tls_port, context=site.context(), timeout=20)
            try:
                return common_name(client.sock.getpeercert(binary_form=True))
            finally:
                client.quit()

        deadline = time.monotonic() + 20
        while served() != "localhost (renewed)":
            assert time.monotonic() < deadline, site.server.log()
            time.sleep(0.1)
        assert site.server.process.poll() is None
        # The session from before the reload goes on, over the old context.
        assert b"\r\n".join(old.retr(3)[1]) + b"\r\n" == crlf(MESSAGES[2])
        old.quit()
        assert (f"config: Reloaded: changed=<>, restart_needed=<>, "
                f"certificate=<{live}/fullchain.pem, expires ") in site.server.log()


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "/nonexistent/fullchain.pem", "--tls-key", "/nonexistent/privkey.pem"],
     "--tls-cert/--tls-key: cannot read certificate /nonexistent/fullchain.pem: "
     "No such file or directory"),
    (["--tls-cert", "/etc/hostname", "--tls-key", "KEY"], "no PEM certificate in /etc/hostname"),
    (["--tls-cert", "CERT", "--tls-key", "OTHERKEY"], "does not match the certificate"),
    (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
    (["--pop3s", "tcp:9995"], "--pop3s needs --tls-cert and --tls-key"),
])
def test_tls_option_errors_are_one_line(pki: PKI, args: list[str], message: str) -> None:
    swap = {"CERT": str(pki.cert), "KEY": str(pki.key), "OTHERKEY": str(pki.other_key)}
    result = run_twistd(["-n", "--pidfile=", "popgate", "--store", "maildir:/tmp/%n",
                         "--auth", "htpasswd:/etc/hostname", *[swap.get(a, a) for a in args]])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert message in output, output
    assert len([line for line in output.splitlines() if message in line]) == 1


def test_pop3s_port_in_use_stops_start_up(tmp_path: Path, pki: PKI) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        result = run_twistd(["-n", "--pidfile=", "popgate", "--store", "maildir:/tmp/%n",
                             "--auth", "htpasswd:/etc/hostname", "--tls-cert", str(pki.cert),
                             "--tls-key", str(pki.key),
                             "--pop3s", f"tcp:{port}:interface=127.0.0.1"], timeout=60)
    finally:
        blocker.close()
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr
