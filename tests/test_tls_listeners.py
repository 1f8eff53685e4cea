"""
TLS over real loopback sockets, against popgate listeners in this process
(the reactor thread): the TLS settings, the certificate chain, renegotiation,
STLS with poplib and a raw client, the certificate reload, the plaintext
policy (with curl), and STLS behind a PROXY-protocol listener.
"""

from __future__ import annotations

import poplib
import select
import shutil
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from zope.interface import implementer

from popgate.eager_writes import EagerServer, eager_writes
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.memory import MemoryStore
from popgate.tls import CIPHERS, ServerTLS, TLSConfigError
from popgate.tls_transport import PopgateTLSFactory
from tests import reactor_thread
from tests.pop3_oracle import RawClient
from tests.services import need_program
from tests.tlscerts import PKI, common_name, make_pki

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: over TLS\r\n\r\nhello\r\n.dot\r\n"
# Bigger than a 256 KiB chunk and not a multiple of a 16 KiB record, with
# lines that need dot-stuffing across chunk boundaries.
BIG = b"Subject: big\r\n\r\n" + b"".join(b".%06d line of the big one\r\n" % i for i in range(30011))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


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

    def __enter__(self) -> Listeners:
        reactor_thread.run(self._start)
        return self

    def _start(self) -> None:
        from twisted.internet import reactor

        store = MemoryStore()
        store.add_message("alice", MESSAGE)
        store.add_message("bob", BIG)
        store.add_message("bob", MESSAGE)
        checker: Any = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", bob=b"secret")
        if not self.secrets_checkable:
            checker = PasswordsOnly(checker)
        portal = Portal(MaildropRealm(store, reactor), [checker])
        self.tls = ServerTLS(str(self.cert), str(self.key))
        factory = POP3ServerFactory(portal, self.settings, reactor, tls=self.tls)
        # As build_server's listeners: eager writes (popgate.eager_writes).
        plain = eager_writes(reactor.listenTCP(0, factory, interface="127.0.0.1"))
        secure = eager_writes(reactor.listenTCP(0, PopgateTLSFactory(self.tls, False, factory),
                                                interface="127.0.0.1"))
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
    client = RawClient(listeners.port, timeout=10)
    assert client.greeting is not None and client.greeting.startswith(b"+OK")
    client.send(b"STLS\r\nCAPA\r\n")
    assert client.line() == b"+OK Begin TLS negotiation now."
    assert client.quiet_for(0.5)  # nothing more in clear
    client.starttls(client_context(pki))
    client.send(b"QUIT\r\n")
    assert client.until_eof() == b"+OK Logging out.\r\n"
    client.close()


def reload_tls(server: Listeners) -> bool:
    """What a reload (popgate.reload) does with the certificate: load the
    files again into a new ServerTLS, and swap it into the listeners' one
    only when it loaded; whether it did."""
    def swap() -> bool:
        try:
            server.tls.use(ServerTLS(str(server.cert), str(server.key)))
        except TLSConfigError:
            return False
        return True

    return reactor_thread.run(swap)


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
        assert reload_tls(server) is True
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
        assert reload_tls(server) is False
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


def test_haproxy_client_address_decides_and_stls_works_behind_it(pki: PKI) -> None:
    """Behind a PROXY-protocol listener the real client's address counts:
    a remote client is refused plaintext, then STLS (through the wrapper)
    makes the session secure.  All traffic stays on loopback."""
    def listen() -> Any:
        from twisted.internet import reactor

        store = MemoryStore()
        store.add_message("alice", MESSAGE)
        portal = Portal(MaildropRealm(store, reactor),
                        [PasswordsOnly(InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"))])
        factory = POP3ServerFactory(portal, SessionSettings(auth_failure_delay=0), reactor,
                                    tls=ServerTLS(str(pki.cert), str(pki.key)))
        endpoint = endpoints.serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1")
        return endpoint.listen(factory)

    port = reactor_thread.run(listen)
    try:
        client = RawClient(port.getHost().port, timeout=10,
                           preamble=b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n")
        assert client.greeting is not None and client.greeting.startswith(b"+OK")
        assert client.cmd(b"USER alice") == (b"-ERR [AUTH] Plaintext authentication disallowed on "
                                             b"non-secure (SSL/TLS) connections.")
        assert client.cmd(b"STLS") == b"+OK Begin TLS negotiation now."
        client.starttls(client_context(pki))
        client.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        assert client.until_eof() == (b"+OK\r\n+OK Logged in.\r\n+OK 1 %d\r\n+OK Logging out.\r\n"
                                      % len(MESSAGE))
        client.close()
    finally:
        reactor_thread.run(port.stopListening)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_big_and_small_retr_over_pop3s_arrive_whole(pki: PKI, listeners: Listeners,
                                                    version: ssl.TLSVersion) -> None:
    # PopgateTLSProtocol hands 256 KiB chunks to OpenSSL in one write and
    # gathers the small replies around them: every byte, in order.
    context = client_context(pki)
    context.minimum_version = context.maximum_version = version
    client = pop3s(listeners, context)
    client.user("bob")
    client.pass_("secret")
    for number, expected in ((1, BIG), (2, MESSAGE), (1, BIG)):
        _, lines, _ = client.retr(number)
        assert b"\r\n".join(lines) + b"\r\n" == expected
    assert client.stat() == (2, len(BIG) + len(MESSAGE))
    client.quit()


class WriteRounds(EagerServer):
    """An L{EagerServer} counting the times the reactor found it writable
    (Twisted's write round: registered for writing, then C{doWrite})."""

    rounds = 0

    def doWrite(self) -> Any:
        WriteRounds.rounds += 1
        return super().doWrite()


def session_write_rounds(listeners: Listeners, client: Any) -> tuple[int, int]:
    """The write rounds of a short session, then of a big RETR (bob's)."""
    for port in listeners.ports:
        port.transport = WriteRounds
    WriteRounds.rounds = 0
    session = client()
    session.user("alice")
    session.pass_("secret")
    session.stat()
    session.list()
    session.uidl()
    session.noop()
    session.quit()
    session.close()
    short = reactor_thread.run(lambda: WriteRounds.rounds)
    session = client()
    session.user("bob")
    session.pass_("secret")
    _, lines, _ = session.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == BIG
    session.quit()
    return short, reactor_thread.run(lambda: WriteRounds.rounds) - short


class STLSClient(poplib.POP3):
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, timeout=10)
        self.stls(context)


@pytest.mark.parametrize("kind", ["pop3", "pop3s", "stls"])
def test_a_sessions_replies_go_out_at_once_and_a_retr_is_paced(pki: PKI, listeners: Listeners,
                                                               kind: str) -> None:
    # Every reply of a session, the handshake's records and the close leave
    # without the reactor's write round (popgate.eager_writes: the output
    # gate registered for the whole session asks no pacing); a message
    # streamed by RETR is written through Twisted's buffer, whose limit
    # pauses it, so the other sessions get their turns.
    def client() -> poplib.POP3:
        if kind == "pop3s":
            return pop3s(listeners, client_context(pki))
        if kind == "stls":
            return STLSClient(listeners.port, client_context(pki))
        return poplib.POP3("127.0.0.1", listeners.port, timeout=10)
    short, retr = session_write_rounds(listeners, client)
    assert short == 0
    assert retr > 0
