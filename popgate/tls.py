"""
The server's TLS configuration: one certificate (with its chain) and key,
TLS 1.2 and 1.3 only, AEAD ciphers, no compression, no renegotiation.

L{ServerTLS} hands every new connection the context loaded last, so a
reload (SIGHUP, L{popgate.reload}) puts a renewed certificate in force for
new sessions while open ones keep the context they started with.  Every
context it hands out takes the process's session ticket keys
(L{popgate.tls_tickets}: the same in all C{--workers} processes), so a
reload or another worker still resumes a client's session.
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from popgate.tls_tickets import TicketKeys

# TLS 1.2: ECDHE key exchange with AEAD ciphers only (Mozilla's
# "intermediate" list minus DHE, which would need DH parameters).  TLS 1.3
# suites are OpenSSL's defaults, all of them AEAD.
CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
_OPTIONS = (SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1)


#: Which sessions a context may resume: popgate's, in any process.
SESSION_ID_CONTEXT = b"popgate"


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the text names the file and
    the problem in one line."""


def _readable(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def _expiry(pem: bytes) -> datetime.datetime | None:
    """When the first certificate in C{pem} expires (for the log only)."""
    try:
        return x509.load_pem_x509_certificates(pem)[0].not_valid_after_utc
    except Exception:
        return None


def _private_key(data: bytes, key_path: str) -> Any:
    # Loaded here rather than by OpenSSL, which would prompt on the
    # terminal for the passphrase of an encrypted key.
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"the key in {key_path} is encrypted; give an unencrypted "
                             "key readable only by popgate") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"no usable PEM private key in {key_path}") from None


def load_context(cert_path: str, key_path: str) -> tuple[SSL.Context, datetime.datetime | None]:
    """
    Build a server context from PEM files: C{cert_path} holds the server
    certificate followed by any intermediates (certbot's C{fullchain.pem}),
    C{key_path} its unencrypted private key (C{privkey.pem}).

    @raise TLSConfigError: naming the file and what is wrong with it.
    """
    pem = _readable(cert_path, "certificate")
    key = _private_key(_readable(key_path, "key"), key_path)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_OPTIONS)
    context.set_cipher_list(CIPHERS)
    # The same in every process, so a TLS 1.2 session (or ticket) is
    # accepted by any of them.
    context.set_session_id(SESSION_ID_CONTEXT)
    # An idle session gives its 16 KiB read and write buffers back (most
    # POP3 sessions are idle most of the time).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        context.use_certificate_chain_file(cert_path.encode())
    except SSL.Error:
        raise TLSConfigError(f"no PEM certificate in {cert_path}") from None
    try:
        context.use_privatekey(key)
        context.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(f"the key in {key_path} does not match the certificate "
                             f"in {cert_path}") from None
    return context, _expiry(pem)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of every listener: given to C{TLSMemoryBIOFactory} (POP3S)
    and to C{transport.startTLS} (STLS).  Each connection gets the context
    loaded last.

    @ivar cert_path: the certificate chain file.
    @ivar key_path: the private key file.
    @ivar tickets: the session ticket keys its contexts take, once
        L{share_tickets} was called.
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._context, self.expires = load_context(cert_path, key_path)
        self.tickets: TicketKeys | None = None

    def share_tickets(self, tickets: TicketKeys) -> None:
        """Give this context and every later one C{tickets}' keys, now and
        whenever they change (reactor thread)."""
        self.tickets = tickets
        tickets.watch(self._install_tickets)
        self._install_tickets()

    def _install_tickets(self) -> None:
        if self.tickets is not None:
            self.tickets.install(self._context)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def use(self, other: ServerTLS) -> None:
        """
        Hand new connections C{other}'s certificate and key from now on: a
        reload loads them into a new L{ServerTLS} off the reactor thread
        (a broken pair fails there, and this one stays as it was), then
        swaps them in here, where the POP3S listeners hold this object.
        """
        self.cert_path, self.key_path = other.cert_path, other.key_path
        self._context, self.expires = other._context, other.expires
        self._install_tickets()

    def describe(self) -> str:
        """C{/etc/popgate/fullchain.pem (expires 2027-02-24 10:00:00+00:00)}."""
        return f"{self.cert_path} (expires {self.expires})"
