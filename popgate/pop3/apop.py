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
class APOPCredentials:
    """Credentials from one APOP command, checked against a plaintext secret."""

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def checkPassword(self, password: bytes | str) -> bool:
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hashlib.md5(self.challenge + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest)
