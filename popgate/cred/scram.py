"""
SCRAM keys (RFC 5802, RFC 7677) as Dovecot stores them, and the checks
made with them.

C{doveadm pw -s SCRAM-SHA-256} writes
C{{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey} (base64), and so does
L{make_keys}.  The keys are all a server needs for a SCRAM login, and the
password cannot be recovered from them (it can be guessed: they cost what
C{iterations} rounds of PBKDF2 cost, no more).  They also check a password
sent in clear (USER/PASS, PLAIN): derive, compare.

The keys are derived from the password after SASLprep (RFC 4013), as RFC
5802 asks and clients do, by the C{scramp} library.  C{doveadm} does not
prepare the password; the two differ only for passwords with non-ASCII
spaces and the like, and a password sent in clear is checked both ways.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISMS",
    "ScramKeys",
    "SALT_SECRET_ENV",
    "check_proof",
    "fake_keys",
    "make_keys",
    "mechanism_of",
    "parse_keys",
    "salt_secret",
    "server_signature",
    "verify_password",
]

#: The SCRAM mechanisms popgate verifies (IANA names), and their hash.
MECHANISMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
#: What doveadm writes, and RFC 7677's minimum for SCRAM-SHA-256.
DEFAULT_ITERATIONS = 4096
#: More rounds than anyone stores: a corrupt value cannot stall a check.
MAX_ITERATIONS = 10_000_000
#: doveadm's salt length.
SALT_BYTES = 16


@dataclass(frozen=True, repr=False)
class ScramKeys:
    """One user's keys for one mechanism (no password, nothing to log)."""

    mechanism: str
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return f"ScramKeys({self.mechanism}, {self.iterations} iterations)"

    @property
    def digest(self) -> str:
        return MECHANISMS[self.mechanism]

    def to_text(self) -> str:
        """The C{{SCRAM-...}} form, as doveadm writes it."""
        fields = (self.salt, self.stored_key, self.server_key)
        encoded = ",".join(base64.b64encode(f).decode("ascii") for f in fields)
        return f"{{{self.mechanism}}}{self.iterations},{encoded}"


def mechanism_of(stored: str, default_scheme: str | None = None) -> str | None:
    """The SCRAM mechanism whose keys C{stored} holds, by its prefix (or
    C{default_scheme} for a bare value), else C{None}; cheap, checks nothing."""
    if stored.startswith("{"):
        name, sep, _ = stored[1:].partition("}")
        if not sep:
            return None
    elif default_scheme is not None:
        name = default_scheme
    else:
        return None
    name = name.upper()
    return name if name in MECHANISMS else None


def parse_keys(stored: str, default_scheme: str | None = None) -> ScramKeys | None:
    """
    The keys in C{stored} (C{{SCRAM-SHA-256}4096,salt,StoredKey,ServerKey},
    or the bare value when C{default_scheme} names a SCRAM scheme), or
    C{None}: another scheme, or a malformed value (which no login can use).
    """
    mechanism = mechanism_of(stored, default_scheme)
    if mechanism is None:
        return None
    value = stored.partition("}")[2] if stored.startswith("{") else stored
    return decode_keys(mechanism, value)


def decode_keys(mechanism: str, value: str) -> ScramKeys | None:
    """C{iterations,salt,StoredKey,ServerKey} for C{mechanism}, or C{None}."""
    parts = value.strip().split(",")
    if len(parts) != 4 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    iterations = int(parts[0])
    try:
        salt, stored_key, server_key = (binascii.a2b_base64(p, strict_mode=True)
                                        for p in parts[1:])
    except (binascii.Error, ValueError):
        return None
    size = hashlib.new(MECHANISMS[mechanism]).digest_size
    if (not 1 <= iterations <= MAX_ITERATIONS or not salt
            or len(stored_key) != size or len(server_key) != size):
        return None
    return ScramKeys(mechanism, iterations, salt, stored_key, server_key)


def make_keys(password: str, mechanism: str = "SCRAM-SHA-256",
              iterations: int | None = None, salt: bytes | None = None) -> ScramKeys:
    """
    Derive the keys of C{password} (SASLprep'ed) with a fresh 16-byte salt.

    @raise ValueError: an unknown mechanism, fewer than 4096 iterations, or
        a password SASLprep refuses (control characters): RFC clients could
        never log in with it.
    """
    # Imported here: scramp takes 70 ms to import, and only writing keys
    # (and checking a non-ASCII password) needs it.
    from scramp import ScramException, ScramMechanism

    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown SCRAM mechanism {mechanism[:40]!r}")
    count = DEFAULT_ITERATIONS if iterations is None else iterations
    if not DEFAULT_ITERATIONS <= count <= MAX_ITERATIONS:
        raise ValueError(f"{mechanism}: give {DEFAULT_ITERATIONS} to {MAX_ITERATIONS} iterations")
    try:
        salt, stored_key, server_key, count = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=count, salt=salt or os.urandom(SALT_BYTES))
    except ScramException as e:
        reason = str(e).split(":")[0]
        raise ValueError(f"{mechanism}: SASLprep refuses the password: {reason}") from None
    return ScramKeys(mechanism, count, salt, stored_key, server_key)


