"""
Password schemes: check a password against a stored hash as Dovecot,
OpenLDAP and Apache write them.

Stored values are either C{{SCHEME}value} (Dovecot, RFC 2307 / OpenLDAP,
htpasswd's C{{SHA}}) or bare crypt(3) strings (C{$2y$...}, C{$6$...}).  As in
Dovecot, a scheme name may carry an encoding suffix (C{{SHA256.HEX}}), and
fixed-length digests are accepted in hex or base64.

The KDFs come from bcrypt, argon2-cffi and libpass (SCRAM keys:
L{popgate.cred.scram}); only the plain and salted digests are small local
helpers (libpass caps salts at 16 bytes,
Dovecot does not).  Every comparison is constant-time.  Checking is
synchronous and slow on purpose: use L{verify_in_thread} from the reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

import bcrypt
from argon2 import DEFAULT_TIME_COST, PasswordHasher, Type
from argon2.exceptions import VerificationError
from passlib import hash as passlib_hash
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

from popgate.cred import scram

__all__ = [
    "DUMMY_HASH",
    "HASH_SCHEMES",
    "UnknownScheme",
    "dummy_verify",
    "dummy_verify_in_thread",
    "hash_password",
    "plaintext_secret",
    "verify_in_thread",
    "verify_password",
]

#: A bcrypt hash (cost 10) of a random password nobody knows: checked for
#: unknown users so that they cost as much time as known ones.
DUMMY_HASH = "$2y$10$H3xlqqGXEOBE/OG/Z.u6JukO2F6iS4hYmTKaCG6wcOCMzjIiVo1tO"

_BCRYPT_MAX_BYTES = 72
#: The schemes that keep the password in clear (what APOP and CRAM-MD5 need).
PLAIN_NAMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})
_PLAIN_NAMES = PLAIN_NAMES


class UnknownScheme(ValueError):
    """
    The stored value names a scheme popgate cannot check.  A configuration
    error for that one user, to be logged, never a crash.
    """


# -- verifiers: (password, raw stored bytes) -> bool -------------------------


def _bcrypt(password: bytes, raw: bytes) -> bool:
    # bcrypt 5 raises for >72 bytes; older versions silently truncated.
    if not raw.startswith((b"$2a$", b"$2b$", b"$2y$")) or len(password) > _BCRYPT_MAX_BYTES:
        return False
    return bcrypt.checkpw(password, raw)


_ARGON2 = PasswordHasher()


def _argon2(*prefixes: bytes) -> Callable[[bytes, bytes], bool]:
    def verify(password: bytes, raw: bytes) -> bool:
        if not raw.startswith(prefixes):
            return False
        try:
            return _ARGON2.verify(raw, password)
        except VerificationError:  # mismatch or a corrupt hash
            return False

    return verify


def _libpass(name: str) -> Callable[[bytes, bytes], bool]:
    def verify(password: bytes, raw: bytes) -> bool:
        return bool(getattr(passlib_hash, name).verify(password, raw.decode("ascii")))

    return verify


# Self-identifying crypt(3) formats, tried in this order.
_CRYPT_FORMATS: tuple[tuple[tuple[bytes, ...], Callable[[bytes, bytes], bool]], ...] = (
    ((b"$2a$", b"$2b$", b"$2y$"), _bcrypt),
    ((b"$argon2id$", b"$argon2i$", b"$argon2d$"), _argon2(b"$argon2")),
    ((b"$6$",), _libpass("sha512_crypt")),
    ((b"$5$",), _libpass("sha256_crypt")),
    ((b"$1$",), _libpass("md5_crypt")),
    ((b"$apr1$",), _libpass("apr_md5_crypt")),
)


def _crypt_format(raw: bytes) -> Callable[[bytes, bytes], bool] | None:
    for prefixes, verify in _CRYPT_FORMATS:
        if raw.startswith(prefixes):
            return verify
    return None


def _any_crypt(password: bytes, raw: bytes) -> bool:
    """Dovecot's and OpenLDAP's C{{CRYPT}}: whatever crypt(3) would do."""
    verify = _crypt_format(raw)
    if verify is not None:
        return verify(password, raw)
    if raw.startswith(b"$"):
        ident = raw.split(b"$")[1][:8].decode("ascii", "replace")
        raise UnknownScheme(f"unsupported crypt format ${ident}$")
    if raw.startswith(b"_"):
        return _libpass("bsdi_crypt")(password, raw)
    return _libpass("des_crypt")(password, raw)


def _digest(algorithm: str) -> Callable[[bytes, bytes], bool]:
    def verify(password: bytes, raw: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(algorithm, password).digest(), raw)

    return verify


def _salted(algorithm: str) -> Callable[[bytes, bytes], bool]:
    """RFC 2307-style C{base64(digest(password + salt) + salt)}, any salt length."""
    size = hashlib.new(algorithm).digest_size

    def verify(password: bytes, raw: bytes) -> bool:
        if len(raw) <= size:
            return False
        digest = hashlib.new(algorithm, password + raw[size:]).digest()
        return hmac.compare_digest(digest, raw[:size])

    return verify


def _scram(mechanism: str) -> Callable[[bytes, bytes], bool]:
    """Dovecot's C{{SCRAM-SHA-256}}: the password must give these keys."""
    def verify(password: bytes, raw: bytes) -> bool:
        keys = scram.decode_keys(mechanism, raw.decode("ascii"))
        return keys is not None and scram.verify_password(password, keys)

    return verify


