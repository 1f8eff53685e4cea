"""
SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 7677, RFC 5802) for POP3 AUTH, checked
against the keys a user store holds (L{popgate.cred.scram}), never a
password.

The exchange is client-first, and the server needs the user's salt and
iteration count before it can answer::

  C: AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9...     n,,n=user,r=CNONCE
  S: + cj1...                                     r=CNONCE+SNONCE,s=SALT,i=4096
  C: Yz1iaXdzLHI9...                              c=biws,r=CNONCE+SNONCE,p=PROOF
  S: + dj1...                                     v=SERVER-SIGNATURE
  C: (an empty line)
  S: +OK Logged in.

So the first message yields L{KeysWanted}: the protocol asks the user
store (L{popgate.interfaces.IScramLookup}, off the reactor thread) and
hands the answer to L{ScramMechanism.keys_found}.  The last one yields
L{ScramCredentials}, which go through the portal like any other login
(penalty, limits, log): the user store looks the keys up again and checks
the proof, after the login penalty's wait, so the answer to a guess never
comes sooner than the penalty allows.  RFC 5034 has no "additional data
with success", so the server's signature is one more challenge, sent once
the portal has said yes, and answered by an empty line.

A user nobody has, or one with no keys for the mechanism, gets a salt made
up from the name (L{popgate.cred.scram.fake_salt}) and fails at the proof
with the same C{-ERR [AUTH]} as a wrong password.

Why not C{scramp}'s server (it can work from stored keys): it asks for the
keys with a synchronous callback in the middle of parsing the first
message, while popgate's user stores answer with a L{Deferred}; and it
checks the proof in the mechanism, before the login penalty, where
twisted.cred wants the user store to do it.  C{scramp} still derives the
keys (L{popgate.cred.scram.make_keys}).

Channel binding (the C{-PLUS} mechanisms) is not offered: a client that
asks for it (gs2 flag C{p}) fails, as RFC 5802 section 6 says; C{n} and
C{y} (the client could bind, but we offered no C{-PLUS}) are accepted.
Messages are bounded (L{MAX_MESSAGE}); anything malformed (bad attributes,
a wrong nonce, the reserved C{m=} extension) fails the login like a wrong
password, without a traceback and without being echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from dataclasses import dataclass

from zope.interface import implementer

from popgate.cred import scram
from popgate.cred.scram import ScramKeys
from popgate.interfaces import IScramCredentials
from popgate.pop3.sasl_steps import Challenge, SASLError

__all__ = ["MAX_MESSAGE", "KeysWanted", "ScramCredentials", "ScramMechanism"]

#: The longest client message taken, in octets (real ones are about 100).
MAX_MESSAGE = 2048

# RFC 5802 section 7: printable = %x21-2B / %x2D-7E (no comma).
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# attr-val = ALPHA "=" value; value = 1*value-char (no comma, no NUL).
_EXTENSION = re.compile(r"[A-Za-z]=[^,\x00]+")
_START, _ASKED, _LOOKING, _CHALLENGED, _DONE = range(5)


@dataclass(frozen=True)
class KeysWanted:
    """The protocol is to look up C{username}'s keys for C{mechanism}."""

    username: bytes
    mechanism: str


@implementer(IScramCredentials)
class ScramCredentials:
    """
    A SCRAM proof: C{check(keys)} says whether the client knows the
    password behind C{keys}, for the C{AuthMessage} of this exchange.
    """

    def __init__(self, mechanism: str, username: bytes, auth_message: bytes,
                 proof: bytes) -> None:
        self.mechanism = mechanism
        self.username = username
        self.auth_message = auth_message
        self.proof = proof

    def check(self, keys: ScramKeys) -> bool:
        return (keys.mechanism == self.mechanism
                and scram.check_proof(keys, self.auth_message, self.proof))


def _text(message: bytes) -> str:
    if len(message) > MAX_MESSAGE:
        raise SASLError("SCRAM: message too long")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("SCRAM: not UTF-8") from None
    if "\0" in text:
        raise SASLError("SCRAM: NUL in a message")
    return text


def _saslname(value: str) -> str:
    """RFC 5802's saslname: C{=2C} is a comma, C{=3D} an equals sign, no other C{=}."""
    if not value or re.search(r"=(?!2C|3D)", value):
        raise SASLError("SCRAM: malformed name")
    return value.replace("=2C", ",").replace("=3D", "=")


def _base64(value: str) -> bytes:
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SASLError("SCRAM: bad base64") from None


def _check_extensions(attributes: list[str]) -> None:
    """Extensions are ignored (RFC 5802 section 5.1), but must be well formed."""
    if not all(_EXTENSION.fullmatch(a) for a in attributes):
        raise SASLError("SCRAM: malformed attribute")


