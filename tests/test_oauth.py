"""
OAUTHBEARER (RFC 7628) and XOAUTH2 in memory: the mechanisms' parsing, the
JWT validator against locally minted RS256 and ES256 tokens (a JWKS file,
and a JWKS URL served over HTTPS by a local Twisted web server), the RFC
7662 introspection validator against a local fake endpoint over HTTPS, and
whole POP3 logins on a L{StringTransport} (TLS only, the RFC 7628 error
challenge, the user check).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from popgate import errors
from popgate.interfaces import IOAuthCredentials, ITokenValidator, ITokenValidatorFactory
from popgate.oauth import InvalidToken, OAuthCredentials, TokenChecker
from popgate.oauth.introspect import make_validator as make_introspect
from popgate.oauth.jwt_validator import JWTValidator, URLKeys
from popgate.oauth.jwt_validator import make_validator as make_jwt
from popgate.oauth.registry import make_validator, validator_factories
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.oauth import MAX_MESSAGE, OAuthBearerMechanism, XOAuth2Mechanism
from popgate.pop3.sasl_steps import Challenge, SASLError
from popgate.stores.memory import MemoryStore
from tests.helpers import LOOPBACK_PEER, InlineThreadPool, Session, make_portal
from tests.tlscerts import PKI, make_pki

pytestmark = pytest.mark.usefixtures("log_events")

ISSUER = "https://idp.example.org/"
AUDIENCE = "popgate"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- keys and tokens, minted here


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid="r1", use="sig", alg="RS256")
        ec_jwk.update(kid="e1", use="sig")
        return {"keys": [rsa_jwk, ec_jwk]}

    def token(self, algorithm: str = "RS256", kid: str | None = None, **claims: Any) -> bytes:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now,
                "sub": "id-1234", "email": "alice@example.org", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        key = self.rsa if algorithm.startswith(("RS", "PS")) else self.ec
        kid = kid or ("r1" if key is self.rsa else "e1")
        return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid}).encode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


class FakeReactor(Clock):
    """A clock with a thread pool that runs at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = InlineThreadPool()
        self.advance(time.time())

    def getThreadPool(self) -> InlineThreadPool:
        return self.pool

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    return path


def jwt_validator(jwks_file: Path, extra: str = "") -> JWTValidator:
    return make_jwt(f"jwks_file={jwks_file},issuer={ISSUER},audience={AUDIENCE},"
                    f"user_claim=email{extra}", FakeReactor())