def _plain(password: bytes, raw: bytes) -> bool:
    return hmac.compare_digest(password, raw)


def _dovecot_md5(password: bytes, raw: bytes) -> bool:
    """Dovecot's C{{MD5}} is MD5-CRYPT, or a plain MD5 digest (OpenLDAP's)."""
    if raw.startswith(b"$1$"):
        return _libpass("md5_crypt")(password, raw)
    return _check(_SCHEMES["PLAIN-MD5"], None, password, raw.decode("ascii"))


@dataclass(frozen=True)
class _Scheme:
    verify: Callable[[bytes, bytes], bool]
    encoding: str = "NONE"  # how the value is stored: NONE, BASE64 or HEX
    raw_len: int = 0  # a fixed digest length: hex or base64 is then guessed


_SCHEMES: dict[str, _Scheme] = {
    "CRYPT": _Scheme(_any_crypt),
    "DES-CRYPT": _Scheme(_libpass("des_crypt")),
    "MD5-CRYPT": _Scheme(_libpass("md5_crypt")),
    "SHA256-CRYPT": _Scheme(_libpass("sha256_crypt")),
    "SHA512-CRYPT": _Scheme(_libpass("sha512_crypt")),
    "BLF-CRYPT": _Scheme(_bcrypt),
    "ARGON2I": _Scheme(_argon2(b"$argon2i$")),
    "ARGON2ID": _Scheme(_argon2(b"$argon2id$")),
    "SHA": _Scheme(_digest("sha1"), "BASE64", 20),
    "SHA1": _Scheme(_digest("sha1"), "BASE64", 20),
    "SHA256": _Scheme(_digest("sha256"), "BASE64", 32),
    "SHA512": _Scheme(_digest("sha512"), "BASE64", 64),
    "SSHA": _Scheme(_salted("sha1"), "BASE64"),
    "SSHA256": _Scheme(_salted("sha256"), "BASE64"),
    "SSHA512": _Scheme(_salted("sha512"), "BASE64"),
    "SMD5": _Scheme(_salted("md5"), "BASE64"),
    "PLAIN-MD5": _Scheme(_digest("md5"), "HEX", 16),
    "LDAP-MD5": _Scheme(_digest("md5"), "BASE64", 16),
    "MD5": _Scheme(_dovecot_md5),
    **{name: _Scheme(_scram(name)) for name in scram.MECHANISMS},
    **{name: _Scheme(_plain) for name in _PLAIN_NAMES},
}


