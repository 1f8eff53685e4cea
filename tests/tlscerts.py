"""
Throwaway certificates for the TLS tests, made fresh in a temporary
directory (no private key is ever committed): a root CA, an intermediate
CA, and server certificates for localhost / 127.0.0.1 / ::1 signed by the
intermediate.  The server's certificate file holds the chain (leaf, then
intermediate), as certbot's fullchain.pem does; clients trust the root only.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class PKI:
    """Paths of the PEM files written by L{make_pki}."""

    ca: Path  # the root to trust (clients: --cacert, sslcertfile, cafile)
    cert: Path  # server certificate + intermediate
    key: Path  # server key
    other_cert: Path  # a second server certificate (reload tests)
    other_key: Path
    directory: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "popgate tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool, days: int = 30) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(_name(issuer))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def make_pki(directory: Path) -> PKI:
    """Write a CA, an intermediate and two server certificates to C{directory}."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key, inter_key = _key(), _key()
    root = _cert("popgate test root CA", root_key, "popgate test root CA", root_key, ca=True)
    inter = _cert("popgate test intermediate CA", inter_key, "popgate test root CA", root_key,
                  ca=True)
    paths = {}
    for label, common_name in (("server", "localhost"), ("other", "localhost (renewed)")):
        key = _key()
        leaf = _cert(common_name, key, "popgate test intermediate CA", inter_key, ca=False)
        cert_path = directory / f"{label}-fullchain.pem"
        key_path = directory / f"{label}-privkey.pem"
        cert_path.write_bytes(_pem(leaf) + _pem(inter))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        paths[label] = (cert_path, key_path)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(_pem(root))
    return PKI(ca=ca_path, cert=paths["server"][0], key=paths["server"][1],
                   other_cert=paths["other"][0], other_key=paths["other"][1],
                   directory=directory)


def write_encrypted_key(path: Path) -> Path:
    """A passphrase-protected key, which popgate must refuse, not prompt for."""
    path.write_bytes(_key_pem(_key(), b"passphrase"))
    return path


def common_name(der: bytes) -> str:
    """The CN of a DER certificate (what a client saw)."""
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
