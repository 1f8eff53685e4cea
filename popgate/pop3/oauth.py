"""
OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's) for POP3 AUTH: the client's
message becomes L{popgate.oauth.OAuthCredentials}, which the portal's
L{popgate.oauth.TokenChecker} checks like any login.

  C: AUTH OAUTHBEARER bixhPXVzZXJAZXhhbXBsZS5vcmcsAWF1dGg9QmVhcmVyIC4uLgEB
                                  n,a=user@example.org,^Aauth=Bearer TOKEN^A^A
  S: +OK Logged in.

A refused token gets RFC 7628's error as one more challenge (section
3.2.2: a JSON object, base64), which the client answers with C{AQ==}
(0x01) before the C{-ERR [AUTH]}; XOAUTH2 does the same with Google's
JSON, answered by an empty line.  Both are offered and accepted only over
TLS (the token is a password for as long as it lives), and only when a
validator is configured (C{--oauth}).  Messages are bounded
(L{MAX_MESSAGE}); a malformed one fails the login without being echoed.
"""

from __future__ import annotations

import json
import re

from popgate.oauth import OAuthCredentials
from popgate.pop3.sasl_steps import Challenge, SASLError

__all__ = ["MAX_MESSAGE", "OAuthBearerMechanism", "XOAuth2Mechanism", "error_challenge"]

#: The longest client message taken, in octets (JWTs of a few kilobytes).
MAX_MESSAGE = 16 * 1024

# RFC 7628 section 3.1: key = 1*(ALPHA), value = *(VCHAR / SP / HTAB / CR / LF),
# auth-value = "Bearer" 1*SP b64token (RFC 6750's b64token).
_KEY = re.compile(rb"[A-Za-z]+")
_VALUE = re.compile(rb"[\x21-\x7e \t\r\n]*")
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")


def _pairs(text: bytes) -> dict[bytes, bytes]:
    """C{key=value^A...^A^A} (the final ^A included) as a dict."""
    if not text.endswith(b"\x01\x01"):
        raise SASLError("OAuth: message not terminated")
    pairs: dict[bytes, bytes] = {}
    for pair in text[:-2].split(b"\x01"):
        key, eq, value = pair.partition(b"=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value) or key in pairs:
            raise SASLError("OAuth: malformed key/value pair")
        pairs[key] = value
    return pairs


def _token(pairs: dict[bytes, bytes]) -> bytes:
    match = _BEARER.fullmatch(pairs.get(b"auth", b""))
    if match is None:
        raise SASLError("OAuth: no Bearer token")
    return match.group(1)


def error_challenge(mechanism: bytes) -> bytes:
    """The JSON error a refused token gets (RFC 7628 section 3.2.2; for
    XOAUTH2, Google's), before the C{-ERR}."""
    status = "invalid_token" if mechanism == b"OAUTHBEARER" else "401"
    return json.dumps({"status": status, "schemes": "bearer"},
                      separators=(",", ":")).encode("ascii")


class _TokenMechanism:
    """Client-first: an empty challenge asks for the message if AUTH had none."""

    name = b""

    def __init__(self) -> None:
        self._asked = False

    def step(self, response: bytes | None) -> Challenge | OAuthCredentials:
        if response is None:
            if self._asked:
                raise SASLError("OAuth: no message")
            self._asked = True
            return Challenge(b"")
        if len(response) > MAX_MESSAGE:
            raise SASLError("OAuth: message too long")
        return self._parse(response)

    def _parse(self, message: bytes) -> OAuthCredentials:
        raise NotImplementedError

    def failure_data(self) -> bytes:
        """The error challenge of a refused token (L{error_challenge})."""
        return error_challenge(self.name)


def _saslname(value: bytes) -> bytes:
    """RFC 5801's saslname: C{=2C} is a comma, C{=3D} an equals sign."""
    if not value or re.search(rb"=(?!2C|3D)", value) or b"," in value:
        raise SASLError("OAuth: malformed authzid")
    return value.replace(b"=2C", b",").replace(b"=3D", b"=")


class OAuthBearerMechanism(_TokenMechanism):
    """RFC 7628: C{gs2-header ^A kvpairs ^A}, the user in the gs2 authzid."""

    name = b"OAUTHBEARER"

    def _parse(self, message: bytes) -> OAuthCredentials:
        # gs2-header = cbflag "," [authzid] ","; channel binding (p=) is not offered.
        flag, comma, rest = message.partition(b",")
        authzid, comma2, rest = rest.partition(b",")
        if not comma or not comma2 or flag not in (b"n", b"y"):
            raise SASLError("OAUTHBEARER: malformed gs2 header")
        if authzid and not authzid.startswith(b"a="):
            raise SASLError("OAUTHBEARER: malformed authzid")
        user = _saslname(authzid[2:]) if authzid else b""
        if not rest.startswith(b"\x01"):
            raise SASLError("OAUTHBEARER: malformed message")
        return OAuthCredentials(user, _token(_pairs(rest[1:])))


class XOAuth2Mechanism(_TokenMechanism):
    """Google's XOAUTH2: C{user=NAME^Aauth=Bearer TOKEN^A^A}."""

    name = b"XOAUTH2"

    def _parse(self, message: bytes) -> OAuthCredentials:
        pairs = _pairs(message)
        user = pairs.get(b"user", b"")
        if not user:
            raise SASLError("XOAUTH2: no user")
        return OAuthCredentials(user, _token(pairs))
