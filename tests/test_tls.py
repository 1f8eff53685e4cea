"""
TLS: STLS (RFC 2595) in memory, including the plaintext-injection guard;
the certificate loader and its errors; the TLS settings, certificate chain,
reload and plaintext policy over real loopback sockets against popgate
listeners in this process; the options and the service they build.
"""

from __future__ import annotations

import poplib
import select
import shutil
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import alsoProvides, implementer

from popgate import tap
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.service import build_service
from popgate.stores.memory import MemoryStore
from popgate.tls import CIPHERS, ServerTLS, TLSConfigError, reload_on_hangup
from tests import reactor_thread
from tests.services import need_program
from tests.tlscerts import PKI, common_name, make_pki, write_encrypted_key
from tests.pop3_oracle import read_line

from .helpers import LOOPBACK_PEER, Session, make_portal

REMOTE = IPv4Address("TCP", "192.0.2.1", 40000)  # TEST-NET-1: never contacted
MESSAGE = b"Subject: over TLS\r\n\r\nhello\r\n.dot\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- STLS in memory


class TLSStringTransport(StringTransport):
    """A StringTransport that can start TLS: it records the call and what
    had been written before, and from then on provides ISSLTransport."""

    def __init__(self, peer: Any = REMOTE) -> None:
        super().__init__(peerAddress=peer)
        self.tls_started_with: Any = None
        self.written_before_tls = b""

    def startTLS(self, context_factory: Any) -> None:
        assert self.tls_started_with is None, "startTLS twice"
        self.tls_started_with = context_factory
        self.written_before_tls = self.value()
        alsoProvides(self, ISSLTransport)


class FakeTLS:
    """Stands for a ServerTLS; the in-memory tests never handshake."""


def stls_session(peer: Any = REMOTE, tls: Any = None, transport: Any = None,
                 settings: SessionSettings | None = None) -> Session:
    store = MemoryStore()
    store.add_message("alice", MESSAGE)
    portal, _ = make_portal(store)
    clock = Clock()
    factory = POP3ServerFactory(portal, settings, clock, tls=FakeTLS() if tls is None else tls)
    protocol = factory.buildProtocol(None)
    transport = TLSStringTransport(peer) if transport is None else transport
    protocol.makeConnection(transport)
    session = Session(protocol, transport, clock)
    session.take()
    return session


def capa(session: Session) -> list[bytes]:
    reply = session.send(b"CAPA\r\n")
    assert reply.startswith(b"+OK Capability list follows\r\n"), reply
    return reply.split(b"\r\n")[1:-2]


def test_capa_offers_stls_until_tls_is_on() -> None:
    session = stls_session()
    assert capa(session) == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE",
                             b"PIPELINING", b"STLS", b"SASL CRAM-MD5", b"UTF8",
                             b"IMPLEMENTATION popgate"]
    assert session.send(b"STLS\r\n") == b"+OK Begin TLS negotiation now.\r\n"
    assert isinstance(session.transport.tls_started_with, FakeTLS)
    # Now secure: USER and the plaintext mechanisms, no STLS.
    assert capa(session) == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE",
                             b"PIPELINING", b"USER", b"SASL PLAIN LOGIN CRAM-MD5", b"UTF8",
                             b"IMPLEMENTATION popgate"]
    session.login()


def test_ok_is_written_before_tls_starts() -> None:
    session = stls_session()
    session.send(b"STLS\r\n")
    assert session.transport.written_before_tls == b"+OK Begin TLS negotiation now.\r\n"