# -- parsing and decoding -----------------------------------------------------


def _parse(stored: str, default_scheme: str | None) -> tuple[_Scheme, str, str | None, str]:
    """Split C{stored} into (scheme, scheme name, explicit encoding, value)."""
    name: str | None = None
    value = stored
    if stored.startswith("{") and "}" in stored:
        name, _, value = stored[1:].partition("}")
    elif _crypt_format(stored.encode("utf-8", "replace")) is not None:
        name = "CRYPT"
    elif default_scheme is not None:
        name = default_scheme
    elif stored.startswith("$"):
        name = "CRYPT"  # an unsupported crypt format: say which
    if not name:
        raise UnknownScheme("no {SCHEME} prefix and no default scheme")
    base, dot, encoding = name.upper().partition(".")
    scheme = _SCHEMES.get(base)
    if scheme is None:
        raise UnknownScheme(f"unknown password scheme {base[:40]!r}")
    if dot and encoding not in ("HEX", "B64", "BASE64"):
        raise UnknownScheme(f"unknown encoding {encoding[:20]!r} for scheme {base!r}")
    return scheme, base, (encoding if dot else None), value


def _decode(scheme: _Scheme, encoding: str | None, value: str) -> bytes:
    """The raw stored bytes, decoding hex/base64 the way Dovecot does."""
    if encoding is None:
        encoding = scheme.encoding
        if scheme.raw_len:  # a fixed length tells hex from base64
            encoding = "BASE64"
            if len(value) == 2 * scheme.raw_len:
                try:
                    return bytes.fromhex(value)
                except ValueError:
                    pass  # a base64 string that happens to fit
    if encoding == "NONE":
        return value.encode("utf-8")
    if encoding == "HEX":
        return bytes.fromhex(value)
    value = value.strip()
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)


def _check(scheme: _Scheme, encoding: str | None, password: bytes, value: str) -> bool:
    raw = _decode(scheme, encoding, value)
    if scheme.raw_len and len(raw) != scheme.raw_len:
        return False
    return scheme.verify(password, raw)


# -- public API ---------------------------------------------------------------


