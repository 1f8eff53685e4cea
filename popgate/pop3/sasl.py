"""
SASL mechanisms for POP3 AUTH (RFC 5034): PLAIN (RFC 4616), LOGIN,
CRAM-MD5 (RFC 2195), and SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 7677, RFC 5802:
L{popgate.pop3.scram}), OAUTHBEARER (RFC 7628) and XOAUTH2
(L{popgate.pop3.oauth}).

A mechanism is a small state machine that turns the client's decoded
responses into C{twisted.cred} credentials, so SASL logins go through the
same portal, checkers, failure delay and login penalty as USER/PASS.  The
protocol does the base64 and the line handling; nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.credentials import UsernamePassword

from popgate.pop3.apop import DigestCredentials
from popgate.pop3.oauth import OAuthBearerMechanism, XOAuth2Mechanism
from popgate.pop3.sasl_steps import Challenge, SASLError
from popgate.pop3.scram import ScramMechanism

__all__ = ["MECHANISMS", "Challenge", "MalformedResponse", "MechanismInfo", "SASLError", "decode",
           "encode", "find", "usable"]


class MalformedResponse(Exception):
    """A response that is not base64: the exchange ends with C{-ERR}."""


def decode(line: bytes) -> bytes:
    """
    A client response: strict base64, where C{=} (RFC 5034's initial
    response) and an empty line both mean "empty".

    @raise MalformedResponse: not base64.
    """
    if line in (b"", b"="):
        return b""
    if len(line) % 4:
        raise MalformedResponse()
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedResponse() from None


def encode(data: bytes) -> bytes:
    return base64.b64encode(data)


class CramMD5Credentials(DigestCredentials):
    """
    CRAM-MD5 (RFC 2195): HMAC-MD5 of our challenge keyed by the password.
    Twisted's own class needs a bytes password and compares in variable
    time; this one takes str or bytes.
    """

    def expected(self, secret: bytes) -> str:
        return hmac.new(secret, self.challenge, hashlib.md5).hexdigest()


class PlainMechanism:
    """
    RFC 4616: C{[authzid] NUL authcid NUL passwd}, in the initial response
    or after an empty challenge (K-9 sends it in two steps).  Acting as
    another user is not supported, so an authzid other than the authcid is
    refused.
    """

    name = b"PLAIN"

    def step(self, response: bytes | None) -> Challenge | Any:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLError("PLAIN needs authzid NUL authcid NUL passwd")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLError("PLAIN: empty user name or password")
        if authzid and authzid != authcid:
            raise SASLError("PLAIN: authorization identity differs")
        return UsernamePassword(authcid, password)


class LoginMechanism:
    """
    The LOGIN mechanism Outlook and many others use: the user name and the
    password each answer a challenge ("Username:", "Password:").  An
    initial response, if any, is the user name.
    """

    name = b"LOGIN"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def step(self, response: bytes | None) -> Challenge | Any:
        if response is None:
            return Challenge(b"Username:")
        if self._username is None:
            if not response:
                raise SASLError("LOGIN: empty user name")
            self._username = response
            return Challenge(b"Password:")
        return UsernamePassword(self._username, response)


class CramMD5Mechanism:
    """CRAM-MD5 (RFC 2195): server first, one response C{user SP hexdigest}."""

    name = b"CRAM-MD5"

    def __init__(self, challenge: bytes) -> None:
        self.challenge = challenge
        self._sent = False

    def step(self, response: bytes | None) -> Challenge | Any:
        if not self._sent:
            if response is not None:
                raise SASLError("CRAM-MD5 takes no initial response")
            self._sent = True
            return Challenge(self.challenge)
        if response is None:
            raise SASLError("CRAM-MD5: no response")
        username, _, digest = response.rpartition(b" ")
        if not username or len(digest) != 32 or not _is_hex(digest):
            raise SASLError("CRAM-MD5 needs user SP hexdigest")
        return CramMD5Credentials(self.challenge, username, digest)


def _is_hex(data: bytes) -> bool:
    try:
        bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def challenge_string(hostname: str, now: float) -> bytes:
    """A unique C{<random.time@host>} challenge (RFC 2195's msg-id form)."""
    return b"<%d.%d@%s>" % (secrets.randbits(62), int(now), hostname.encode("idna"))


@dataclass(frozen=True)
class MechanismInfo:
    """
    @ivar plaintext: the password itself crosses the wire, so the mechanism
        is offered only where USER/PASS is.
    @ivar needs_secret: the user store must check a proof against the
        plaintext secret (C{IUsernameHashedPassword}), as for APOP.
    @ivar make: builds a fresh mechanism from the session's host name and
        current time.
    @ivar needs_scram: the user store must hold SCRAM keys for it
        (L{popgate.interfaces.IScramLookup}).
    @ivar needs_oauth: a bearer token: offered only over TLS and with a
        token validator (C{--oauth}).
    """

    name: bytes
    plaintext: bool
    needs_secret: bool
    make: Callable[[str, float], Any]
    needs_scram: bool = False
    needs_oauth: bool = False


MECHANISMS: tuple[MechanismInfo, ...] = (
    MechanismInfo(b"PLAIN", True, False, lambda host, now: PlainMechanism()),
    MechanismInfo(b"LOGIN", True, False, lambda host, now: LoginMechanism()),
    MechanismInfo(b"CRAM-MD5", False, True,
                  lambda host, now: CramMD5Mechanism(challenge_string(host, now))),
    MechanismInfo(b"SCRAM-SHA-256", False, False,
                  lambda host, now: ScramMechanism("SCRAM-SHA-256"), needs_scram=True),
    MechanismInfo(b"SCRAM-SHA-1", False, False,
                  lambda host, now: ScramMechanism("SCRAM-SHA-1"), needs_scram=True),
    MechanismInfo(b"OAUTHBEARER", False, False,
                  lambda host, now: OAuthBearerMechanism(), needs_oauth=True),
    MechanismInfo(b"XOAUTH2", False, False,
                  lambda host, now: XOAuth2Mechanism(), needs_oauth=True),
)


def find(name: bytes) -> MechanismInfo | None:
    """The mechanism called C{name} (case-insensitive), if popgate has it."""
    name = name.upper()
    for info in MECHANISMS:
        if info.name == name:
            return info
    return None


def usable(plaintext_allowed: bool, secrets_checkable: bool,
           scram: frozenset[str] = frozenset(), oauth: bool = False) -> list[MechanismInfo]:
    """The mechanisms this connection may use, in order of listing;
    C{scram}: the SCRAM mechanisms the user stores can verify; C{oauth}:
    the session is TLS and a token validator is configured."""
    return [info for info in MECHANISMS
            if (plaintext_allowed or not info.plaintext)
            and (secrets_checkable or not info.needs_secret)
            and (not info.needs_scram or info.name.decode("ascii") in scram)
            and (oauth or not info.needs_oauth)]