def test_commands_in_the_stls_packet_are_discarded() -> None:
    """CVE-2011-0411: lines after STLS in the same packet came in clear."""
    session = stls_session(peer=LOOPBACK_PEER)
    reply = session.send(b"STLS\r\nCAPA\r\nUSER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
    assert reply == b"+OK Begin TLS negotiation now.\r\n"
    assert session.protocol.state == "AUTHORIZATION"
    assert session.protocol._buffer == b""
    # Over TLS: nothing of the above happened (PASS has no USER).
    assert session.send(b"PASS secret\r\n") == b"-ERR No username given.\r\n"
    assert not session.transport.disconnecting


def test_a_partial_line_after_stls_is_discarded() -> None:
    session = stls_session()
    assert session.send(b"STLS\r\nCA") == b"+OK Begin TLS negotiation now.\r\n"
    # "CA" + "PA" must not join into CAPA.
    assert session.send(b"PA\r\n") == b"-ERR Unknown command.\r\n"


def test_stls_pipelined_behind_a_slow_login_discards_the_rest() -> None:
    session = stls_session(peer=LOOPBACK_PEER)
    reply = session.send(b"USER alice\r\nPASS wrong\r\nSTLS\r\nCAPA\r\nQUIT\r\n")
    assert reply == b"+OK\r\n"
    session.clock.advance(1)
    assert session.take() == (b"-ERR [AUTH] Authentication failed.\r\n"
                              b"+OK Begin TLS negotiation now.\r\n")
    assert not session.transport.disconnecting


def test_user_given_before_stls_is_forgotten() -> None:
    session = stls_session(peer=LOOPBACK_PEER)
    assert session.send(b"USER alice\r\n") == b"+OK\r\n"
    assert session.send(b"UTF8\r\n") == b"+OK UTF8 enabled.\r\n"
    session.send(b"STLS\r\n")
    assert not session.protocol.utf8
    assert session.send(b"PASS secret\r\n") == b"-ERR No username given.\r\n"
    session.login()


def test_stls_twice() -> None:
    session = stls_session()
    session.send(b"STLS\r\n")
    assert session.send(b"STLS\r\n") == b"-ERR TLS is already active.\r\n"


def test_stls_after_login_is_unknown() -> None:
    session = stls_session()
    session.send(b"STLS\r\n")
    session.login()
    assert session.send(b"STLS\r\n") == b"-ERR Unknown command.\r\n"


def test_stls_without_a_certificate() -> None:
    store = MemoryStore()
    portal, _ = make_portal(store)
    protocol = POP3ServerFactory(portal, None, Clock()).buildProtocol(None)
    transport = TLSStringTransport()
    protocol.makeConnection(transport)
    session = Session(protocol, transport, Clock())
    session.take()
    assert b"STLS" not in capa(session)
    assert session.send(b"STLS\r\n") == b"-ERR TLS support isn't enabled.\r\n"
    assert transport.tls_started_with is None


def test_stls_on_a_transport_that_cannot_start_tls() -> None:
    session = stls_session(transport=StringTransport(peerAddress=REMOTE))
    assert b"STLS" not in capa(session)
    assert session.send(b"STLS\r\n") == b"-ERR TLS support isn't enabled.\r\n"


def test_implicit_tls_session_is_secure() -> None:
    """A POP3S session: its transport is already an ISSLTransport."""
    transport = TLSStringTransport()
    alsoProvides(transport, ISSLTransport)
    session = stls_session(transport=transport)
    caps = capa(session)
    assert b"STLS" not in caps and b"USER" in caps
    assert session.send(b"STLS\r\n") == b"-ERR TLS is already active.\r\n"
    session.login()


# -- loading certificates


def test_load_a_certificate_chain(pki: PKI) -> None:
    tls = ServerTLS(str(pki.cert), str(pki.key))
    options = tls.getContext().set_options(0)  # adds nothing, returns the options
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_NO_RENEGOTIATION
    assert options & SSL.OP_NO_TLSv1_1 and options & SSL.OP_NO_TLSv1
    assert tls.expires is not None


@pytest.mark.parametrize("make, message", [
    (lambda p, d: (str(d / "missing.pem"), str(p.key)), "cannot read certificate"),
    (lambda p, d: (str(p.cert), str(d / "missing.pem")), "cannot read key"),
    (lambda p, d: (str(d / "garbage.pem"), str(p.key)), "no PEM certificate in"),
    (lambda p, d: (str(p.cert), str(d / "garbage.pem")), "no usable PEM private key"),
    (lambda p, d: (str(p.key), str(p.key)), "no PEM certificate in"),
    (lambda p, d: (str(p.cert), str(p.other_key)), "does not match the certificate"),
    (lambda p, d: (str(p.cert), str(write_encrypted_key(d / "encrypted.pem"))), "encrypted"),
    (lambda p, d: (str(d), str(p.key)), "cannot read certificate"),
])
def test_unusable_certificate_or_key(pki: PKI, tmp_path: Path, make: Any, message: str) -> None:
    (tmp_path / "garbage.pem").write_text("not a PEM file\n")
    cert, key = make(pki, tmp_path)
    with pytest.raises(TLSConfigError) as e:
        ServerTLS(cert, key)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


# -- real sockets, listeners in this process


@implementer(ICredentialsChecker)
class PasswordsOnly:
    """A user store that can check passwords only (like htpasswd): no
    APOP, no CRAM-MD5."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def requestAvatarId(self, credentials: Any) -> Any:
        return self.wrapped.requestAvatarId(credentials)


class Listeners:
    """popgate's POP3 (STLS) and POP3S listeners on loopback, in the
    reactor thread, with alice/secret and one message."""

    def __init__(self, cert: Path, key: Path, settings: SessionSettings | None = None,
                 secrets_checkable: bool = True) -> None:
        self.cert, self.key = cert, key
        self.secrets_checkable = secrets_checkable
        self.settings = settings or SessionSettings(auth_failure_delay=0, hostname="localhost")
        self.ports: list[Any] = []

    def __enter__(self) -> "Listeners":
        reactor_thread.run(self._start)
        return self

    def _start(self) -> None:
        from twisted.internet import reactor

        store = MemoryStore()
        store.add_message("alice", MESSAGE)
        checker: Any = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        if not self.secrets_checkable:
            checker = PasswordsOnly(checker)
        portal = Portal(MaildropRealm(store), [checker])
        self.tls = ServerTLS(str(self.cert), str(self.key))
        factory = POP3ServerFactory(portal, self.settings, reactor, tls=self.tls)
        plain = reactor.listenTCP(0, factory, interface="127.0.0.1")
        secure = reactor.listenTCP(0, TLSMemoryBIOFactory(self.tls, False, factory),
                                   interface="127.0.0.1")
        self.ports = [plain, secure]
        self.port, self.tls_port = plain.getHost().port, secure.getHost().port

    def __exit__(self, *exc: object) -> None:
        for port in self.ports:
            reactor_thread.run(port.stopListening)


@pytest.fixture
def listeners(pki: PKI) -> Iterator[Listeners]:
    with Listeners(pki.cert, pki.key) as server:
        yield server


def client_context(pki: PKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def pop3s(listeners: Listeners, context: ssl.SSLContext) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", listeners.tls_port, context=context, timeout=10)


def peer_cn(client: poplib.POP3) -> str:
    der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    return common_name(der)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_with_aead_ciphers(pki: PKI, listeners: Listeners,
                                         version: ssl.TLSVersion) -> None:
    context = client_context(pki)
    context.minimum_version = context.maximum_version = version
    client = pop3s(listeners, context)
    sock = client.sock  # type: ignore[attr-defined]
    assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert sock.compression() is None
    name = sock.cipher()[0]
    assert "GCM" in name or "CHACHA20" in name
    client.user("alice")
    client.pass_("secret")
    assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MESSAGE.replace(b"\r\n.dot", b"\r\n.dot")
    client.quit()


def test_tls_11_is_refused(pki: PKI, listeners: Listeners) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca))
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # The client is willing; the server answers with a protocol_version alert.
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        pop3s(listeners, context)


def test_tls_12_cbc_ciphers_are_refused(pki: PKI, listeners: Listeners) -> None:
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises(ssl.SSLError):
        pop3s(listeners, context)


def test_server_cipher_list_is_aead_only() -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_cipher_list(CIPHERS)
    names = [c for c in SSL.Connection(context, None).get_cipher_list() if not c.startswith("TLS_")]
    assert names and all("GCM" in n or "CHACHA20" in n for n in names)
    assert all(n.startswith("ECDHE-") for n in names)


def _blocking(sock: socket.socket, call: Any) -> Any:
    """Run a pyOpenSSL call on a socket with a timeout, waiting for input."""
    while True:
        try:
            return call()
        except SSL.WantReadError:
            readable, _, _ = select.select([sock], [], [], 10)
            if not readable:
                raise TimeoutError("no answer from the server") from None


def test_renegotiation_is_refused(pki: PKI, listeners: Listeners) -> None:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(str(pki.ca))
    sock = socket.create_connection(("127.0.0.1", listeners.tls_port), timeout=10)
    sock.setblocking(False)
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    _blocking(sock, connection.do_handshake)
    assert _blocking(sock, lambda: connection.recv(100)).startswith(b"+OK")
    assert connection.renegotiate()
    with pytest.raises(SSL.Error) as e:
        _blocking(sock, connection.do_handshake)
        _blocking(sock, lambda: connection.recv(100))
    assert "no renegotiation" in str(e.value)  # the server's no_renegotiation alert
    sock.close()


def test_clients_verify_the_chain_against_the_root(pki: PKI, listeners: Listeners) -> None:
    """The certificate file carries the intermediate; clients know only the root."""
    client = pop3s(listeners, client_context(pki))
    assert peer_cn(client) == "localhost"
    client.quit()
    with pytest.raises(ssl.SSLCertVerificationError):
        pop3s(listeners, ssl.create_default_context())  # the system CAs do not know it


def test_poplib_stls_and_capa(pki: PKI, listeners: Listeners) -> None:
    client = poplib.POP3("127.0.0.1", listeners.port, timeout=10)
    assert "STLS" in client.capa()
    client.stls(client_context(pki))
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps
    assert caps["SASL"] == ["PLAIN", "LOGIN", "CRAM-MD5"]
    client.user("alice")
    client.pass_("secret")
    assert client.stat()[0] == 1
    client.quit()




def test_injection_after_stls_over_a_real_socket(pki: PKI, listeners: Listeners) -> None:
    """'STLS' and 'CAPA' in one packet: the CAPA is never answered, neither in
    clear nor over TLS."""
    sock = socket.create_connection(("127.0.0.1", listeners.port), timeout=10)
    assert read_line(sock).startswith(b"+OK")
    sock.sendall(b"STLS\r\nCAPA\r\n")
    assert read_line(sock) == b"+OK Begin TLS negotiation now.\r\n"
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(100, socket.MSG_PEEK)  # nothing more in clear
    sock.settimeout(10)
    tls = client_context(pki).wrap_socket(sock, server_hostname="localhost")
    tls.sendall(b"QUIT\r\n")
    received = b""
    while chunk := tls.recv(1000):
        received += chunk
    assert received == b"+OK Logging out.\r\n"
    tls.close()


def test_reload_serves_the_new_certificate_and_keeps_sessions(pki: PKI, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.cert, live / "fullchain.pem")
    shutil.copy(pki.key, live / "privkey.pem")
    with Listeners(live / "fullchain.pem", live / "privkey.pem") as server:
        old = pop3s(server, client_context(pki))
        old.user("alice")
        old.pass_("secret")
        assert peer_cn(old) == "localhost"
        shutil.copy(pki.other_cert, live / "fullchain.pem")
        shutil.copy(pki.other_key, live / "privkey.pem")
        assert reactor_thread.run(server.tls.reload) is True
        new = pop3s(server, client_context(pki))
        assert peer_cn(new) == "localhost (renewed)"
        starttls = poplib.POP3("127.0.0.1", server.port, timeout=10)
        starttls.stls(client_context(pki))
        assert peer_cn(starttls) == "localhost (renewed)"
        # The session opened before the reload goes on.
        assert old.stat()[0] == 1
        assert old.retr(1)[0].startswith(b"+OK")
        old.quit()
        # A broken renewal keeps the certificate in use.
        (live / "fullchain.pem").write_text("half-written\n")
        assert reactor_thread.run(server.tls.reload) is False
        again = pop3s(server, client_context(pki))
        assert peer_cn(again) == "localhost (renewed)"
        for client in (new, starttls, again):
            client.quit()


def test_plaintext_policy_over_real_sockets(pki: PKI) -> None:
    """Loopback made untrusted (the test hook): USER is refused in clear,
    accepted after STLS; over POP3S at once."""
    settings = SessionSettings(auth_failure_delay=0, trusted_networks=())
    with Listeners(pki.cert, pki.key, settings, secrets_checkable=False) as server:
        client = poplib.POP3("127.0.0.1", server.port, timeout=10)
        caps = client.capa()
        assert "USER" not in caps and "STLS" in caps and "SASL" not in caps
        with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
            client.user("alice")
        client.stls(client_context(pki))
        client.user("alice")
        client.pass_("secret")
        client.quit()
        secure = pop3s(server, client_context(pki))
        secure.user("alice")
        secure.pass_("secret")
        secure.quit()

        curl = need_program("curl", "curl")
        base = ["-sS", "--max-time", "20", "--cacert", str(pki.ca)]
        refused = subprocess.run([curl, *base, f"pop3://alice:secret@localhost:{server.port}/1"],
                                 capture_output=True, timeout=60)
        assert refused.returncode != 0 and b"hello" not in refused.stdout
        fetched = subprocess.run([curl, *base, "--ssl-reqd",
                                  f"pop3://alice:secret@localhost:{server.port}/1"],
                                 capture_output=True, timeout=60)
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout == MESSAGE


# -- options and service


def base_args(tmp_path: Path) -> list[str]:
    return ["--store", "memory:", "--auth", "memory:alice:secret"]


def parse(args: list[str]) -> tap.Options:
    options = tap.Options()
    options.parseOptions(args)
    return options


def test_options_build_pop3s_listeners_and_the_reload_service(pki: PKI, tmp_path: Path) -> None:
    options = parse(base_args(tmp_path) + [
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--pop3s", "tcp:0:interface=127.0.0.1", "--pop3s", "tcp6:0:interface=\\:\\:1"])
    assert options["pop3"] == []  # no default tcp:110 when POP3S is asked for
    assert isinstance(options["tls_object"], ServerTLS)
    from twisted.internet import reactor

    top = build_service(options, reactor)
    names = [s.name for s in top]
    assert names == ["hangup", "pop3s tcp:0:interface=127.0.0.1", "pop3s tcp6:0:interface=\\:\\:1"]
    assert top.getServiceNamed("hangup").hangup().startswith("reloaded TLS certificate")


def test_without_tls_options_there_is_no_tls(tmp_path: Path) -> None:
    options = parse(base_args(tmp_path))
    assert options["tls_object"] is None
    assert options["pop3"] == ["tcp:110"]
    from twisted.internet import reactor

    top = build_service(options, reactor)
    assert [s.name for s in top] == ["hangup", "pop3 tcp:110"]
    assert top.getServiceNamed("hangup").hangup() == (
        "nothing to reload (no TLS certificate configured)")


@pytest.mark.parametrize("extra, message", [
    (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "KEY"], "--tls-cert and --tls-key go together"),
    (["--pop3s", "tcp:995"], "--pop3s needs --tls-cert and --tls-key"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "KEY"],
     "--tls-cert/--tls-key: cannot read certificate /nonexistent/cert.pem"),
    (["--tls-cert", "CERT", "--tls-key", "OTHERKEY"], "does not match"),
])
def test_tls_option_errors(pki: PKI, tmp_path: Path, extra: list[str], message: str) -> None:
    swap = {"CERT": str(pki.cert), "KEY": str(pki.key), "OTHERKEY": str(pki.other_key)}
    with pytest.raises(usage.UsageError) as e:
        parse(base_args(tmp_path) + [swap.get(a, a) for a in extra])
    assert message in str(e.value)


def test_allow_plaintext_auth_option_and_config(pki: PKI, tmp_path: Path) -> None:
    from popgate.service import session_settings

    assert not session_settings(parse(base_args(tmp_path))).allow_plaintext_auth
    options = parse(base_args(tmp_path) + ["--allow-plaintext-auth"])
    assert session_settings(options).allow_plaintext_auth
    config = tmp_path / "popgate.toml"
    config.write_text(f"""
[popgate]
tls_cert = "{pki.cert}"
tls_key = "{pki.key}"
pop3s = ["tcp:0:interface=127.0.0.1"]
allow_plaintext_auth = true
""")
    options = parse(base_args(tmp_path) + ["--config", str(config)])
    assert session_settings(options).allow_plaintext_auth
    assert options["pop3s"] == ["tcp:0:interface=127.0.0.1"] and options["pop3"] == []
    assert options["tls_object"].cert_path == str(pki.cert)
    # The command line wins over the file.
    options = parse(base_args(tmp_path) + ["--config", str(config), "--pop3s", "tcp:1995"])
    assert options["pop3s"] == ["tcp:1995"]


def test_the_hangup_reload_keeps_a_broken_pair_out(pki: PKI, tmp_path: Path) -> None:
    """SIGHUP (popgate.hangup) reloads through reload_on_hangup: a new
    pair is used; a broken one is refused in one line and the old stays."""
    from popgate.hangup import ReloadFailed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    tls = ServerTLS(str(cert), str(key))
    reload, description = reload_on_hangup(tls)
    assert description.startswith(f"TLS certificate {cert} (expires ")
    before = tls.getContext()
    shutil.copy(pki.other_cert, cert)
    shutil.copy(pki.other_key, key)
    assert reload().startswith(f"reloaded TLS certificate {cert} (expires ")
    renewed = tls.getContext()
    assert renewed is not before
    key.write_text("not a key")
    with pytest.raises(ReloadFailed) as e:
        reload()
    assert str(e.value) == ("TLS certificate not reloaded, keeping the old one: "
                            f"no usable PEM private key in {key}")
    assert tls.getContext() is renewed


def test_haproxy_client_address_decides_and_stls_works_behind_it(pki: PKI) -> None:
    """Behind a PROXY-protocol listener the real client's address counts:
    a remote client is refused plaintext, then STLS (through the wrapper)
    makes the session secure.  All traffic stays on loopback."""
    from twisted.internet import endpoints

    def listen() -> Any:
        from twisted.internet import reactor

        store = MemoryStore()
        store.add_message("alice", MESSAGE)
        portal = Portal(MaildropRealm(store),
                        [PasswordsOnly(InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"))])
        factory = POP3ServerFactory(portal, SessionSettings(auth_failure_delay=0), reactor,
                                    tls=ServerTLS(str(pki.cert), str(pki.key)))
        endpoint = endpoints.serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1")
        return endpoint.listen(factory)

    port = reactor_thread.run(listen)
    try:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n")
        assert read_line(sock).startswith(b"+OK")
        sock.sendall(b"USER alice\r\n")
        assert read_line(sock) == (b"-ERR [AUTH] Plaintext authentication disallowed on "
                                   b"non-secure (SSL/TLS) connections.\r\n")
        sock.sendall(b"STLS\r\n")
        assert read_line(sock) == b"+OK Begin TLS negotiation now.\r\n"
        tls = client_context(pki).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        received = b""
        while chunk := tls.recv(1000):
            received += chunk
        assert received == (b"+OK\r\n+OK Logged in.\r\n+OK 1 %d\r\n+OK Logging out.\r\n"
                            % len(MESSAGE))
        tls.close()
    finally:
        reactor_thread.run(port.stopListening)


def test_server_tls_provides_the_connection_creator_interface(pki: PKI) -> None:
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from zope.interface.verify import verifyObject

    tls = ServerTLS(str(pki.cert), str(pki.key))
    assert verifyObject(IOpenSSLServerConnectionCreator, tls)
    assert isinstance(tls.serverConnectionForTLS(None), SSL.Connection)
