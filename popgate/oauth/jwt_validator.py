"""
The C{jwt:} token validator: access tokens that are JWTs signed by the
identity provider, checked with PyJWT against its public keys (a JWKS
file, or a JWKS URL fetched on the reactor and cached).

Only asymmetric algorithms are accepted, from an allowlist (C{none} and
the HMAC ones never: a public key must never be usable as an HMAC
secret); the key is the JWKS entry with the token's C{kid} (or the only
one that fits the algorithm).  C{exp}, C{iss} and C{aud} are required,
C{nbf} is honoured, with a small leeway for clocks that drift; the user
is the C{user_claim} claim.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import jwt
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.cred.args import ArgSpec
from popgate.interfaces import ITokenValidator
from popgate.oauth import InvalidToken
from popgate.oauth.http import HTTPClient, https_url

__all__ = ["ARGS", "ASYMMETRIC", "FileKeys", "JWTValidator", "PublicKey", "URLKeys",
           "make_validator", "parse_jwks"]

log = Logger()

#: The longest token taken, in octets.
MAX_TOKEN = 16 * 1024

#: The algorithms that may be allowed: signatures with a public key.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512", "EdDSA"})

ARGS = ArgSpec("jwt", {
    "jwks_file": "the identity provider's public keys, a JWKS (JSON) file; re-read every "
                 "jwks_ttl seconds",
    "jwks_url": "or an https:// URL serving the JWKS, fetched at the first login and every "
                "jwks_ttl seconds after",
    "issuer": "the iss claim tokens must carry",
    "audience": "the aud claim tokens must carry (this server's client or resource id)",
    "user_claim": "the claim holding the user name (default: sub)",
    "algorithms": "the signature algorithms accepted, comma-separated (default: RS256,ES256)",
    "leeway": "seconds of clock drift allowed for exp and nbf (default: 30)",
    "jwks_ttl": "seconds the keys are kept before they are read again (default: 300)",
    "ca_file": "PEM roots to trust for jwks_url (default: the system's)",
    "timeout": "seconds to wait for jwks_url (default: 5)",
}, required=("issuer", "audience"))


@dataclass(frozen=True)
class PublicKey:
    """One signing key of a JWKS, with what says which tokens it checks."""

    kid: str | None
    kty: str
    alg: str | None
    use: str | None
    key: Any  # a cryptography public key


def parse_jwks(data: bytes | str, where: str) -> tuple[PublicKey, ...]:
    """The usable public keys of a JWKS (symmetric C{oct} keys dropped).

    @raise ValueError: not a JWKS, or no usable key in it."""
    try:
        document = json.loads(data)
        entries = [k for k in document["keys"] if isinstance(k, dict)
                   and k.get("kty") != "oct" and k.get("use") in (None, "sig")]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a usable JWKS ({str(e)[:80]})") from None
    keys = []
    for entry in entries:  # a key of a kind PyJWT does not know is skipped
        try:
            keys.append(PublicKey(entry.get("kid"), entry["kty"], entry.get("alg"),
                                  entry.get("use"), jwt.PyJWK(entry).key))
        except (ValueError, KeyError, TypeError, jwt.PyJWTError):
            continue
    if not keys:
        raise ValueError(f"{where}: not a usable JWKS (no public signing key in it)")
    return tuple(keys)


class FileKeys:
    """A JWKS file, read at start-up and again, in a thread, once C{ttl} passed."""

    def __init__(self, path: str, reactor: Any, ttl: float) -> None:
        self.path = path
        self.reactor = reactor
        self.ttl = ttl
        self.keys = self._read()
        self.read_at = reactor.seconds()

    def _read(self) -> tuple[PublicKey, ...]:
        with open(self.path, "rb") as f:
            return parse_jwks(f.read(), self.path)

    async def get(self, refresh: bool = False) -> tuple[PublicKey, ...]:
        if self.reactor.seconds() - self.read_at >= self.ttl:
            self.read_at = self.reactor.seconds()
            try:
                self.keys = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                    self._read)
            except (OSError, ValueError) as e:
                log.warn("jwt: keeping the keys read before: {error}", error=str(e))
        return self.keys


class URLKeys:
    """
    A JWKS URL: fetched when first needed and once C{ttl} passed (one
    request at a time, shared by the logins waiting for it), and again for
    an unknown C{kid} (a rotated key), at most once a minute.  When a
    fetch fails the keys fetched before stay in use; with none, logins get
    a temporary failure.
    """

    MIN_REFRESH = 60.0

    def __init__(self, url: str, client: HTTPClient, ttl: float) -> None:
        self.url = url
        self.client = client
        self.ttl = ttl
        self.keys: tuple[PublicKey, ...] | None = None
        self.fetched_at = -1e18
        self._waiting: list[defer.Deferred[None]] | None = None

    async def get(self, refresh: bool = False) -> tuple[PublicKey, ...]:
        now = self.client.reactor.seconds()
        stale = now - self.fetched_at >= (self.MIN_REFRESH if refresh else self.ttl)
        if self.keys is not None and not stale:
            return self.keys
        if self._waiting is None:  # this login fetches; the others wait for it
            self._waiting = []
            await self._fetch()
            waiting, self._waiting = self._waiting, None
            for other in waiting:
                other.callback(None)
        else:
            mine: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(mine)
            await mine
        if self.keys is None:
            raise errors.TemporaryFailure(f"jwt: no keys from {self.url}")
        return self.keys

    async def _fetch(self) -> None:
        try:
            self.fetched_at = self.client.reactor.seconds()
            code, body = await self.client.request(b"GET", self.url)
            if code != 200:
                raise ValueError(f"HTTP {code}")
            self.keys = parse_jwks(body, self.url)
        except (errors.TemporaryFailure, ValueError) as e:
            log.warn("jwt: cannot fetch the keys from {url}: {error}", url=self.url, error=str(e))
        except Exception:
            log.failure("jwt: fetching the keys from {url}", url=self.url)


@implementer(ITokenValidator)
class JWTValidator:
    """Checks a JWT access token; see the module's docstring."""

    def __init__(self, keys: FileKeys | URLKeys, issuer: str, audience: str,
                 user_claim: str = "sub", algorithms: tuple[str, ...] = ("RS256", "ES256"),
                 leeway: float = 30.0) -> None:
        bad = set(algorithms) - ASYMMETRIC
        if bad or not algorithms:
            raise ARGS.error(f"algorithms= may only name {' '.join(sorted(ASYMMETRIC))}, "
                             f"not {' '.join(sorted(bad)) or 'none'}")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.user_claim = user_claim
        self.algorithms = tuple(algorithms)
        self.leeway = leeway

    def validate(self, token: bytes) -> defer.Deferred[str]:
        return defer.Deferred.fromCoroutine(self._validate(token))

    async def _validate(self, token: bytes) -> str:
        if not token or len(token) > MAX_TOKEN:
            raise InvalidToken("jwt: no token, or one too long")
        try:
            text = token.decode("ascii")
            header = jwt.get_unverified_header(text)
        except (UnicodeDecodeError, jwt.PyJWTError) as e:
            raise InvalidToken(f"jwt: malformed ({e})") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken(f"jwt: algorithm {str(algorithm)[:20]!r} not allowed")
        kid = header.get("kid")
        key = self._key(await self.keys.get(), kid, algorithm)
        if key is None and kid is not None:  # perhaps a key rotated in since
            key = self._key(await self.keys.get(refresh=True), kid, algorithm)
        if key is None:
            raise InvalidToken(f"jwt: no key {str(kid)[:40]!r} for {algorithm}")
        try:
            claims = jwt.decode(text, key.key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "iss", "aud"]})
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise InvalidToken(f"jwt: {type(e).__name__}: {str(e)[:80]}") from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            raise InvalidToken(f"jwt: no {self.user_claim} claim")
        return user

    @staticmethod
    def _key(keys: tuple[PublicKey, ...], kid: Any, algorithm: str) -> PublicKey | None:
        """The key C{kid} names, or with no C{kid} the only one that fits."""
        family = {"R": "RSA", "P": "RSA", "E": "EC"}.get(algorithm[0], "OKP")
        fitting = [k for k in keys if k.kty == family and k.alg in (None, algorithm)
                   and k.use in (None, "sig")]
        if kid is not None:
            fitting = [k for k in fitting if k.kid == kid]
        return fitting[0] if len(fitting) == 1 else None


