"""
TLS in memory: STLS (RFC 2595), including the plaintext-injection guard;
the certificate loader and its errors; the options and the service they
build.  The same over real sockets: L{tests.test_tls_listeners}.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from zope.interface import alsoProvides

from popgate import tap
from popgate.build import build_server, build_tls, session_settings
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.settings import SessionSettings
from popgate.reload import install
from popgate.stores.memory import MemoryStore
from popgate.tls import ServerTLS, TLSConfigError, load_context
from tests.tlscerts import PKI, make_pki, write_encrypted_key

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
    context, expires = load_context(str(pki.cert), str(pki.key))
    options = context.set_options(0)  # adds nothing, returns the options
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_NO_RENEGOTIATION
    assert options & SSL.OP_NO_TLSv1_1 and options & SSL.OP_NO_TLSv1
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # idle sessions hold no buffers
    assert expires is not None
    assert ServerTLS(str(pki.cert), str(pki.key)).expires == expires


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
    assert options.config.pop3 == ()  # no default tcp:110 when POP3S is asked for
    reactor = MemoryReactorClock()
    server = build_server(options.config, reactor)
    assert isinstance(server.tls, ServerTLS)
    names = [s.name for s in server]
    assert names == ["hangup", "pop3s tcp:0:interface=127.0.0.1", "pop3s tcp6:0:interface=\\:\\:1",
                     "tls-tickets"]
    reload = install(server, tap.parse_config, reactor).reload()
    assert reload.result.certificate.startswith(f"{pki.cert}, expires ")


def test_without_tls_options_there_is_no_tls(tmp_path: Path) -> None:
    options = parse(base_args(tmp_path))
    assert options.config.pop3 == ("tcp:110",)
    reactor = MemoryReactorClock()
    server = build_server(options.config, reactor)
    assert server.tls is None and server.pop3.tls is None
    assert [s.name for s in server] == ["hangup", "pop3 tcp:110"]
    reload = install(server, tap.parse_config, reactor).reload()
    assert reload.result.result == "ok" and reload.result.certificate == ""


@pytest.mark.parametrize("extra, message", [
    (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "KEY"], "--tls-cert and --tls-key go together"),
    (["--pop3s", "tcp:995"], "--pop3s needs --tls-cert and --tls-key"),
])
def test_tls_option_errors(pki: PKI, tmp_path: Path, extra: list[str], message: str) -> None:
    swap = {"CERT": str(pki.cert), "KEY": str(pki.key), "OTHERKEY": str(pki.other_key)}
    with pytest.raises(usage.UsageError) as e:
        parse(base_args(tmp_path) + [swap.get(a, a) for a in extra])
    assert str(e.value) == message


@pytest.mark.parametrize("extra, message", [
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "KEY"],
     "--tls-cert/--tls-key: cannot read certificate /nonexistent/cert.pem"),
    (["--tls-cert", "CERT", "--tls-key", "OTHERKEY"], "does not match"),
])
def test_unusable_tls_files_stop_the_build(pki: PKI, tmp_path: Path, extra: list[str],
                                           message: str) -> None:
    swap = {"CERT": str(pki.cert), "KEY": str(pki.key), "OTHERKEY": str(pki.other_key)}
    options = parse(base_args(tmp_path) + [swap.get(a, a) for a in extra])
    with pytest.raises(usage.UsageError) as e:
        build_tls(options.config)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_allow_plaintext_auth_option_and_config(pki: PKI, tmp_path: Path) -> None:
    def allowed(options: tap.Options) -> bool:
        return session_settings(options.config, "mx.test").allow_plaintext_auth

    assert not allowed(parse(base_args(tmp_path)))
    assert allowed(parse(base_args(tmp_path) + ["--allow-plaintext-auth"]))
    config = tmp_path / "popgate.toml"
    config.write_text(f"""
[popgate]
tls_cert = "{pki.cert}"
tls_key = "{pki.key}"
pop3s = ["tcp:0:interface=127.0.0.1"]
allow_plaintext_auth = true
""")
    options = parse(base_args(tmp_path) + ["--config", str(config)])
    assert allowed(options)
    assert options.config.pop3s == ("tcp:0:interface=127.0.0.1",) and options.config.pop3 == ()
    assert options.config.tls_cert == str(pki.cert)
    # The command line wins over the file.
    options = parse(base_args(tmp_path) + ["--config", str(config), "--pop3s", "tcp:1995"])
    assert options.config.pop3s == ("tcp:1995",)


def test_a_reload_swaps_a_new_pair_in_and_a_broken_one_never_gets_in(
        pki: PKI, tmp_path: Path) -> None:
    """A reload (popgate.reload) loads the new pair into a new ServerTLS,
    off the reactor thread, and swaps it into the running one, which the
    POP3S listeners hold; a broken pair fails to load and the old stays."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    tls = ServerTLS(str(cert), str(key))
    assert tls.describe().startswith(f"{cert} (expires ")
    before = tls.serverConnectionForTLS(None).get_context()
    shutil.copy(pki.other_cert, cert)
    shutil.copy(pki.other_key, key)
    tls.use(ServerTLS(str(cert), str(key)))
    renewed = tls.serverConnectionForTLS(None).get_context()
    assert renewed is not before
    key.write_text("not a key")
    with pytest.raises(TLSConfigError) as e:
        tls.use(ServerTLS(str(cert), str(key)))
    assert str(e.value) == f"no usable PEM private key in {key}"
    assert tls.serverConnectionForTLS(None).get_context() is renewed


def test_server_tls_provides_the_connection_creator_interface(pki: PKI) -> None:
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from zope.interface.verify import verifyObject

    tls = ServerTLS(str(pki.cert), str(pki.key))
    assert verifyObject(IOpenSSLServerConnectionCreator, tls)
    assert isinstance(tls.serverConnectionForTLS(None), SSL.Connection)