def _derive(keys: ScramKeys, password: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of C{password} taken as it is."""
    salted = hashlib.pbkdf2_hmac(keys.digest, password, keys.salt, keys.iterations)
    client_key = hmac.new(salted, b"Client Key", keys.digest).digest()
    stored_key = hashlib.new(keys.digest, client_key).digest()
    return stored_key, hmac.new(salted, b"Server Key", keys.digest).digest()


def _derive_prepared(keys: ScramKeys, password: bytes) -> tuple[bytes, bytes] | None:
    """(StoredKey, ServerKey) of C{password} after SASLprep, or C{None}
    when SASLprep leaves it as it is (printable ASCII) or refuses it."""
    if password.isascii() and all(32 <= c < 127 for c in password):
        return None
    from scramp import ScramException, ScramMechanism

    try:
        _, stored_key, server_key, _ = ScramMechanism(keys.mechanism).make_auth_info(
            password.decode("utf-8"), iteration_count=keys.iterations, salt=keys.salt)
    except (UnicodeDecodeError, ScramException):
        return None
    return stored_key, server_key


def verify_password(password: bytes, keys: ScramKeys) -> bool:
    """
    Whether C{password}, sent in clear, is the one C{keys} were made from:
    as RFC 5802 prepares it, or as it is (what doveadm hashes).  Slow on
    purpose (PBKDF2): call it in a thread.
    """
    derived = [_derive(keys, password), _derive_prepared(keys, password)]
    ok = False
    for pair in derived:
        if pair is not None:
            ok |= hmac.compare_digest(pair[0], keys.stored_key) & \
                hmac.compare_digest(pair[1], keys.server_key)
    return ok


def check_proof(keys: ScramKeys, auth_message: bytes, proof: bytes) -> bool:
    """
    RFC 5802 section 3: the client's proof is C{ClientKey XOR
    HMAC(StoredKey, AuthMessage)}; it is right if the C{ClientKey} it
    yields hashes to C{StoredKey}.  Constant-time; one hash and one HMAC.
    """
    signature = hmac.new(keys.stored_key, auth_message, keys.digest).digest()
    if len(proof) != len(signature):
        return False
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    return hmac.compare_digest(hashlib.new(keys.digest, client_key).digest(), keys.stored_key)


def server_signature(keys: ScramKeys, auth_message: bytes) -> bytes:
    """What proves the server holds C{ServerKey} (the C{v=} of the last message)."""
    return hmac.new(keys.server_key, auth_message, keys.digest).digest()


#: Where C{--workers} children (and, if the admin sets it, every node of a
#: cluster) find the secret behind the made-up salts: L{fake_salt}.
SALT_SECRET_ENV = "POPGATE_SCRAM_SALT_SECRET"
_salt_secret: list[str] = []


def salt_secret() -> str:
    """
    This process's secret for L{fake_salt}: C{$POPGATE_SCRAM_SALT_SECRET},
    else a random one made once (which the worker pool hands its workers).
    """
    if not _salt_secret:
        _salt_secret.append(os.environ.get(SALT_SECRET_ENV) or os.urandom(32).hex())
    return _salt_secret[0]


def fake_salt(mechanism: str, username: bytes) -> bytes:
    """
    The salt shown for a user with no keys for C{mechanism} (or no such
    user), so the server's first message does not tell them from a real
    one (RFC 5802 section 9): the same for every attempt at the same name,
    unpredictable without the secret.
    """
    key = salt_secret().encode("utf-8")
    message = mechanism.encode("ascii") + b"\0" + username
    return hmac.new(key, message, hashlib.sha256).digest()[:SALT_BYTES]


def fake_keys(mechanism: str, username: bytes) -> ScramKeys:
    """Keys no proof can match, with L{fake_salt} and the default iterations."""
    size = hashlib.new(MECHANISMS[mechanism]).digest_size
    return ScramKeys(mechanism, DEFAULT_ITERATIONS, fake_salt(mechanism, username),
                     os.urandom(size), os.urandom(size))