def result(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# -- the mechanisms


def bearer(token: bytes, user: bytes = b"alice@example.org") -> bytes:
    return b"n,a=" + user + b",\x01host=localhost\x01port=995\x01auth=Bearer " + token + b"\x01\x01"


def xoauth2(token: bytes, user: bytes = b"alice@example.org") -> bytes:
    return b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"


def test_oauthbearer_parses_rfc7628_message() -> None:
    creds = OAuthBearerMechanism().step(bearer(b"vF9dft4qmT", b"us=3Der=2Cx@example.com"))
    assert isinstance(creds, OAuthCredentials)
    assert (creds.username, creds.token) == (b"us=er,x@example.com", b"vF9dft4qmT")
    assert verifyObject(IOAuthCredentials, creds)
    anonymous = OAuthBearerMechanism().step(b"n,,\x01auth=bearer abc.def-_~+/==\x01\x01")
    assert isinstance(anonymous, OAuthCredentials)
    assert (anonymous.username, anonymous.token) == (b"", b"abc.def-_~+/==")


def test_oauthbearer_asks_for_the_message() -> None:
    mechanism = OAuthBearerMechanism()
    assert mechanism.step(None) == Challenge(b"")
    assert isinstance(mechanism.step(bearer(b"t")), OAuthCredentials)
    assert json.loads(mechanism.failure_data())["status"] == "invalid_token"


@pytest.mark.parametrize("message", [
    b"", b"n", b"n,", b"p=tls-unique,,\x01auth=Bearer t\x01\x01", b"x,,\x01auth=Bearer t\x01\x01",
    b"n,u=alice,\x01auth=Bearer t\x01\x01", b"n,a=bad=name,\x01auth=Bearer t\x01\x01",
    b"n,,auth=Bearer t\x01\x01", b"n,,\x01auth=Bearer t\x01", b"n,,\x01auth=Basic dXNlcg==\x01\x01",
    b"n,,\x01auth=Bearer\x01\x01", b"n,,\x01auth=Bearer a b\x01\x01", b"n,,\x01\x01\x01",
    b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", b"n,,\x01k\x00=v\x01auth=Bearer t\x01\x01",
    b"n,,\x01auth=Bearer " + b"t" * MAX_MESSAGE + b"\x01\x01",
])
def test_oauthbearer_refuses_malformed(message: bytes) -> None:
    with pytest.raises(SASLError):
        OAuthBearerMechanism().step(message)


def test_xoauth2_parses_google_message() -> None:
    creds = XOAuth2Mechanism().step(xoauth2(b"ya29.vF9dft4qmT"))
    assert isinstance(creds, OAuthCredentials)
    assert (creds.username, creds.token) == (b"alice@example.org", b"ya29.vF9dft4qmT")
    assert json.loads(XOAuth2Mechanism().failure_data())["status"] == "401"
    for bad in (b"auth=Bearer t\x01\x01", b"user=a\x01\x01", b"user=a\x01auth=Bearer t"):
        with pytest.raises(SASLError):
            XOAuth2Mechanism().step(bad)


# -- the JWT validator, keys from a file


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_jwt_valid_token(jwks_file: Path, keys: Keys, algorithm: str) -> None:
    validator = jwt_validator(jwks_file)
    assert verifyObject(ITokenValidator, validator)
    assert result(validator.validate(keys.token(algorithm))) == "alice@example.org"


def test_jwt_user_claim_default_is_sub(jwks_file: Path, keys: Keys) -> None:
    validator = make_jwt(f"jwks_file={jwks_file},issuer={ISSUER},audience={AUDIENCE}",
                         FakeReactor())
    assert result(validator.validate(keys.token())) == "id-1234"


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> bytes:
    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    return part(header) + b"." + part(claims) + b"."


def _hs256_with_public_key(keys: Keys) -> bytes:
    """The classic confusion attack: HMAC keyed with the RSA public key."""
    public = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    signing = _unsigned({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300,
                         "email": "alice@example.org"}, {"alg": "HS256", "kid": "r1"})[:-1]
    signature = base64.urlsafe_b64encode(hmac.new(public, signing, hashlib.sha256).digest())
    return signing + b"." + signature.rstrip(b"=")


@pytest.mark.parametrize("make", [
    lambda k: k.token(exp=int(time.time()) - 120),
    lambda k: k.token(nbf=int(time.time()) + 600),
    lambda k: k.token(iss="https://evil.example/"),
    lambda k: k.token(aud="someone-else"),
    lambda k: k.token(exp=None),
    lambda k: k.token(email=None),
    lambda k: k.token(kid="unknown"),
    lambda k: k.token("RS256", kid="e1"),  # an EC key for an RSA token
    lambda k: k.token("PS256"),  # not in the allowlist
    lambda k: k.token()[:-4] + b"AAAA",  # a bad signature
    lambda k: _unsigned({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60,
                         "email": "alice@example.org"}, {"alg": "none"}),
    _hs256_with_public_key,
    lambda k: b"not a jwt",
    lambda k: b"",
    lambda k: b"\xff\xfe",
    lambda k: b"x" * 20000,
])
def test_jwt_invalid_tokens(jwks_file: Path, keys: Keys, make: Any) -> None:
    with pytest.raises(InvalidToken):
        result(jwt_validator(jwks_file).validate(make(keys)))


def test_jwt_leeway(jwks_file: Path, keys: Keys) -> None:
    token = keys.token(exp=int(time.time()) - 10)
    assert result(jwt_validator(jwks_file).validate(token)) == "alice@example.org"
    with pytest.raises(InvalidToken):
        result(jwt_validator(jwks_file, ",leeway=0").validate(token))


def test_jwt_file_reread_after_ttl(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys.jwks()["keys"][1]]}))  # EC only
    reactor = FakeReactor()
    validator = make_jwt(f"jwks_file={path},issuer={ISSUER},audience={AUDIENCE},"
                         "jwks_ttl=60", reactor)
    with pytest.raises(InvalidToken):
        result(validator.validate(keys.token("RS256")))
    path.write_text(json.dumps(keys.jwks()))
    reactor.advance(61)
    assert result(validator.validate(keys.token("RS256"))) == "id-1234"