def verify_password(password: bytes, stored: str, *, default_scheme: str | None = None) -> bool:
    """
    Whether C{password} matches C{stored}.

    @param default_scheme: the scheme of a value with neither a C{{SCHEME}}
        prefix nor a crypt(3) C{$id$} (Dovecot's passwd-file says C{CRYPT}).
    @raise UnknownScheme: the scheme is not supported.  A malformed value of
        a known scheme is C{False}, never an exception.
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    scheme, _, encoding, value = _parse(stored, default_scheme)
    if not value:
        return False  # an empty field never means "any password"
    try:
        return _check(scheme, encoding, password, value)
    except UnknownScheme:
        raise
    except (ValueError, TypeError, VerificationError):
        return False


def plaintext_secret(stored: str, *, default_scheme: str | None = None) -> bytes | None:
    """
    The password itself when C{stored} keeps it in clear (C{{PLAIN}},
    C{{CLEARTEXT}}), as APOP and CRAM-MD5 need it; otherwise C{None}.
    """
    try:
        scheme, base, encoding, value = _parse(stored, default_scheme)
        if base not in _PLAIN_NAMES:
            return None
        return _decode(scheme, encoding, value)
    except ValueError:
        return None


#: Every scheme L{hash_password} writes (and L{verify_password} checks),
#: with what C{popgate pw -l} says of it.
HASH_SCHEMES: dict[str, str] = {
    "BLF-CRYPT": "bcrypt ($2y$), cost 10: the default, for htpasswd files too",
    "ARGON2ID": "Argon2id: memory-hard",
    "ARGON2I": "Argon2i",
    "SHA512-CRYPT": "SHA-512 crypt ($6$), 5000 rounds",
    "SHA256-CRYPT": "SHA-256 crypt ($5$), 5000 rounds",
    "CRYPT": "crypt(3): written as bcrypt ($2y$)",
    "MD5-CRYPT": "MD5 crypt ($1$): weak, for old systems only",
    "MD5": "Dovecot's MD5, which is MD5 crypt ($1$): weak",
    "DES-CRYPT": "traditional crypt: weak, only the first 8 characters count",
    "SSHA512": "salted SHA-512 (OpenLDAP): fast, so weak against guessing",
    "SSHA256": "salted SHA-256: fast, so weak against guessing",
    "SSHA": "salted SHA-1 (OpenLDAP's default): fast, so weak against guessing",
    "SMD5": "salted MD5: weak",
    "SHA512": "SHA-512, unsalted: weak",
    "SHA256": "SHA-256, unsalted: weak",
    "SHA": "SHA-1, unsalted (htpasswd -s): weak",
    "SHA1": "the same as SHA",
    "PLAIN-MD5": "MD5 in hex, unsalted: weak",
    "LDAP-MD5": "MD5 in base64, unsalted: weak",
    "SCRAM-SHA-256": "SCRAM keys (RFC 7677), 4096 iterations: AUTH SCRAM-SHA-256 needs them",
    "SCRAM-SHA-1": "SCRAM keys (RFC 5802), 4096 iterations: AUTH SCRAM-SHA-1 needs them",
    "PLAIN": "the password in clear: APOP and CRAM-MD5 need it",
    "CLEAR": "the same as PLAIN",
    "CLEARTEXT": "the same as PLAIN",
}
# Unsalted digests: (hashlib name, how the value is written).
_DIGESTS = {"SHA": ("sha1", "BASE64"), "SHA1": ("sha1", "BASE64"),
            "SHA256": ("sha256", "BASE64"), "SHA512": ("sha512", "BASE64"),
            "PLAIN-MD5": ("md5", "HEX"), "LDAP-MD5": ("md5", "BASE64")}


def hash_password(
    password: str | bytes,
    scheme: str = "BLF-CRYPT",
    *,
    rounds: int | None = None,
    prefix: bool = True,
) -> str:
    """
    Hash C{password} for a user file, the way C{doveadm pw} does.

    @param scheme: any of L{HASH_SCHEMES}: every scheme popgate checks.
    @param rounds: the cost: bcrypt's log2 cost (default 10), SHA-crypt
        and MD5-crypt rounds (default 5000), Argon2 time cost, SCRAM
        iterations (default and least 4096).
    @param prefix: add the C{{SCHEME}} prefix.  Crypt formats identify
        themselves, so C{prefix=False} gives the bare form htpasswd files
        need; other schemes always get their prefix.
    @raise UnknownScheme: for other schemes.
    @raise ValueError: a bcrypt password longer than 72 bytes, a SCRAM
        password SASLprep refuses.
    """
    secret = password.encode("utf-8") if isinstance(password, str) else password
    name = scheme.upper()
    if name in ("BLF-CRYPT", "CRYPT"):  # CRYPT: crypt(3)'s best format here
        if len(secret) > _BCRYPT_MAX_BYTES:
            raise ValueError("bcrypt passwords are limited to 72 bytes")
        hashed = bcrypt.hashpw(secret, bcrypt.gensalt(rounds or 10)).decode("ascii")
        hashed = "$2y$" + hashed[4:]  # same algorithm; the name PHP and Dovecot write
    elif name in ("SHA512-CRYPT", "SHA256-CRYPT"):
        handler = getattr(passlib_hash, name.lower().replace("-", "_"))
        hashed = handler.using(rounds=rounds or 5000).hash(secret)
    elif name in ("ARGON2ID", "ARGON2I"):
        kind = Type.ID if name == "ARGON2ID" else Type.I
        hasher = PasswordHasher(time_cost=rounds or DEFAULT_TIME_COST, type=kind)
        hashed = hasher.hash(secret)
    elif name in ("SSHA", "SSHA256", "SSHA512"):
        algorithm = {"SSHA": "sha1", "SSHA256": "sha256", "SSHA512": "sha512"}[name]
        salt = os.urandom(8)
        digest = hashlib.new(algorithm, secret + salt).digest()
        return f"{{{name}}}" + base64.b64encode(digest + salt).decode("ascii")
    elif name in ("MD5-CRYPT", "MD5"):  # Dovecot's MD5 is MD5-crypt
        hashed = passlib_hash.md5_crypt.hash(secret)
    elif name == "DES-CRYPT":
        hashed = passlib_hash.des_crypt.hash(secret)
    elif name in _DIGESTS:
        algorithm, encoding = _DIGESTS[name]
        digest = hashlib.new(algorithm, secret).digest()
        text = digest.hex() if encoding == "HEX" else base64.b64encode(digest).decode("ascii")
        return f"{{{name}}}{text}"
    elif name == "SMD5":
        salt = os.urandom(8)
        digest = hashlib.md5(secret + salt).digest()
        return "{SMD5}" + base64.b64encode(digest + salt).decode("ascii")
    elif name in scram.MECHANISMS:
        return scram.make_keys(secret.decode("utf-8"), name, rounds).to_text()
    elif name in _PLAIN_NAMES:
        return f"{{{name}}}" + secret.decode("utf-8")
    else:
        raise UnknownScheme(f"cannot hash with scheme {scheme[:40]!r}")
    return f"{{{name}}}{hashed}" if prefix else hashed


_CHEAP = frozenset({"SHA", "SHA1", "SHA256", "SHA512", "SSHA", "SSHA256", "SSHA512", "SMD5",
                    "PLAIN-MD5", "LDAP-MD5", *_PLAIN_NAMES})


def is_cheap(stored: str, *, default_scheme: str | None = None) -> bool:
    """True for schemes that cost microseconds to check (no KDF)."""
    try:
        return _parse(stored, default_scheme)[1] in _CHEAP
    except UnknownScheme:
        return False


def verify_in_thread(
    reactor: IReactorThreads,
    password: bytes,
    stored: str,
    *,
    default_scheme: str | None = None,
) -> Deferred[bool]:
    """
    L{verify_password} in the reactor's thread pool: KDFs never block the
    reactor.  Plain digests and clear text take microseconds, less than the
    hop to a thread and back, so they are checked inline.
    """
    if is_cheap(stored, default_scheme=default_scheme):
        return maybeDeferred(verify_password, password, stored, default_scheme=default_scheme)
    return deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        verify_password,
        password,
        stored,
        default_scheme=default_scheme,
    )


def dummy_verify(
    password: bytes, stored: str = DUMMY_HASH, *, default_scheme: str | None = None
) -> bool:
    """
    Spend the time a real check would, then say no: used for unknown users
    so that timing does not tell which users exist.  C{stored} can be a
    representative hash from the same user store, to match its cost.
    """
    try:
        verify_password(password, stored, default_scheme=default_scheme)
    except ValueError:
        pass
    return False


def dummy_verify_in_thread(
    reactor: IReactorThreads,
    password: bytes,
    stored: str = DUMMY_HASH,
    *,
    default_scheme: str | None = None,
) -> Deferred[bool]:
    """
    L{dummy_verify} where L{verify_in_thread} would check C{stored}: inline
    for a cheap scheme, else in the thread pool, so it costs what a real
    check of that value does, thread hop included.
    """
    if is_cheap(stored, default_scheme=default_scheme):
        return maybeDeferred(dummy_verify, password, stored, default_scheme=default_scheme)
    return deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        dummy_verify,
        password,
        stored,
        default_scheme=default_scheme,
    )