class ScramMechanism:
    """
    One SCRAM exchange (server side).

    @param mechanism: C{SCRAM-SHA-256} or C{SCRAM-SHA-1}.
    @param server_nonce: ours, random unless a test gives one.
    """

    def __init__(self, mechanism: str, server_nonce: str | None = None) -> None:
        self.mechanism = mechanism
        self.name = mechanism.encode("ascii")
        self._server_nonce = server_nonce or secrets.token_urlsafe(18)
        self._state = _START
        self._keys: ScramKeys | None = None
        self._gs2_header = ""
        self._bare = ""
        self._username = b""
        self._nonce = ""
        self._server_first = ""
        self._auth_message = b""

    @property
    def looked_up(self) -> bool:
        """Whether the user store was asked (the exchange cost a lookup)."""
        return self._state >= _LOOKING

    def step(self, response: bytes | None) -> Challenge | KeysWanted | ScramCredentials:
        if self._state == _START and response is None:
            self._state = _ASKED  # client-first: an empty challenge asks for it
            return Challenge(b"")
        if self._state in (_START, _ASKED) and response is not None:
            return self._client_first(response)
        if self._state == _CHALLENGED and response is not None:
            return self._client_final(response)
        raise SASLError("SCRAM: unexpected message")

    def keys_found(self, keys: ScramKeys | None) -> Challenge:
        """The user store's answer to L{KeysWanted}: the server-first message."""
        if self._state != _LOOKING:
            raise SASLError("SCRAM: no lookup pending")
        if keys is None or keys.mechanism != self.mechanism:
            keys = scram.fake_keys(self.mechanism, self._username)
        self._keys = keys
        self._nonce += self._server_nonce
        salt = base64.b64encode(keys.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={keys.iterations}"
        self._state = _CHALLENGED
        return Challenge(self._server_first.encode("ascii"))

    def success_data(self) -> bytes:
        """The server-final message (C{v=}), once the portal accepted the proof."""
        assert self._keys is not None and self._state == _DONE
        signature = scram.server_signature(self._keys, self._auth_message)
        return b"v=" + base64.b64encode(signature)

    # -- the client's messages

    def _client_first(self, message: bytes) -> KeysWanted:
        """C{gs2-header client-first-message-bare}, RFC 5802 section 7."""
        parts = _text(message).split(",", 2)
        if len(parts) != 3:
            raise SASLError("SCRAM: malformed gs2 header")
        flag, authzid, self._bare = parts
        if flag.startswith("p="):
            raise SASLError("SCRAM: channel binding is not supported")
        if flag not in ("n", "y") or (authzid and not authzid.startswith("a=")):
            raise SASLError("SCRAM: malformed gs2 header")
        self._gs2_header = f"{flag},{authzid},"
        attributes = self._bare.split(",")
        if attributes[0].startswith("m="):
            raise SASLError("SCRAM: extensions are not supported")
        if (len(attributes) < 2 or not attributes[0].startswith("n=")
                or not attributes[1].startswith("r=")):
            raise SASLError("SCRAM: malformed client-first message")
        username = _saslname(attributes[0][2:])
        if authzid and _saslname(authzid[2:]) != username:
            raise SASLError("SCRAM: authorization identity differs")
        self._nonce = attributes[1][2:]
        if not _NONCE.fullmatch(self._nonce):
            raise SASLError("SCRAM: malformed nonce")
        _check_extensions(attributes[2:])
        self._username = username.encode("utf-8")
        self._state = _LOOKING
        return KeysWanted(self._username, self.mechanism)

    def _client_final(self, message: bytes) -> ScramCredentials:
        """C{channel-binding,nonce[,extensions],proof}, RFC 5802 section 7."""
        without_proof, comma, proof = _text(message).rpartition(",")
        attributes = without_proof.split(",")
        if (not comma or not proof.startswith("p=") or len(attributes) < 2
                or not attributes[0].startswith("c=") or not attributes[1].startswith("r=")):
            raise SASLError("SCRAM: malformed client-final message")
        _check_extensions(attributes[2:])
        # Without channel binding, c= is the gs2 header itself.
        if not hmac.compare_digest(_base64(attributes[0][2:]), self._gs2_header.encode()):
            raise SASLError("SCRAM: channel binding differs")
        if not hmac.compare_digest(attributes[1][2:].encode(), self._nonce.encode()):
            raise SASLError("SCRAM: wrong nonce")
        self._auth_message = ",".join((self._bare, self._server_first,
                                       without_proof)).encode("utf-8")
        self._state = _DONE
        return ScramCredentials(self.mechanism, self._username, self._auth_message,
                                _base64(proof[2:]))