def make_validator(argstring: str, reactor: Any) -> JWTValidator:
    """C{--oauth jwt:...}; keys from exactly one of C{jwks_file=} and C{jwks_url=}."""
    args = ARGS.parse(argstring)
    ttl = args.number("jwks_ttl", float, 300.0, unit="seconds")
    if bool(args.text("jwks_file")) == bool(args.text("jwks_url")):
        raise ARGS.error("give one of jwks_file= and jwks_url=")
    keys: FileKeys | URLKeys
    path = args.text("jwks_file")
    if path:
        try:
            keys = FileKeys(os.path.abspath(path), reactor, ttl)
        except OSError as e:
            raise ARGS.error(f"jwks_file={path}: {e.strerror or e}") from None
    else:
        url = https_url(args["jwks_url"], "jwks_url", ARGS.error)
        client = HTTPClient(reactor, args.number("timeout", float, 5.0, unit="seconds"),
                            args.text("ca_file"))
        keys = URLKeys(url, client, ttl)
    algorithms = tuple((args.text("algorithms") or "RS256,ES256").replace(",", " ").split())
    return JWTValidator(keys, args["issuer"], args["audience"],
                        args.text("user_claim") or "sub", algorithms,
                        args.number("leeway", float, 30.0, unit="seconds"))
