"""
OAUTHBEARER and XOAUTH2 against a real popgate process: curl's
C{--oauth2-bearer} over POP3S with a locally minted JWT (keys in a JWKS
file), and poplib driving C{AUTH XOAUTH2} and the RFC 7628 error exchange
by hand.
"""

from __future__ import annotations

import base64
import itertools
import json
import poplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.popgate_server import PopgateProcess
from tests.services import need_program
from tests.test_oauth import AUDIENCE, ISSUER, Keys
from tests.tlscerts import PKI, make_pki

pytestmark = pytest.mark.integration

MESSAGE = b"From: a@example.org\nSubject: oauth\n\nfetched with a bearer token\n"

# The module's server penalises failed logins by address: each poplib
# client comes from a loopback address of its own, so that one test's
# failures (and curl's, from 127.0.0.1) do not delay the next one's answers.
_SOURCES = (f"127.0.1.{n}" for n in itertools.count(2))


def _connect(client: poplib.POP3, timeout: float) -> socket.socket:
    return socket.create_connection((client.host, client.port), timeout,
                                    source_address=(next(_SOURCES), 0))


class POP3(poplib.POP3):
    def _create_socket(self, timeout: float) -> socket.socket:
        return _connect(self, timeout)


class POP3_SSL(poplib.POP3_SSL):
    def _create_socket(self, timeout: float) -> socket.socket:
        context: ssl.SSLContext = self.context  # type: ignore[attr-defined]
        return context.wrap_socket(_connect(self, timeout), server_hostname=self.host)


@dataclass
class Site:
    root: Path
    pki: PKI
    keys: Keys
    server: PopgateProcess

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca))

    def pop3s(self) -> poplib.POP3_SSL:
        assert self.server.pop3s_port is not None
        return POP3_SSL("127.0.0.1", self.server.pop3s_port, context=self.tls(), timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("oauth")
    pki = make_pki(root / "pki")
    keys = Keys()
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    users = root / "users"
    users.write_text("bob@example.org:{PLAIN}bob-pw\n")
    for user in ("alice@example.org", "bob@example.org"):
        mail = root / "mail" / user
        for sub in ("new", "cur", "tmp"):
            (mail / sub).mkdir(parents=True)
        (mail / "new" / "1700000000.M1P1.oauth").write_bytes(MESSAGE)
    args = ["--auth", f"passwd-file:{users}", "--store", f"maildir:{root / 'mail'}/%u",
            "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
            "--auth-failure-delay", "0.2",
            "--oauth", f"jwt:jwks_file={jwks},issuer={ISSUER},audience={AUDIENCE},"
                       "user_claim=email"]
    with PopgateProcess(args, log_path=str(root / "popgate.log"), pop3s=True) as server:
        yield Site(root, pki, keys, server)


def curl(site: Site, token: bytes, user: str = "alice@example.org",
         url_tail: str = "1") -> subprocess.CompletedProcess[bytes]:
    program = need_program("curl", "curl")
    return subprocess.run(
        [program, "--silent", "--show-error", "--verbose", "--max-time", "60",
         "--cacert", str(site.pki.ca), "--user", user, "--oauth2-bearer", token.decode(),
         f"pop3s://127.0.0.1:{site.server.pop3s_port}/{url_tail}"],
        capture_output=True, timeout=90)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_curl_retrieves_with_a_bearer_token(site: Site, algorithm: str) -> None:
    result = curl(site, site.keys.token(algorithm))
    assert result.returncode == 0, result.stderr.decode()
    assert b"fetched with a bearer token" in result.stdout
    assert b"AUTH OAUTHBEARER" in result.stderr  # curl prefers it to XOAUTH2
    log = site.server.log()
    assert "Login: user=<alice@example.org>" in log
    assert "Traceback" not in log


def test_curl_refused_with_an_expired_token(site: Site) -> None:
    import time

    result = curl(site, site.keys.token(exp=int(time.time()) - 3600))
    assert result.returncode != 0
    assert b"fetched" not in result.stdout
    assert "Traceback" not in site.server.log()


def test_curl_refused_for_another_user(site: Site) -> None:
    result = curl(site, site.keys.token(), user="bob@example.org")
    assert result.returncode != 0
    assert b"fetched" not in result.stdout


def xoauth2(user: bytes, token: bytes) -> bytes:
    return base64.b64encode(b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01")


def test_poplib_xoauth2(site: Site) -> None:
    client = site.pop3s()
    try:
        sasl = client.capa()["SASL"]
        assert "XOAUTH2" in sasl and "OAUTHBEARER" in sasl
        reply = client._shortcmd("AUTH XOAUTH2 " + xoauth2(b"alice@example.org",  # type: ignore[attr-defined]
                                                           site.keys.token()).decode())
        assert reply == b"+OK Logged in."
        assert client.stat()[0] == 1
        assert MESSAGE.split(b"\n")[-2] in b"\n".join(client.retr(1)[1])
    finally:
        client.quit()


def test_poplib_xoauth2_error_exchange(site: Site) -> None:
    client = site.pop3s()
    try:
        client._putcmd("AUTH XOAUTH2 " + xoauth2(b"alice@example.org", b"garbage").decode())  # type: ignore[attr-defined]
        line, _ = client._getline()  # type: ignore[attr-defined]
        assert line.startswith(b"+ ")
        assert json.loads(base64.b64decode(line[2:]))["status"] == "401"
        client._putcmd("")  # type: ignore[attr-defined]
        line, _ = client._getline()  # type: ignore[attr-defined]
        assert line == b"-ERR [AUTH] Authentication failed."
        # RFC 7628: OAUTHBEARER's error is answered with 0x01.
        client._putcmd("AUTH OAUTHBEARER " + base64.b64encode(  # type: ignore[attr-defined]
            b"n,a=alice@example.org,\x01auth=Bearer garbage\x01\x01").decode())
        line, _ = client._getline()  # type: ignore[attr-defined]
        assert json.loads(base64.b64decode(line[2:]))["status"] == "invalid_token"
        client._putcmd("AQ==")  # type: ignore[attr-defined]
        line, _ = client._getline()  # type: ignore[attr-defined]
        assert line == b"-ERR [AUTH] Authentication failed."
    finally:
        client.quit()


def test_plaintext_port_neither_offers_nor_accepts(site: Site) -> None:
    client = POP3("127.0.0.1", site.server.port, timeout=30)
    try:
        assert "XOAUTH2" not in client.capa().get("SASL", [])
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client._shortcmd("AUTH XOAUTH2 " + xoauth2(b"alice@example.org",  # type: ignore[attr-defined]
                                                       site.keys.token()).decode())
        # STLS makes it TLS: then it is offered.
        client.stls(context=site.tls())
        assert "XOAUTH2" in client.capa()["SASL"]
        assert client._shortcmd("AUTH XOAUTH2 " + xoauth2(  # type: ignore[attr-defined]
            b"alice@example.org", site.keys.token()).decode()) == b"+OK Logged in."
    finally:
        client.quit()