@pytest.mark.parametrize("args, message", [
    ("issuer=x,audience=y", "give one of"),
    ("jwks_file=/nonexistent,issuer=x,audience=y", "No such file"),
    ("jwks_url=http://idp/jwks,issuer=x,audience=y", "https://"),
    ("jwks_file={f},issuer=x,audience=y,algorithms=HS256", "algorithms="),
    ("jwks_file={f},issuer=x,audience=y,algorithms=none", "algorithms="),
    ("jwks_file={f},audience=y", "issuer= is required"),
    ("jwks_file={f},issuer=x,audience=y,bogus=1", "unknown key"),
])
def test_jwt_bad_arguments(jwks_file: Path, args: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_jwt(args.format(f=jwks_file), FakeReactor())


def test_jwt_bad_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')  # symmetric: dropped
    with pytest.raises(ValueError, match="jwt"):
        make_jwt(f"jwks_file={path},issuer=x,audience=y", FakeReactor())
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a usable JWKS"):
        make_jwt(f"jwks_file={path},issuer=x,audience=y", FakeReactor())


def test_plugins_found(jwks_file: Path) -> None:
    factories = validator_factories()
    assert {"jwt", "introspect"} <= set(factories)
    for factory in factories.values():
        assert verifyObject(ITokenValidatorFactory, factory)
    validator = make_validator(f"jwt:jwks_file={jwks_file},issuer=x,audience=y", FakeReactor())
    assert isinstance(validator, JWTValidator)
    with pytest.raises(ValueError, match="unknown token validator"):
        make_validator("saml:x", FakeReactor())


# -- the checker


def test_checker_user_must_match(jwks_file: Path, keys: Keys) -> None:
    checker = TokenChecker(jwt_validator(jwks_file))
    token = keys.token()
    assert result(checker.requestAvatarId(OAuthCredentials(b"alice@EXAMPLE.org", token))) \
        == "alice@example.org"
    assert result(checker.requestAvatarId(OAuthCredentials(b"", token))) == "alice@example.org"
    with pytest.raises(InvalidToken):
        result(checker.requestAvatarId(OAuthCredentials(b"bob@example.org", token)))
    with pytest.raises(InvalidToken):
        result(checker.requestAvatarId(OAuthCredentials(b"\xff", token)))


# -- whole POP3 sessions


def tls_session(validator: Any = None, tls: bool = True, settings: Any = None) -> Session:
    store = MemoryStore()
    store.add_message("alice@example.org", b"Subject: one\n\nbody\n")
    portal, _ = make_portal(store)
    if validator is not None:
        portal.registerChecker(TokenChecker(validator), IOAuthCredentials)
    clock = Clock()
    protocol = POP3ServerFactory(portal, settings, clock).buildProtocol(None)
    transport = StringTransport(peerAddress=LOOPBACK_PEER)
    if tls:
        alsoProvides(transport, ISSLTransport)
    protocol.makeConnection(transport)
    session = Session(protocol, transport, clock)
    session.take()
    return session


def sasl_line(session: Session) -> list[bytes]:
    for line in session.send(b"CAPA\r\n").split(b"\r\n"):
        if line.startswith(b"SASL "):
            return line.split()[1:]
    return []


def test_capa_lists_oauth_only_over_tls_with_a_validator(jwks_file: Path) -> None:
    validator = jwt_validator(jwks_file)
    assert {b"OAUTHBEARER", b"XOAUTH2"} <= set(sasl_line(tls_session(validator)))
    # Loopback counts as secure for passwords, never for bearer tokens.
    assert b"OAUTHBEARER" not in sasl_line(tls_session(validator, tls=False))
    assert b"XOAUTH2" not in sasl_line(tls_session(validator, tls=False))
    assert b"OAUTHBEARER" not in sasl_line(tls_session(None))


def test_plaintext_attempt_refused(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file), tls=False)
    reply = session.send(b"AUTH OAUTHBEARER " + b64(bearer(keys.token())) + b"\r\n")
    assert reply.startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    reply = session.send(b"AUTH XOAUTH2\r\n")
    assert reply.startswith(b"-ERR [AUTH]")
    # Without a validator, the mechanisms do not exist.
    assert tls_session(None).send(b"AUTH OAUTHBEARER\r\n") \
        == b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_oauthbearer_login(jwks_file: Path, keys: Keys, algorithm: str) -> None:
    session = tls_session(jwt_validator(jwks_file))
    reply = session.send(b"AUTH OAUTHBEARER " + b64(bearer(keys.token(algorithm))) + b"\r\n")
    assert reply == b"+OK Logged in.\r\n"
    assert session.send(b"STAT\r\n").startswith(b"+OK 1 ")


