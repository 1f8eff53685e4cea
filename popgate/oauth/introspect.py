"""
The C{introspect:} token validator: asks the identity provider's RFC 7662
introspection endpoint, over HTTPS with Twisted's Agent, whether a token
is active and whose it is.

Answers are cached by the token's SHA-256 (never the token itself): an
active token for C{ttl} seconds but never past its C{exp}, an inactive one
for C{negative_ttl}.  An endpoint that does not answer in C{timeout}
seconds, or answers with an error, is a temporary failure (C{-ERR
[SYS/TEMP]}), not a wrong token, and is not cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet import defer
from zope.interface import implementer

from popgate import errors
from popgate.cred.args import ArgSpec
from popgate.interfaces import ITokenValidator
from popgate.oauth import InvalidToken
from popgate.oauth.http import HTTPClient, https_url

__all__ = ["ARGS", "IntrospectionValidator", "make_validator"]

MAX_TOKEN = 16 * 1024
#: Cached answers kept at most (the oldest go first).
MAX_CACHED = 10_000

ARGS = ArgSpec("introspect", {
    "url": "the https:// introspection endpoint (RFC 7662)",
    "client_id": "this server's client id at the identity provider",
    "client_secret_file": "a file holding its client secret (HTTP Basic authentication)",
    "user_field": "the answer's field holding the user name (default: username)",
    "ttl": "seconds an active token's answer is cached, at most until its exp (default: 60)",
    "negative_ttl": "seconds an inactive token's answer is cached (default: 10)",
    "timeout": "seconds to wait for the endpoint (default: 5)",
    "ca_file": "PEM roots to trust for the endpoint (default: the system's)",
}, required=("url", "client_id", "client_secret_file"))


@implementer(ITokenValidator)
class IntrospectionValidator:
    """See the module's docstring; C{client} makes the requests."""

    def __init__(self, client: HTTPClient, url: str, client_id: str, client_secret: str,
                 user_field: str = "username", ttl: float = 60.0,
                 negative_ttl: float = 10.0) -> None:
        self.client = client
        self.url = url
        self.user_field = user_field
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        credentials = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        self._authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
        self._cache: dict[bytes, tuple[str | None, float]] = {}

    def validate(self, token: bytes) -> defer.Deferred[str]:
        return defer.Deferred.fromCoroutine(self._validate(token))

    async def _validate(self, token: bytes) -> str:
        if not token or len(token) > MAX_TOKEN:
            raise InvalidToken("introspect: no token, or one too long")
        digest = hashlib.sha256(token).digest()
        now = self.client.reactor.seconds()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return self._answer(cached[0])
        user, expires = await self._ask(token, now)
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        self._cache[digest] = (user, expires)
        return self._answer(user)

    @staticmethod
    def _answer(user: str | None) -> str:
        if user is None:
            raise InvalidToken("introspect: the token is not active")
        return user

    async def _ask(self, token: bytes, now: float) -> tuple[str | None, float]:
        """The user (None: not active) and until when the answer holds."""
        body = urlencode({"token": token.decode("ascii", "replace"),
                          "token_type_hint": "access_token"}).encode("ascii")
        code, data = await self.client.request(b"POST", self.url, {
            b"Authorization": [self._authorization],
            b"Content-Type": [b"application/x-www-form-urlencoded"],
            b"Accept": [b"application/json"]}, body)
        if code != 200:
            raise errors.TemporaryFailure(f"introspect: HTTP {code} from {self.url}")
        try:
            answer = json.loads(data)
        except ValueError:
            raise errors.TemporaryFailure(f"introspect: no JSON from {self.url}") from None
        if not isinstance(answer, dict):
            raise errors.TemporaryFailure(f"introspect: no JSON object from {self.url}")
        if answer.get("active") is not True:
            return None, now + self.negative_ttl
        exp = answer.get("exp")
        wall = time.time()
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            if exp <= wall:
                return None, now + self.negative_ttl
            lifetime = min(self.ttl, exp - wall)
        else:
            lifetime = self.ttl
        user = answer.get(self.user_field)
        if not isinstance(user, str) or not user:
            raise InvalidToken(f"introspect: no {self.user_field} in the answer")
        return user, now + lifetime


def make_validator(argstring: str, reactor: Any) -> IntrospectionValidator:
    """C{--oauth introspect:...}; the client secret is read from its file now."""
    args = ARGS.parse(argstring)
    url = https_url(args["url"], "url", ARGS.error)
    path = args["client_secret_file"]
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ARGS.error(f"client_secret_file={path}: {e.strerror or e}") from None
    if not secret:
        raise ARGS.error(f"client_secret_file={path} is empty")
    try:
        client = HTTPClient(reactor, args.number("timeout", float, 5.0, unit="seconds"),
                            args.text("ca_file"))
    except (OSError, ValueError) as e:
        raise ARGS.error(f"ca_file: {e}") from None
    return IntrospectionValidator(client, url, args["client_id"], secret,
                                  args.text("user_field") or "username",
                                  args.number("ttl", float, 60.0, unit="seconds"),
                                  args.number("negative_ttl", float, 10.0, unit="seconds"))
