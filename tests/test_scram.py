"""
SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 7677, RFC 5802) in memory: the stored
keys, the mechanism against the RFCs' own exchanges, and whole POP3 logins
on a L{StringTransport} through real user stores (passwd-file, htpasswd,
SQL, a chain, LDAP with a stand-in directory).

The client here is written from RFC 5802 with hashlib and hmac alone (not
scramp, which popgate uses to derive keys), so the two sides can disagree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from zope.interface import implementer

from popgate.cred import schemes, scram
from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.cred.htpasswd import HtpasswdChecker
from popgate.cred.ldap_directory import Entry
from popgate.cred.ldap_settings import parse_args as ldap_args
from popgate.cred.passwdfile import PasswdFileChecker
from popgate.cred.penalty import LoginPenalty
from popgate.cred.sql import SQLChecker
from popgate.cred.sql_settings import parse_args as sql_args
from popgate.errors import TemporaryFailure
from popgate.interfaces import IScramCredentials, IScramLookup
from popgate.pop3 import sasl
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.scram import MAX_MESSAGE, KeysWanted, ScramCredentials, ScramMechanism
from popgate.pop3.settings import SessionSettings
from popgate.stores.memory import MemoryStore
from tests.helpers import LOOPBACK_PEER, InlineReactor, Session, make_portal
from tests.popgate_server import REPO, child_env
from tests.services import need_program

pytestmark = pytest.mark.usefixtures("log_events")

AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
ABORTED = b"-ERR Authentication aborted by client.\r\n"
REMOTE = IPv4Address("TCP", "192.0.2.1", 40000)  # TEST-NET-1: never contacted
HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- an independent client (RFC 5802 section 3, hashlib and hmac only)


def derive(mechanism: str, password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) as RFC 5802 section 3 defines them."""
    digest = HASHES[mechanism]
    salted = hashlib.pbkdf2_hmac(digest, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    return (hashlib.new(digest, client_key).digest(),
            hmac.new(salted, b"Server Key", digest).digest())


def stored_value(mechanism: str, password: bytes, salt: bytes = b"0123456789abcdef",
                 iterations: int = 4096) -> str:
    """The Dovecot form of the keys, built here, not by popgate."""
    stored_key, server_key = derive(mechanism, password, salt, iterations)
    fields = ",".join(b64(f).decode() for f in (salt, stored_key, server_key))
    return f"{{{mechanism}}}{iterations},{fields}"


class Client:
    """One SCRAM exchange, client side; C{flag} is the gs2 flag (n, y, p=...)."""

    def __init__(self, mechanism: str, user: bytes, password: bytes,
                 nonce: bytes = b"fyko+d2lbbFgONRv9qkxdawL", flag: bytes = b"n") -> None:
        self.mechanism, self.user, self.password = mechanism, user, password
        self.nonce, self.gs2 = nonce, flag + b",,"
        self.bare = b"n=" + user.replace(b"=", b"=3D").replace(b",", b"=2C") + b",r=" + nonce
        self.signature = b""

    def first(self) -> bytes:
        return self.gs2 + self.bare

    def final(self, server_first: bytes) -> bytes:
        fields = dict(item.split(b"=", 1) for item in server_first.split(b","))
        assert fields[b"r"].startswith(self.nonce) and len(fields[b"r"]) > len(self.nonce)
        digest = HASHES[self.mechanism]
        salted = hashlib.pbkdf2_hmac(digest, self.password, base64.b64decode(fields[b"s"]),
                                     int(fields[b"i"]))
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        stored_key = hashlib.new(digest, client_key).digest()
        without_proof = b"c=" + b64(self.gs2) + b",r=" + fields[b"r"]
        auth_message = b",".join((self.bare, server_first, without_proof))
        client_signature = hmac.new(stored_key, auth_message, digest).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        self.signature = b"v=" + b64(hmac.new(server_key, auth_message, digest).digest())
        return without_proof + b",p=" + b64(proof)


# -- the RFCs' exchanges


RFC_7677 = {  # SCRAM-SHA-256, RFC 7677 section 3
    "mechanism": "SCRAM-SHA-256", "salt": "W22ZaJ0SNY7soEsUEjb6gQ==",
    "server_nonce": "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    "client_first": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "server_first": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "client_final": b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}
RFC_5802 = {  # SCRAM-SHA-1, RFC 5802 section 5
    "mechanism": "SCRAM-SHA-1", "salt": "QSXCR+Q6sek8bf92",
    "server_nonce": "3rfcNHYJY1ZVvWVs7j",
    "client_first": b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "server_first": b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "client_final": b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                    b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "server_final": b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
}


def rfc_keys(vector: dict[str, Any]) -> scram.ScramKeys:
    salt = base64.b64decode(vector["salt"])
    stored_key, server_key = derive(vector["mechanism"], b"pencil", salt, 4096)
    return scram.ScramKeys(vector["mechanism"], 4096, salt, stored_key, server_key)


@pytest.mark.parametrize("vector", [RFC_7677, RFC_5802], ids=["RFC 7677", "RFC 5802"])
def test_the_rfc_exchanges(vector: dict[str, Any]) -> None:
    keys = rfc_keys(vector)
    mechanism = ScramMechanism(vector["mechanism"], server_nonce=vector["server_nonce"])
    assert mechanism.step(vector["client_first"]) == KeysWanted(b"user", vector["mechanism"])
    assert mechanism.keys_found(keys).data == vector["server_first"]
    credentials = mechanism.step(vector["client_final"])
    assert isinstance(credentials, ScramCredentials)
    assert credentials.username == b"user" and credentials.check(keys)
    assert mechanism.success_data() == vector["server_final"]
    # A proof is good for these keys only.
    other = scram.make_keys("pencil", vector["mechanism"])
    assert not credentials.check(other)


@pytest.mark.parametrize("vector", [RFC_7677, RFC_5802], ids=["RFC 7677", "RFC 5802"])
def test_make_keys_derives_what_the_rfc_does(vector: dict[str, Any]) -> None:
    keys = rfc_keys(vector)
    made = scram.make_keys("pencil", vector["mechanism"], salt=keys.salt)
    assert (made.stored_key, made.server_key, made.iterations) == (
        keys.stored_key, keys.server_key, 4096)
    assert scram.parse_keys(made.to_text()) == made
    assert scram.verify_password(b"pencil", made) and not scram.verify_password(b"pencil!", made)


def test_server_nonces_are_fresh_and_printable() -> None:
    nonces = set()
    for _ in range(20):
        mechanism = ScramMechanism("SCRAM-SHA-256")
        mechanism.step(b"n,,n=user,r=abc")
        first = mechanism.keys_found(None).data.decode("ascii")
        nonce = first.split(",")[0][2:]
        assert nonce.startswith("abc") and len(nonce) >= 3 + 24 and "," not in nonce
        nonces.add(nonce)
    assert len(nonces) == 20


# -- stored keys and password schemes


def test_parse_keys() -> None:
    value = stored_value("SCRAM-SHA-256", b"secret")
    keys = scram.parse_keys(value)
    assert keys is not None and (keys.mechanism, keys.iterations, keys.salt) == (
        "SCRAM-SHA-256", 4096, b"0123456789abcdef")
    assert scram.parse_keys(value.replace("{SCRAM-SHA-256}", "{scram-sha-256}")) == keys
    assert scram.parse_keys(value.split("}", 1)[1], default_scheme="SCRAM-SHA-256") == keys
    assert "secret" not in repr(keys) and b64(keys.stored_key).decode() not in repr(keys)
    bad = [
        "{BLF-CRYPT}$2y$04$abc", value.split("}", 1)[1], "{SCRAM-SHA-256}",
        "{SCRAM-SHA-256}4096,salt", value.replace("4096", "0"), value.replace("4096", "x"),
        value.replace("4096", "99999999999"), value[:-4],  # a key cut short
        value.replace("{SCRAM-SHA-256}", "{SCRAM-SHA-1}"),  # 32-byte keys for SHA-1
        "{SCRAM-SHA-256}4096,,AAAA,AAAA",
    ]
    for stored in bad:
        assert scram.parse_keys(stored) is None, stored


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_schemes_check_and_write_scram_keys(mechanism: str) -> None:
    stored = stored_value(mechanism, b"secret")
    assert schemes.verify_password(b"secret", stored)
    assert not schemes.verify_password(b"Secret", stored)
    assert not schemes.is_cheap(stored)
    written = schemes.hash_password("secret", mechanism)
    assert written.startswith(f"{{{mechanism}}}4096,")
    assert schemes.verify_password(b"secret", written)
    assert schemes.hash_password("secret", mechanism, prefix=False).startswith("{")
    assert schemes.hash_password("secret", mechanism, rounds=5000).startswith(
        f"{{{mechanism}}}5000,")
    assert mechanism in schemes.HASH_SCHEMES
    with pytest.raises(ValueError, match="4096"):
        schemes.hash_password("secret", mechanism, rounds=100)
    with pytest.raises(ValueError, match="SASLprep"):
        schemes.hash_password("bell\x07", mechanism)
    # A malformed value of the scheme is a mismatch, never an error.
    assert not schemes.verify_password(b"secret", f"{{{mechanism}}}4096,???")


def test_a_password_sasl_prep_changes_is_checked_both_ways() -> None:
    # U+00A0 (no-break space) becomes a space; U+00AD (soft hyphen) goes.
    password = "pa\u00a0ss\u00adword"
    prepared = scram.make_keys(password, "SCRAM-SHA-256")
    salt = prepared.salt
    raw_stored_key, raw_server_key = derive("SCRAM-SHA-256", password.encode(), salt, 4096)
    as_is = scram.ScramKeys("SCRAM-SHA-256", 4096, salt, raw_stored_key, raw_server_key)
    # RFC clients prepare the password: what popgate pw writes is theirs.
    assert (prepared.stored_key, prepared.server_key) == derive(
        "SCRAM-SHA-256", b"pa ssword", salt, 4096)
    for keys in (prepared, as_is):
        assert scram.verify_password(password.encode(), keys)
        assert not scram.verify_password(b"password", keys)


@pytest.mark.integration
def test_doveadm_keys_verify() -> None:
    doveadm = need_program("doveadm", "dovecot-core")
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        out = subprocess.run([doveadm, "pw", "-s", mechanism, "-p", "pencil"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        keys = scram.parse_keys(out.strip())
        assert keys is not None and keys.mechanism == mechanism
        assert schemes.verify_password(b"pencil", out.strip())
        # The client's proof from the keys' salt checks out against them.
        mechanism_ = ScramMechanism(mechanism)
        client = Client(mechanism, b"user", b"pencil")
        mechanism_.step(client.first())
        credentials = mechanism_.step(client.final(mechanism_.keys_found(keys).data))
        assert credentials.check(keys)
        assert mechanism_.success_data() == client.signature
        # And doveadm agrees with what popgate writes.
        ours = schemes.hash_password("pencil", mechanism)
        test = subprocess.run([doveadm, "pw", "-t", ours, "-p", "pencil"],
                              capture_output=True, text=True, timeout=30)
        assert test.returncode == 0 and "(verified)" in test.stdout + test.stderr


# -- the mechanism's refusals


def first_then(message: bytes, mechanism: str = "SCRAM-SHA-256") -> ScramMechanism:
    m = ScramMechanism(mechanism, server_nonce="SNONCE")
    assert isinstance(m.step(message), KeysWanted)
    m.keys_found(rfc_keys(RFC_7677) if mechanism == "SCRAM-SHA-256" else None)
    return m


@pytest.mark.parametrize("message", [
    b"", b"n", b"n,", b"n,,", b"x,,n=user,r=abc", b"p=tls-unique,,n=user,r=abc",
    b"p=tls-server-end-point,,n=user,r=abc", b"n,,m=ext,n=user,r=abc", b"n,,r=abc,n=user",
    b"n,,n=user", b"n,,n=,r=abc", b"n,,n=us=er,r=abc", b"n,,n=user,r=", b"n,,n=user,r=a\x7fb",
    b"n,,n=user,r=abc,1=x", b"n,,n=user,r=abc,x=", b"n,b=x,n=user,r=abc",
    b"n,a=other,n=user,r=abc", b"n,,n=user,r=abc\0", b"n,,n=\xff,r=abc",
    b"n,,n=" + b"u" * MAX_MESSAGE + b",r=abc",
])
def test_bad_client_first_messages(message: bytes) -> None:
    with pytest.raises(sasl.SASLError):
        ScramMechanism("SCRAM-SHA-256").step(message)


def test_good_client_first_variants() -> None:
    for message, user in [
        (b"y,,n=user,r=abc", b"user"),  # the client could bind; we offered no -PLUS
        (b"n,a=user,n=user,r=abc", b"user"),
        (b"n,,n=a=2Cb=3Dc,r=abc", b"a,b=c"),
        (b"n,,n=user,r=abc,x=ignored,y=too", b"user"),
        (b"n,,n=j\xc3\xb6rg,r=abc", "jörg".encode()),
    ]:
        wanted = ScramMechanism("SCRAM-SHA-256").step(message)
        assert wanted == KeysWanted(user, "SCRAM-SHA-256")


@pytest.mark.parametrize("message", [
    b"", b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCE",  # no proof
    b"r=rOprNGfwEbeRWgbNEkqOSNONCE,c=biws,p=AAAA",  # order
    b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCEX,p=AAAA",  # wrong nonce
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=AAAA",  # the client's half only
    b"c=eSws,r=rOprNGfwEbeRWgbNEkqOSNONCE,p=AAAA",  # y,, but n,, was sent
    b"c=!!!!,r=rOprNGfwEbeRWgbNEkqOSNONCE,p=AAAA",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCE,p=A",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCE,1=x,p=AAAA",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCE,p=" + b"A" * MAX_MESSAGE,
])
def test_bad_client_final_messages(message: bytes) -> None:
    with pytest.raises(sasl.SASLError):
        first_then(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").step(message)


def test_a_wrong_proof_is_the_user_stores_to_refuse() -> None:
    m = first_then(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    credentials = m.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqOSNONCE,x=ext,p=" + b64(b"\0" * 32))
    assert isinstance(credentials, ScramCredentials)
    assert not credentials.check(rfc_keys(RFC_7677))
    assert not credentials.check(rfc_keys(RFC_5802))  # another mechanism's keys


def test_messages_out_of_turn() -> None:
    m = ScramMechanism("SCRAM-SHA-256")
    with pytest.raises(sasl.SASLError):
        m.keys_found(None)
    m.step(b"n,,n=user,r=abc")
    with pytest.raises(sasl.SASLError):
        m.step(b"n,,n=user,r=abc")  # before the lookup answered


def test_made_up_salts_are_stable_per_name_and_unpredictable() -> None:
    a = scram.fake_keys("SCRAM-SHA-256", b"ghost")
    assert a.salt == scram.fake_keys("SCRAM-SHA-256", b"ghost").salt
    assert a.stored_key != scram.fake_keys("SCRAM-SHA-256", b"ghost").stored_key
    assert a.salt != scram.fake_keys("SCRAM-SHA-256", b"ghost2").salt
    assert a.salt != scram.fake_keys("SCRAM-SHA-1", b"ghost").salt
    assert len(a.salt) == 16 and a.iterations == 4096


@pytest.mark.integration
def test_workers_share_the_salt_secret() -> None:
    # The worker pool passes it on; a worker takes it from its environment.
    code = "from popgate.cred import scram; print(scram.salt_secret())"
    env = {**child_env(), scram.SALT_SECRET_ENV: scram.salt_secret()}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == scram.salt_secret()


# -- POP3 logins through real user stores


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    bob = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    path.write_text(
        f"alice:{stored_value('SCRAM-SHA-256', b'secret')}\n"
        f"bob:{{BLF-CRYPT}}{bob}\n"
        f"carol:{stored_value('SCRAM-SHA-1', b'pencil')}\n"
        "dave:{PLAIN}clear\n")
    return path


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.add_message("alice", b"Subject: one\n\nbody\n")
    return store


def open_session(store: MemoryStore, checker: Any, peer: Any = LOOPBACK_PEER,
                 penalty: Any = None, clock: Clock | None = None,
                 settings: SessionSettings | None = None) -> Session:
    from twisted.internet.testing import StringTransport

    portal, _ = make_portal(store, checker=checker)
    clock = clock or Clock()
    protocol = POP3ServerFactory(portal, settings, clock, penalty=penalty).buildProtocol(None)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    session = Session(protocol, transport, clock)
    session.take()
    return session


def passwd_file(path: Path) -> PasswdFileChecker:
    return PasswdFileChecker(str(path), InlineReactor())


def capa_sasl(session: Session) -> list[bytes]:
    reply = session.send(b"CAPA\r\n")
    for line in reply.split(b"\r\n"):
        if line.startswith(b"SASL "):
            return line.split()[1:]
    return []


def challenge(reply: bytes) -> bytes:
    assert reply.startswith(b"+ ") and reply.endswith(b"\r\n"), reply
    return base64.b64decode(reply[2:-2])


def scram_login(session: Session, client: Client, initial: bool = True) -> bytes:
    """Run the exchange up to the server's signature; return the reply to the proof."""
    if initial:
        reply = session.send(b"AUTH " + client.mechanism.encode() + b" " + b64(client.first())
                             + b"\r\n")
    else:
        assert session.send(b"AUTH " + client.mechanism.encode() + b"\r\n") == b"+ \r\n"
        reply = session.send(b64(client.first()) + b"\r\n")
    return session.send(b64(client.final(challenge(reply))) + b"\r\n")


def failed_after_delay(session: Session, reply: bytes) -> bool:
    if reply != b"":
        return False
    session.clock.advance(1)
    return session.take() == AUTH_FAILED


@pytest.mark.parametrize("initial", [True, False])
@pytest.mark.parametrize("flag", [b"n", b"y"])
def test_scram_sha_256_login(store: MemoryStore, users: Path, initial: bool, flag: bytes) -> None:
    session = open_session(store, passwd_file(users))
    client = Client("SCRAM-SHA-256", b"alice", b"secret", flag=flag)
    assert challenge(scram_login(session, client, initial)) == client.signature
    assert session.send(b"\r\n") == b"+OK Logged in.\r\n"
    assert session.send(b"STAT\r\n") == b"+OK 1 22\r\n"


def test_scram_sha_1_login(store: MemoryStore, users: Path) -> None:
    store.add_message("carol", b"Subject: two\n\nbody\n")
    session = open_session(store, passwd_file(users))
    client = Client("SCRAM-SHA-1", b"carol", b"pencil")
    assert challenge(scram_login(session, client)) == client.signature
    assert session.send(b"\r\n") == b"+OK Logged in.\r\n"


def test_capa_offers_the_mechanisms_the_file_has_keys_for(store: MemoryStore, users: Path,
                                                          tmp_path: Path) -> None:
    assert capa_sasl(open_session(store, passwd_file(users))) == [
        b"PLAIN", b"LOGIN", b"CRAM-MD5", b"SCRAM-SHA-256", b"SCRAM-SHA-1"]
    # From a remote client without TLS: SCRAM sends no password, so it stays.
    assert capa_sasl(open_session(store, passwd_file(users), peer=REMOTE)) == [
        b"CRAM-MD5", b"SCRAM-SHA-256", b"SCRAM-SHA-1"]
    # A file of bcrypt hashes offers no SCRAM: clients that pick it whenever
    # it is offered (mpop) would fail for every user.
    hashes = tmp_path / "hashes"
    hashes.write_text("bob:" + bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode() + "\n")
    checker = passwd_file(hashes)
    session = open_session(store, checker)
    assert capa_sasl(session) == [b"PLAIN", b"LOGIN", b"CRAM-MD5"]
    assert session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=bob,r=abc") + b"\r\n") == (
        b"-ERR [AUTH] Unsupported authentication mechanism.\r\n")
    # Once the file gets keys (and is read again), they are offered.
    hashes.write_text(f"bob:{stored_value('SCRAM-SHA-256', b'x')}\n")
    os.utime(hashes, ns=(1, 1))
    checker.lookup_user("bob")
    assert capa_sasl(open_session(store, checker)) == [
        b"PLAIN", b"LOGIN", b"CRAM-MD5", b"SCRAM-SHA-256"]


@pytest.mark.parametrize(("user", "password"), [
    (b"alice", b"wrong"),  # wrong password
    (b"ghost", b"secret"),  # no such user
    (b"bob", b"secret"),  # a bcrypt hash: no keys
    (b"dave", b"clear"),  # {PLAIN}: no keys either
    (b"carol", b"pencil"),  # SCRAM-SHA-1 keys, SCRAM-SHA-256 asked
])
def test_every_refusal_looks_the_same(store: MemoryStore, users: Path, user: bytes,
                                      password: bytes) -> None:
    session = open_session(store, passwd_file(users))
    reply = scram_login(session, Client("SCRAM-SHA-256", user, password))
    assert failed_after_delay(session, reply)


def test_a_made_up_salt_does_not_change_between_attempts(store: MemoryStore,
                                                         users: Path) -> None:
    def server_first(user: bytes) -> bytes:
        session = open_session(store, passwd_file(users))
        reply = session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=" + user + b",r=abc") + b"\r\n")
        fields = dict(f.split(b"=", 1) for f in challenge(reply).split(b","))
        return fields[b"s"] + b"," + fields[b"i"]

    assert server_first(b"ghost") == server_first(b"ghost")
    assert server_first(b"bob") == server_first(b"bob")
    assert server_first(b"alice") == server_first(b"alice")
    assert len({server_first(b"ghost"), server_first(b"bob"), server_first(b"alice")}) == 3


@pytest.mark.parametrize("line", [
    b"AUTH SCRAM-SHA-256 " + b64(b"p=tls-unique,,n=alice,r=abc"),  # no -PLUS offered
    b"AUTH SCRAM-SHA-256 " + b64(b"n,,m=ext,n=alice,r=abc"),
    b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice"),
    b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=" + b"x" * 3000),
])
def test_bad_first_messages_fail_like_a_wrong_password(store: MemoryStore, users: Path,
                                                       line: bytes) -> None:
    session = open_session(store, passwd_file(users))
    assert failed_after_delay(session, session.send(line + b"\r\n"))


def test_bad_base64(store: MemoryStore, users: Path) -> None:
    session = open_session(store, passwd_file(users))
    assert session.send(b"AUTH SCRAM-SHA-256 !!!!\r\n") == (
        b"-ERR [AUTH] Invalid base64 data in initial response.\r\n")
    reply = session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n")
    assert reply.startswith(b"+ ")
    assert session.send(b"!!!!\r\n") == (
        b"-ERR [AUTH] Invalid base64 data in continued response.\r\n")


@pytest.mark.parametrize("final", [
    b"c=biws,r=abc,p=" + b64(b"\0" * 32),  # the client's half of the nonce only
    b"c=eSws,r={nonce},p=" + b64(b"\0" * 32),  # y,, after n,,
    b"c=biws,r={nonce}",  # no proof
])
def test_bad_final_messages_fail_like_a_wrong_password(store: MemoryStore, users: Path,
                                                       final: bytes) -> None:
    session = open_session(store, passwd_file(users))
    reply = session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n")
    nonce = challenge(reply).split(b",")[0][2:]
    assert failed_after_delay(session, session.send(b64(final.replace(b"{nonce}", nonce))
                                                    + b"\r\n"))


def test_cancel_after_the_lookup_counts_toward_the_limit(store: MemoryStore,
                                                        users: Path) -> None:
    session = open_session(store, passwd_file(users))
    for _ in range(2):
        assert session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n") \
            .startswith(b"+ ")
        assert session.send(b"*\r\n") == ABORTED
    # Cancelled before the lookup: not counted.
    assert session.send(b"AUTH SCRAM-SHA-256\r\n") == b"+ \r\n"
    assert session.send(b"*\r\n") == ABORTED
    assert not session.transport.disconnecting
    session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n")
    assert session.send(b"*\r\n") == ABORTED
    assert session.transport.disconnecting


def test_the_client_may_refuse_the_servers_signature(store: MemoryStore, users: Path) -> None:
    session = open_session(store, passwd_file(users))
    scram_login(session, Client("SCRAM-SHA-256", b"alice", b"secret"))
    assert session.send(b"*\r\n") == ABORTED
    # The maildrop was given back: the next login gets it.
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    assert challenge(scram_login(session, client)) == client.signature
    other = open_session(store, passwd_file(users))
    assert other.send(b"USER alice\r\nPASS secret\r\n").endswith(
        b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    assert session.send(b"\r\n") == b"+OK Logged in.\r\n"


def test_anything_but_an_empty_answer_to_the_signature_fails(store: MemoryStore,
                                                             users: Path) -> None:
    session = open_session(store, passwd_file(users))
    scram_login(session, Client("SCRAM-SHA-256", b"alice", b"secret"))
    assert session.send(b64(b"more") + b"\r\n") == AUTH_FAILED
    assert session.send(b"STAT\r\n").startswith(b"-ERR")  # still not logged in


def test_leaving_while_the_signature_waits_gives_the_maildrop_back(store: MemoryStore,
                                                                  users: Path) -> None:
    session = open_session(store, passwd_file(users))
    scram_login(session, Client("SCRAM-SHA-256", b"alice", b"secret"))
    session.lose()
    other = open_session(store, passwd_file(users))
    assert other.send(b"USER alice\r\nPASS secret\r\n").endswith(b"+OK Logged in.\r\n")


def test_the_login_timeout_runs_while_the_signature_waits(store: MemoryStore,
                                                          users: Path) -> None:
    session = open_session(store, passwd_file(users))
    scram_login(session, Client("SCRAM-SHA-256", b"alice", b"secret"))
    session.clock.advance(180)
    assert session.take() == b"-ERR Disconnected: no login in time.\r\n"
    session.lose()
    assert store.open_maildrop("alice") is not None  # not locked


def test_a_wrong_proof_feeds_the_per_ip_penalty(store: MemoryStore, users: Path) -> None:
    clock = Clock()
    penalty = LoginPenalty(clock, base_delay=4.0, max_delay=8.0)
    session = open_session(store, passwd_file(users), penalty=penalty, clock=clock)
    reply = scram_login(session, Client("SCRAM-SHA-256", b"alice", b"wrong"))
    assert failed_after_delay(session, reply)
    assert penalty.penalty("127.0.0.1") == 4.0
    # The right proof waits out the penalty (3 s are left) before the
    # signature comes: the lookup before it did not wait.
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    assert scram_login(session, client) == b""
    clock.advance(2.9)
    assert session.take() == b""
    clock.advance(0.1)
    assert challenge(session.take()) == client.signature


@implementer(IScramLookup)
class _Lookup:
    """A user store whose lookups wait, or fail, as a test says."""

    credentialInterfaces = (IScramCredentials,)

    def __init__(self) -> None:
        self.pending: defer.Deferred[Any] = defer.Deferred()

    def scram_mechanisms(self) -> frozenset[str]:
        return frozenset({"SCRAM-SHA-256"})

    def lookup_scram(self, name: Any, mechanism: str) -> defer.Deferred[Any]:
        return self.pending

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        return defer.fail(UnauthorizedLogin())


def test_a_user_store_that_cannot_answer_is_sys_temp(store: MemoryStore) -> None:
    lookup = _Lookup()
    session = open_session(store, lookup)
    assert session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n"
                        + b"NOOP\r\n") == b""
    lookup.pending.errback(TemporaryFailure("the directory is down"))
    assert session.take().startswith(
        b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n")


def test_leaving_during_a_lookup(store: MemoryStore) -> None:
    lookup = _Lookup()
    session = open_session(store, lookup)
    session.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n")
    session.lose()
    lookup.pending.callback(None)
    assert session.take() == b""


def test_proofs_and_payloads_are_never_logged(store: MemoryStore, users: Path,
                                              log_events: list[dict[str, Any]]) -> None:
    session = open_session(store, passwd_file(users))
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    sent = [b64(client.first())]
    reply = session.send(b"AUTH SCRAM-SHA-256 " + sent[0] + b"\r\n")
    sent.append(b64(client.final(challenge(reply))))
    session.send(sent[1] + b"\r\n")
    session.send(b"\r\n")
    text = repr(log_events)
    for secret in (*sent, client.final(b"r=" + client.nonce + b"x,s=AAAA,i=4096")):
        assert secret.decode() not in text
    assert any(e.get("method") == "SCRAM-SHA-256" and e.get("result") == "ok"
               for e in log_events)


# -- the other user stores


def test_htpasswd_keys(store: MemoryStore, users: Path) -> None:
    checker = HtpasswdChecker(str(users), InlineReactor())
    session = open_session(store, checker)
    assert capa_sasl(session)[-2:] == [b"SCRAM-SHA-256", b"SCRAM-SHA-1"]
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    assert challenge(scram_login(session, client)) == client.signature
    # USER/PASS against the keys works too.
    assert open_session(store, checker).send(b"USER carol\r\nPASS pencil\r\n").endswith(
        b"+OK Logged in.\r\n")


def test_a_chain_takes_the_first_store_with_keys(store: MemoryStore, users: Path,
                                                 tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_text("alice:{PLAIN}other\n")
    chain = ChainedChecker([passwd_file(first), passwd_file(users)])
    assert chain.scram_mechanisms() == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    session = open_session(store, chain)
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    assert challenge(scram_login(session, client)) == client.signature


def test_the_auth_cache_passes_scram_through(users: Path) -> None:
    cache = CachingChecker(passwd_file(users), clock=Clock())
    assert IScramLookup.providedBy(cache)
    assert cache.scram_mechanisms() == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    keys = cache.lookup_scram(b"alice", "SCRAM-SHA-256")
    assert keys.result == scram.parse_keys(stored_value("SCRAM-SHA-256", b"secret"))
    assert cache.lookup_scram(b"alice", "SCRAM-SHA-1").result is None
    assert len(cache) == 0


def sqlite_users(tmp_path: Path) -> str:
    path = tmp_path / "users.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (userid TEXT, password TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [
        ("alice", stored_value("SCRAM-SHA-256", b"secret")),
        ("bare", stored_value("SCRAM-SHA-256", b"secret").split("}", 1)[1]),
        ("bob", "{PLAIN}secret"),
    ])
    db.commit()
    db.close()
    return f"sqlite://{path}"


def test_sql_offers_scram_only_when_asked(tmp_path: Path) -> None:
    dsn = sqlite_users(tmp_path)
    assert SQLChecker(dsn, reactor=InlineReactor()).scram_mechanisms() == frozenset()
    assert IScramCredentials not in SQLChecker(dsn, reactor=InlineReactor()).credentialInterfaces
    assert SQLChecker(dsn, reactor=InlineReactor(), default_scheme="SCRAM-SHA-1") \
        .scram_mechanisms() == {"SCRAM-SHA-1"}
    assert sql_args(f"dsn={dsn},scram=yes")["scram_mechanisms"] == {
        "SCRAM-SHA-256", "SCRAM-SHA-1"}
    assert sql_args(f"dsn={dsn},scram=scram-sha-256")["scram_mechanisms"] == {"SCRAM-SHA-256"}
    assert sql_args(f"dsn={dsn},scram=no")["scram_mechanisms"] == frozenset()
    with pytest.raises(ValueError, match="scram="):
        sql_args(f"dsn={dsn},scram=maybe")


def proof(mechanism_name: str, user: bytes, password: bytes,
          keys: scram.ScramKeys | None) -> ScramCredentials:
    """What the exchange hands the portal, for C{keys} (from a lookup)."""
    mechanism = ScramMechanism(mechanism_name)
    client = Client(mechanism_name, user, password)
    mechanism.step(client.first())
    credentials = mechanism.step(client.final(mechanism.keys_found(keys).data))
    assert isinstance(credentials, ScramCredentials)
    return credentials


def test_sql_scram_lookup_and_check(tmp_path: Path) -> None:
    from tests.reactor_thread import run, start_reactor
    from tests.test_sql import _close_pool

    checker = SQLChecker(sqlite_users(tmp_path), reactor=start_reactor(),
                         default_scheme="SCRAM-SHA-256")
    try:
        assert IScramCredentials in checker.credentialInterfaces
        expected = scram.parse_keys(stored_value("SCRAM-SHA-256", b"secret"))
        for name in (b"alice", b"bare"):  # with its {SCHEME}, and bare in scheme=
            keys = run(checker.lookup_scram, name, "SCRAM-SHA-256")
            assert keys == expected
            good = proof("SCRAM-SHA-256", name, b"secret", keys)
            assert run(checker.requestAvatarId, good) == name.decode()
            with pytest.raises(UnauthorizedLogin):
                run(checker.requestAvatarId, proof("SCRAM-SHA-256", name, b"wrong", keys))
        for name in (b"bob", b"ghost"):  # a {PLAIN} password has no keys; nobody
            assert run(checker.lookup_scram, name, "SCRAM-SHA-256") is None
            with pytest.raises(UnauthorizedLogin):
                run(checker.requestAvatarId, proof("SCRAM-SHA-256", name, b"secret", None))
        assert run(checker.lookup_scram, b"alice", "SCRAM-SHA-1") is None
    finally:
        run(_close_pool, checker)


def blocking(d: defer.Deferred[Any]) -> Any:
    """The result of C{d}, which must have fired (an inline thread pool)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class _Directory:
    """Stands in for L{popgate.cred.ldap_directory.Directory}: one entry."""

    def __init__(self, entry: Entry | None) -> None:
        self.entry = entry

    async def search(self, search_filter: Any) -> list[Entry]:
        return [self.entry] if self.entry is not None else []


def test_ldap_reads_keys_from_the_scram_attribute() -> None:
    from popgate.cred.ldap import LDAPChecker

    settings = ldap_args("url=ldap://127.0.0.1:1/,base=dc=example,dc=org,"
                         "scram_attribute=userPassword")
    checker = LDAPChecker(settings, InlineReactor())
    assert IScramCredentials in checker.credentialInterfaces
    assert checker.scram_mechanisms() == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    entry = Entry("uid=alice,dc=example,dc=org", {
        "uid": ["alice"],
        "userPassword": ["{SSHA}abcdefgh", stored_value("SCRAM-SHA-256", b"secret")],
    })
    checker.directory = _Directory(entry)  # type: ignore[assignment]
    keys = blocking(checker.lookup_scram(b"alice", "SCRAM-SHA-256"))
    assert keys == scram.parse_keys(stored_value("SCRAM-SHA-256", b"secret"))
    assert blocking(checker.lookup_scram(b"alice", "SCRAM-SHA-1")) is None
    mechanism = ScramMechanism("SCRAM-SHA-256")
    client = Client("SCRAM-SHA-256", b"alice", b"secret")
    mechanism.step(client.first())
    credentials = mechanism.step(client.final(mechanism.keys_found(keys).data))
    assert blocking(checker.requestAvatarId(credentials)) == "alice"
    checker.directory = _Directory(None)  # type: ignore[assignment]
    with pytest.raises(UnauthorizedLogin):
        blocking(checker.requestAvatarId(credentials))
    # Without the attribute: no SCRAM at all.
    plain = LDAPChecker(ldap_args("url=ldap://127.0.0.1:1/,base=dc=example,dc=org"),
                        InlineReactor())
    assert plain.scram_mechanisms() == frozenset()
    assert IScramCredentials not in plain.credentialInterfaces


def test_popgate_pw_writes_and_tests_scram_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from popgate.cli import main

    assert main(["pw", "-s", "scram-sha-256", "-p", "secret"]) == 0
    written = capsys.readouterr().out.strip()
    keys = scram.parse_keys(written)
    assert keys is not None and keys.iterations == 4096 and len(keys.salt) == 16
    assert (keys.stored_key, keys.server_key) == derive("SCRAM-SHA-256", b"secret", keys.salt,
                                                        4096)
    assert main(["pw", "-s", "SCRAM-SHA-1", "-r", "10000", "-p", "secret"]) == 0
    assert capsys.readouterr().out.startswith("{SCRAM-SHA-1}10000,")
    assert main(["pw", "-t", written, "-p", "secret"]) == 0
    assert "(verified)" in capsys.readouterr().out
    assert main(["pw", "-s", "SCRAM-SHA-256", "-r", "1", "-p", "secret"]) == 1
    assert "4096" in capsys.readouterr().err
    assert main(["pw", "-l"]) == 0
    assert "SCRAM-SHA-256" in capsys.readouterr().out


def test_popgate_passwd_writes_scram_keys_to_a_user_file(tmp_path: Path) -> None:
    from popgate.admin.passwd import set_password

    path = tmp_path / "users"
    set_password(str(path), "alice", "secret", "SCRAM-SHA-256")
    name, stored = path.read_text().strip().split(":", 1)
    keys = scram.parse_keys(stored)
    assert name == "alice" and keys is not None
    assert (keys.stored_key, keys.server_key) == derive("SCRAM-SHA-256", b"secret", keys.salt,
                                                        4096)


def test_popgate_passwd_takes_scram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from popgate.cli import main

    path = tmp_path / "users"
    assert main(["passwd", "--password", "secret", "-s", "SCRAM-SHA-256", str(path), "bob"]) == 0
    assert scram.parse_keys(path.read_text().strip().split(":", 1)[1]) is not None


def test_the_servers_portal_looks_keys_up_through_cache_and_chain(users: Path,
                                                                  tmp_path: Path) -> None:
    from popgate.build import build_portal

    other = tmp_path / "other"
    other.write_text("zed:{PLAIN}x\n")
    portal = build_portal(MemoryStore(), [passwd_file(other), passwd_file(users)], Clock(),
                          cache=(60, 10))
    lookup = IScramLookup(portal.checkers[IScramCredentials])
    assert lookup.scram_mechanisms() == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    keys = blocking(lookup.lookup_scram(b"alice", "SCRAM-SHA-256"))
    assert keys == scram.parse_keys(stored_value("SCRAM-SHA-256", b"secret"))
    credentials = proof("SCRAM-SHA-256", b"alice", b"secret", keys)
    assert blocking(portal.checkers[IScramCredentials].requestAvatarId(credentials)) == "alice"