def test_oauthbearer_login_in_two_steps(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    assert session.send(b"AUTH OAUTHBEARER\r\n") == b"+ \r\n"
    assert session.send(b64(bearer(keys.token())) + b"\r\n") == b"+OK Logged in.\r\n"


def test_xoauth2_login(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    reply = session.send(b"AUTH XOAUTH2 " + b64(xoauth2(keys.token())) + b"\r\n")
    assert reply == b"+OK Logged in.\r\n"


def test_oauthbearer_failure_sends_error_challenge(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    token = keys.token(exp=int(time.time()) - 3600)
    assert session.send(b"AUTH OAUTHBEARER " + b64(bearer(token)) + b"\r\n") == b""
    session.clock.advance(1)
    reply = session.take()
    assert reply.startswith(b"+ ") and reply.endswith(b"\r\n")
    assert json.loads(base64.b64decode(reply[2:-2])) == {"status": "invalid_token",
                                                         "schemes": "bearer"}
    assert session.send(b"AQ==\r\n") == AUTH_FAILED
    # The session goes on: a good token logs in.
    reply = session.send(b"AUTH OAUTHBEARER " + b64(bearer(keys.token())) + b"\r\n")
    assert reply == b"+OK Logged in.\r\n"


def test_xoauth2_failure_empty_answer(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    session.send(b"AUTH XOAUTH2 " + b64(xoauth2(keys.token(iss="https://evil/"))) + b"\r\n")
    session.clock.advance(1)
    reply = session.take()
    assert json.loads(base64.b64decode(reply[2:-2]))["status"] == "401"
    assert session.send(b"\r\n") == AUTH_FAILED


def test_other_users_token_fails(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    session.send(b"AUTH XOAUTH2 " + b64(xoauth2(keys.token(), b"bob@example.org")) + b"\r\n")
    session.clock.advance(1)
    assert session.take().startswith(b"+ ")
    assert session.send(b"\r\n") == AUTH_FAILED


def test_failures_close_after_the_limit(jwks_file: Path, keys: Keys) -> None:
    session = tls_session(jwt_validator(jwks_file))
    for _ in range(3):
        session.send(b"AUTH OAUTHBEARER " + b64(bearer(b"garbage")) + b"\r\n")
        session.clock.advance(1)
        assert session.take().startswith(b"+ ")
        assert session.send(b"AQ==\r\n") == AUTH_FAILED
    assert session.transport.disconnecting


@pytest.mark.parametrize("line", [
    b"AUTH OAUTHBEARER !!!!\r\n",
    b"AUTH OAUTHBEARER " + b64(b"p=x,,\x01auth=Bearer t\x01\x01") + b"\r\n",
    b"AUTH XOAUTH2 " + b64(b"user=\x01auth=Bearer t\x01\x01") + b"\r\n",
    b"AUTH OAUTHBEARER " + b64(b"n,,\x01auth=Bearer t") + b"\r\n",
])
def test_malformed_messages_fail_cleanly(jwks_file: Path, line: bytes) -> None:
    session = tls_session(jwt_validator(jwks_file))
    reply = session.send(line)
    session.clock.advance(1)
    reply += session.take()
    assert reply.startswith(b"-ERR [AUTH]"), reply


def test_validator_outage_is_temporary(keys: Keys) -> None:
    @implementer(ITokenValidator)
    class Down:
        def validate(self, token: bytes) -> defer.Deferred[str]:
            return defer.fail(errors.TemporaryFailure("idp down"))

    session = tls_session(Down())
    reply = session.send(b"AUTH OAUTHBEARER " + b64(bearer(keys.token())) + b"\r\n")
    assert reply.startswith(b"-ERR [SYS/TEMP]")


# -- HTTPS: a JWKS URL and an introspection endpoint, served locally


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class FakeIdP:
    """A local HTTPS server: /jwks, and /introspect (RFC 7662)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.requests: list[tuple[bytes, bytes]] = []
        self.tokens: dict[str, dict[str, Any]] = {}
        self.port: Any = None

    def start(self, pki: PKI) -> int:
        from twisted.internet import reactor
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.web import resource, server

        from popgate.tls import ServerTLS

        idp = self

        class Page(resource.Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                idp.requests.append((request.method, request.path))
                if request.path == b"/jwks":
                    request.setHeader(b"content-type", b"application/json")
                    return json.dumps(idp.keys.jwks()).encode()
                if request.path == b"/introspect":
                    if request.getHeader(b"authorization") != b"Basic " + b64(b"popgate:s3cret"):
                        request.setResponseCode(401)
                        return b"{}"
                    token = request.args.get(b"token", [b""])[0].decode()
                    return json.dumps(idp.tokens.get(token, {"active": False})).encode()
                if request.path == b"/slow":
                    return server.NOT_DONE_YET  # type: ignore[return-value]
                request.setResponseCode(404)
                return b""

        factory = TLSMemoryBIOFactory(ServerTLS(str(pki.cert), str(pki.key)), False,
                                      server.Site(Page()))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        return int(self.port.getHost().port)


@pytest.fixture(scope="module")
def idp(keys: Keys, pki: PKI) -> Any:
    from tests.reactor_thread import run

    fake = FakeIdP(keys)
    port = run(fake.start, pki)
    yield fake, port
    run(fake.port.stopListening)


@pytest.mark.integration
def test_jwks_url_fetched_and_cached(idp: Any, keys: Keys, pki: PKI) -> None:
    from twisted.internet import reactor

    from tests.reactor_thread import run

    fake, port = idp
    before = len(fake.requests)
    validator = run(make_jwt, f"jwks_url=https://127.0.0.1:{port}/jwks,issuer={ISSUER},"
                    f"audience={AUDIENCE},user_claim=email,ca_file={pki.ca}", reactor)

    async def two() -> list[str]:
        first = validator.validate(keys.token("RS256"))
        second = validator.validate(keys.token("ES256"))
        return [await first, await second]

    assert run(two) == ["alice@example.org", "alice@example.org"]
    assert run(validator.validate, keys.token()) == "alice@example.org"
    assert fake.requests[before:] == [(b"GET", b"/jwks")]  # one fetch for all three


@pytest.mark.integration
def test_jwks_url_untrusted_certificate(idp: Any, keys: Keys) -> None:
    from twisted.internet import reactor

    from tests.reactor_thread import run

    _, port = idp
    validator = run(make_jwt, f"jwks_url=https://127.0.0.1:{port}/jwks,issuer={ISSUER},"
                    f"audience={AUDIENCE}", reactor)  # the system's roots: not our CA
    with pytest.raises(errors.TemporaryFailure):
        run(validator.validate, keys.token(), timeout=20)
    assert isinstance(validator.keys, URLKeys) and validator.keys.keys is None


def introspector(port: int, pki: PKI, tmp_path: Path, extra: str = "") -> Any:
    from twisted.internet import reactor

    from tests.reactor_thread import run

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    return run(make_introspect, f"url=https://127.0.0.1:{port}/introspect,client_id=popgate,"
               f"client_secret_file={secret},ca_file={pki.ca}{extra}", reactor)


@pytest.mark.integration
def test_introspection(idp: Any, pki: PKI, tmp_path: Path) -> None:
    from tests.reactor_thread import run

    fake, port = idp
    fake.tokens["good"] = {"active": True, "username": "alice@example.org",
                           "exp": int(time.time()) + 3600}
    validator = introspector(port, pki, tmp_path)
    assert verifyObject(ITokenValidator, validator)
    before = len(fake.requests)
    assert run(validator.validate, b"good") == "alice@example.org"
    assert run(validator.validate, b"good") == "alice@example.org"  # cached
    with pytest.raises(InvalidToken):
        run(validator.validate, b"unknown")
    with pytest.raises(InvalidToken):
        run(validator.validate, b"unknown")  # cached too
    assert fake.requests[before:] == [(b"POST", b"/introspect")] * 2


@pytest.mark.integration
def test_introspection_expired_and_fields(idp: Any, pki: PKI, tmp_path: Path) -> None:
    from tests.reactor_thread import run

    fake, port = idp
    fake.tokens["old"] = {"active": True, "username": "alice", "exp": int(time.time()) - 5}
    fake.tokens["sub"] = {"active": True, "sub": "carol"}
    validator = introspector(port, pki, tmp_path, ",user_field=sub")
    with pytest.raises(InvalidToken):
        run(validator.validate, b"old")
    assert run(validator.validate, b"sub") == "carol"


@pytest.mark.integration
def test_introspection_bad_client_secret_is_temporary(idp: Any, pki: PKI,
                                                      tmp_path: Path) -> None:
    from tests.reactor_thread import run

    _, port = idp
    validator = introspector(port, pki, tmp_path)
    validator._authorization = b"Basic " + b64(b"popgate:wrong")
    with pytest.raises(errors.TemporaryFailure):
        run(validator.validate, b"good")


@pytest.mark.integration
def test_introspection_timeout(idp: Any, pki: PKI, tmp_path: Path) -> None:
    from tests.reactor_thread import run

    _, port = idp
    validator = introspector(port, pki, tmp_path, ",timeout=0.5")
    validator.url = f"https://127.0.0.1:{port}/slow"
    started = time.monotonic()
    with pytest.raises(errors.TemporaryFailure):
        run(validator.validate, b"good")
    assert time.monotonic() - started < 5


def test_introspection_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https://"):
        make_introspect("url=http://idp/x,client_id=a,client_secret_file=/x", FakeReactor())
    with pytest.raises(ValueError, match="client_secret_file"):
        make_introspect("url=https://idp/x,client_id=a,client_secret_file=/nonexistent",
                        FakeReactor())


# -- configuration: --oauth, the TOML key, build and reload


@pytest.fixture
def build_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from popgate.limits import process as limits_process

    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))


@pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")
def test_build_registers_the_token_checker(build_env: None, jwks_file: Path,
                                           tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from popgate.build import build_server
    from popgate.reload import Plan, apply
    from tests.test_build import BASE, Endpoints, config

    oauth = f"jwt:jwks_file={jwks_file},issuer={ISSUER},audience={AUDIENCE}"
    toml = tmp_path / "popgate.toml"
    toml.write_text(f'oauth = "{oauth}"\n')
    for args in (["--oauth", oauth], ["--config", str(toml)]):
        server = build_server(config(BASE + args), MemoryReactorClock(), Endpoints())
        assert IOAuthCredentials in server.portal.listCredentialsInterfaces()
        assert isinstance(server.oauth, TokenChecker)
    # A reload rebuilds the portal: the token checker stays.
    plan = Plan(server.config, (), (), server.checkers, None, "localhost")
    apply(server, plan, MemoryReactorClock())
    assert IOAuthCredentials in server.portal.listCredentialsInterfaces()
    plain = build_server(config(BASE), MemoryReactorClock(), Endpoints())
    assert IOAuthCredentials not in plain.portal.listCredentialsInterfaces()


@pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")
@pytest.mark.parametrize("oauth, message", [
    ("saml:x", "--oauth: unknown token validator 'saml'"),
    ("jwt:issuer=x", "--oauth: jwt: "),
    ("introspect:url=https://x/", "--oauth: introspect: client_id= is required"),
])
def test_build_refuses_bad_oauth(build_env: None, oauth: str, message: str) -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python import usage

    from popgate.build import build_server
    from tests.test_build import BASE, Endpoints, config

    with pytest.raises(usage.UsageError) as e:
        build_server(config(BASE + ["--oauth", oauth]), MemoryReactorClock(), Endpoints())
    assert str(e.value).startswith(message), str(e.value)


def test_login_events(jwks_file: Path, keys: Keys, captured: list[dict[str, Any]]) -> None:
    session = tls_session(jwt_validator(jwks_file))
    session.send(b"AUTH OAUTHBEARER " + b64(bearer(keys.token(aud="x"))) + b"\r\n")
    session.clock.advance(1)
    session.send(b"AQ==\r\n")
    session.send(b"AUTH XOAUTH2 " + b64(xoauth2(keys.token())) + b"\r\n")
    logins = [e for e in captured if e["event"] == "pop3.login"]
    assert [(e["method"], e["result"], e["reason"], e["user"]) for e in logins] == [
        ("OAUTHBEARER", "failed", "bad-token", "alice@example.org"),
        ("XOAUTH2", "ok", "", "alice@example.org")]
    assert not any(keys.token()[:40].decode() in str(e) for e in captured)  # never logged


def test_an_overlong_token_line_closes_cleanly(jwks_file: Path) -> None:
    session = tls_session(jwt_validator(jwks_file))
    reply = session.send(b"AUTH OAUTHBEARER " + b64(bearer(b"t" * 9000)) + b"\r\n")
    assert reply.startswith(b"-ERR") and b"too long" in reply
    assert session.transport.disconnecting


def test_jwks_keys_that_cannot_sign_are_skipped(tmp_path: Path, keys: Keys) -> None:
    document = keys.jwks()
    document["keys"] = [{"kty": "RSA", "use": "enc", "kid": "x", "n": "AQAB", "e": "AQAB"},
                        {"kty": "weird", "kid": "w"}, {"kty": "oct", "k": "c2VjcmV0"},
                        *document["keys"]]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    assert result(jwt_validator(path).validate(keys.token("ES256"))) == "alice@example.org"


class FakeClient:
    """An HTTPClient stand-in: answers from a list, counts requests."""

    def __init__(self, answers: list[Any]) -> None:
        self.reactor = FakeReactor()
        self.answers = answers
        self.requests = 0

    def request(self, method: bytes, url: str, *rest: Any) -> defer.Deferred[Any]:
        self.requests += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def test_jwks_url_keeps_old_keys_when_the_provider_is_down(keys: Keys) -> None:
    jwks = json.dumps(keys.jwks()).encode()
    client = FakeClient([(200, jwks), errors.TemporaryFailure("down"), (500, b"")])
    source = URLKeys("https://idp/jwks", client, ttl=60)  # type: ignore[arg-type]
    validator = JWTValidator(source, ISSUER, AUDIENCE, "email")
    assert result(validator.validate(keys.token())) == "alice@example.org"
    client.reactor.advance(61)
    assert result(validator.validate(keys.token())) == "alice@example.org"  # refetch failed
    client.reactor.advance(61)
    assert result(validator.validate(keys.token())) == "alice@example.org"  # HTTP 500
    assert client.requests == 3


def test_jwks_url_unknown_kid_refetches_at_most_once_a_minute(keys: Keys) -> None:
    jwks = json.dumps(keys.jwks()).encode()
    client = FakeClient([(200, jwks), (200, jwks)])
    validator = JWTValidator(URLKeys("https://idp/jwks", client, ttl=3600),  # type: ignore[arg-type]
                             ISSUER, AUDIENCE, "email")
    for _ in range(3):
        with pytest.raises(InvalidToken):
            result(validator.validate(keys.token(kid="rotated")))
    assert client.requests == 1
    client.reactor.advance(61)
    with pytest.raises(InvalidToken):
        result(validator.validate(keys.token(kid="rotated")))
    assert client.requests == 2


def test_jwks_url_never_fetched_is_temporary(keys: Keys) -> None:
    client = FakeClient([errors.TemporaryFailure("down")])
    validator = JWTValidator(URLKeys("https://idp/jwks", client, ttl=60),  # type: ignore[arg-type]
                             ISSUER, AUDIENCE, "email")
    with pytest.raises(errors.TemporaryFailure):
        result(validator.validate(keys.token()))
