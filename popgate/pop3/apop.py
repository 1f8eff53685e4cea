"""
APOP (RFC 1939 section 7): the client proves it knows the secret by sending
MD5(greeting timestamp + secret).

Twisted's own APOPCredentials can never succeed on Python 3 (it hashes
str); this one works on bytes, and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.cred.credentials import IUsernameHashedPassword
from zope.interface import implementer


@implementer(IUsernameHashedPassword)
class DigestCredentials:
    """
    A user name and a hex digest of (challenge, secret) that the client
    sent; the checker hands over the stored plaintext secret and the
    digest is recomputed and compared in constant time.  Subclasses say
    how the digest is made.
    """

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def expected(self, secret: bytes) -> str:
        raise NotImplementedError

    def checkPassword(self, password: bytes | str) -> bool:
        if isinstance(password, str):
            password = password.encode("utf-8")
        return hmac.compare_digest(self.expected(password).encode("ascii"), self.digest)


class APOPCredentials(DigestCredentials):
    """APOP: MD5 of the greeting's timestamp followed by the secret."""

    def expected(self, secret: bytes) -> str:
        return hashlib.md5(self.challenge + secret).hexdigest()
