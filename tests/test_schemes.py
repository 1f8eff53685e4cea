"""
Tests for L{popgate.cred.schemes}, against hashes made by the real tools
(openssl, htpasswd, slappasswd, doveadm) and libraries (bcrypt, argon2-cffi,
libpass).

Also home to the small synchronous helpers the checker tests share.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import argon2
import bcrypt
import pytest
from passlib import hash as passlib_hash
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.cred.schemes import (
    DUMMY_HASH,
    UnknownScheme,
    dummy_verify,
    dummy_verify_in_thread,
    hash_password,
    plaintext_secret,
    verify_in_thread,
    verify_password,
)
from tests.services import need_program

PASSWORD = "s3cret pässword"
WRONG = "s3cret passw0rd"


# -- helpers shared with test_htpasswd and test_passwdfile --------------------


class InlineThreadPool:
    """Runs 'threaded' calls at once, remembering which functions ran, with what."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.args: list[tuple[Any, ...]] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.calls.append(f.__name__)
        self.args.append(args)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())  # type: ignore[no-untyped-call]
        else:
            on_result(True, result)


@implementer(IReactorThreads)
class InlineReactor:
    """Just enough of a reactor for deferToThreadPool, synchronously."""

    def __init__(self) -> None:
        self.pool = InlineThreadPool()

    def getThreadPool(self) -> Any:
        return self.pool

    def callInThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        self.pool.callInThreadWithCallback(lambda ok, result: None, callable, *args, **kwargs)

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass


class QueueingReactor(InlineReactor):
    """Like L{InlineReactor}, but 'threaded' calls wait for L{run_queued}."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Callable[[], None]] = []
        inline = self.pool.callInThreadWithCallback

        def queue(on_result: Callable[[bool, Any], None], f: Callable[..., Any], *args: Any, **kw: Any) -> None:
            self.queued.append(lambda: inline(on_result, f, *args, **kw))

        self.pool.callInThreadWithCallback = queue  # type: ignore[method-assign]

    def run_queued(self) -> None:
        while self.queued:
            self.queued.pop(0)()


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired; raise its failure if it failed."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def run_tool(*argv: str, package: str) -> str:
    """Run a real program (skipping when missing) and return its first output line."""
    need_program(argv[0], package)
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return out.splitlines()[0].strip()


# -- hashes from real tools ---------------------------------------------------

TOOL_VECTORS: list[tuple[str, tuple[str, ...]]] = [
    ("openssl", ("openssl", "passwd", "-6", PASSWORD)),
    ("openssl", ("openssl", "passwd", "-5", PASSWORD)),
    ("openssl", ("openssl", "passwd", "-1", PASSWORD)),
    ("openssl", ("openssl", "passwd", "-apr1", PASSWORD)),
    ("slapd", ("slappasswd", "-h", "{SSHA}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-h", "{SMD5}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-h", "{SHA}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-h", "{MD5}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-h", "{CRYPT}", "-c", "$6$%.16s", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-o", "module-load=pw-sha2", "-h", "{SSHA256}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-o", "module-load=pw-sha2", "-h", "{SSHA512}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-o", "module-load=pw-sha2", "-h", "{SHA256}", "-s", PASSWORD)),
    ("slapd", ("slappasswd", "-o", "module-load=pw-sha2", "-h", "{SHA512}", "-s", PASSWORD)),
]

DOVECOT_SCHEMES = [
    "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "DES-CRYPT", "CRYPT",
    "ARGON2I", "ARGON2ID", "SSHA", "SSHA256", "SSHA512", "SMD5", "SHA", "SHA1",
    "SHA256", "SHA512", "PLAIN-MD5", "LDAP-MD5", "MD5", "PLAIN", "CLEAR", "CLEARTEXT",
    "SHA256.HEX", "SSHA512.HEX", "PLAIN-MD5.B64", "PLAIN.HEX",
]  # fmt: skip

HTPASSWD_FLAGS = ["-B", "-2", "-5", "-m", "-s", "-d"]


def check_vector(stored: str, password: str = PASSWORD, default_scheme: str | None = None) -> None:
    assert verify_password(password.encode(), stored, default_scheme=default_scheme) is True
    assert verify_password(WRONG.encode(), stored, default_scheme=default_scheme) is False


def _vector_id(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


@pytest.mark.integration
@pytest.mark.parametrize(("package", "argv"), TOOL_VECTORS, ids=_vector_id)
def test_tool_hashes(package: str, argv: tuple[str, ...]) -> None:
    check_vector(run_tool(*argv, package=package))


@pytest.mark.integration
@pytest.mark.parametrize("scheme", DOVECOT_SCHEMES)
def test_doveadm_hashes(scheme: str) -> None:
    # DES crypt looks at 8 characters only: use a password that differs early.
    password = "s3cret" if "DES" in scheme else PASSWORD
    stored = run_tool("doveadm", "pw", "-s", scheme, "-p", password, package="dovecot-core")
    assert stored.startswith(f"{{{scheme}}}")
    check_vector(stored, password)


@pytest.mark.integration
@pytest.mark.parametrize("flag", HTPASSWD_FLAGS)
def test_htpasswd_hashes(flag: str) -> None:
    password = "s3cret" if flag == "-d" else PASSWORD
    line = run_tool("htpasswd", "-nb" + flag[1:], "alice", password, package="apache2-utils")
    stored = line.split(":", 1)[1]
    check_vector(stored, password, default_scheme="CRYPT")


# -- hashes from libraries ----------------------------------------------------


def _libpass(name: str) -> Any:
    """A libpass handler; SHA-crypt at glibc's 5000 rounds, not libpass's slow default."""
    handler = getattr(passlib_hash, name)
    return handler.using(rounds=5000) if name in ("sha512_crypt", "sha256_crypt") else handler


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_bcrypt_library(prefix: bytes) -> None:
    stored = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4, prefix=prefix)).decode()
    check_vector(stored)
    check_vector("{BLF-CRYPT}" + stored)
    check_vector("{CRYPT}" + stored)
    check_vector("$2y$" + stored[4:])  # PHP's and Dovecot's name for the same thing


def _argon2(kind: argon2.Type) -> str:
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, type=kind)
    return hasher.hash(PASSWORD)


@pytest.mark.parametrize(
    ("kind", "name"), [(argon2.Type.I, "ARGON2I"), (argon2.Type.ID, "ARGON2ID")]
)
def test_argon2_library(kind: argon2.Type, name: str) -> None:
    stored = _argon2(kind)
    check_vector(stored)
    check_vector(f"{{{name}}}{stored}")
    check_vector(f"{{{name.lower()}}}{stored}")


def test_argon2_scheme_must_match_the_hash() -> None:
    stored = _argon2(argon2.Type.I)
    assert verify_password(PASSWORD.encode(), "{ARGON2ID}" + stored) is False


@pytest.mark.parametrize(
    ("handler", "prefix"),
    [
        ("sha512_crypt", "{SHA512-CRYPT}"),
        ("sha256_crypt", "{SHA256-CRYPT}"),
        ("md5_crypt", "{MD5-CRYPT}"),
        ("apr_md5_crypt", ""),
        ("ldap_salted_sha1", ""),
        ("ldap_salted_sha256", ""),
        ("ldap_salted_sha512", ""),
        ("ldap_sha1", ""),
        ("ldap_md5", ""),
        ("ldap_plaintext", "{CLEARTEXT}"),
    ],
)
def test_libpass_hashes(handler: str, prefix: str) -> None:
    check_vector(prefix + _libpass(handler).hash(PASSWORD))


def test_des_crypt_is_the_default_crypt() -> None:
    stored = passlib_hash.des_crypt.hash("s3cret")
    check_vector("{CRYPT}" + stored, "s3cret")
    check_vector(stored, "s3cret", default_scheme="CRYPT")


def test_scheme_names_are_case_insensitive() -> None:
    check_vector("{ssha}" + passlib_hash.ldap_salted_sha1.hash(PASSWORD)[6:])
    check_vector("{Plain}" + PASSWORD)
    check_vector("{sha512-crypt}" + _libpass("sha512_crypt").hash(PASSWORD))


def test_long_salts_are_accepted() -> None:
    # libpass caps salts at 16 bytes; Dovecot and OpenLDAP do not.
    stored = passlib_hash.ldap_salted_sha256.using(salt_size=16).hash(PASSWORD)
    check_vector(stored)


# -- refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [
        "{NOPE}abc",
        "{}abc",
        "{SHA.ROT13}abc",
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        "$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D",
        "no prefix at all",
    ],
)
def test_unknown_scheme_raises(stored: str) -> None:
    with pytest.raises(UnknownScheme):
        verify_password(PASSWORD.encode(), stored)


def test_unknown_crypt_format_with_default_scheme_raises() -> None:
    with pytest.raises(UnknownScheme, match=r"\$y\$"):
        verify_password(b"x", "$y$j9T$abc$def", default_scheme="CRYPT")


def test_unknown_scheme_is_a_value_error() -> None:
    assert issubclass(UnknownScheme, ValueError)


@pytest.mark.parametrize(
    "stored",
    [
        "{SHA}!!!not base64",
        "{SHA}AAAA",
        "{SHA256.HEX}zz",
        "{SSHA}AAAA",
        "{BLF-CRYPT}$2y$10$short",
        "{BLF-CRYPT}$6$abc$def",
        "{ARGON2ID}$argon2id$garbage",
        "{ARGON2I}$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$",
        "{SHA512-CRYPT}$1$aFvf/Gol$x4Cq6p.xN0BbIzUZio0c2/",
        "{CRYPT}*",
        "{CRYPT}!",
        "{CRYPT}",
        "{PLAIN}",
        "$6$",
        "$2b$04$",
        "{MD5}zzzz",
        "{PLAIN-MD5}not hex",
        "{CRYPT}\udcff",
    ],
)
def test_malformed_hash_is_false(stored: str) -> None:
    assert verify_password(PASSWORD.encode(), stored, default_scheme="CRYPT") is False
    assert verify_password(b"", stored, default_scheme="CRYPT") is False


def test_bcrypt_over_72_bytes_is_false() -> None:
    password = b"a" * 72
    stored = bcrypt.hashpw(password, bcrypt.gensalt(4)).decode()
    assert verify_password(password, stored) is True
    # bcrypt 5 raises for these; older bcrypt would have said yes.
    assert verify_password(password + b"b", stored) is False
    assert verify_password(password + b"a" * 100, "{BLF-CRYPT}" + stored) is False


def test_non_utf8_password_is_just_wrong() -> None:
    stored = _libpass("sha512_crypt").hash(PASSWORD)
    assert verify_password(b"\xff\xfe", stored) is False
    assert verify_password(b"\xff\xfe", "{PLAIN}x") is False


# -- plaintext_secret ---------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "secret"),
    [
        ("{PLAIN}" + PASSWORD, PASSWORD.encode()),
        ("{cleartext}" + PASSWORD, PASSWORD.encode()),
        ("{CLEAR}pw", b"pw"),
        ("{PLAIN.HEX}" + PASSWORD.encode().hex(), PASSWORD.encode()),
        ("{PLAIN.B64}cHc=", b"pw"),
        # A fixed id: the hash is salted afresh at each collection, and
        # pytest-xdist's workers must collect the same names.
        pytest.param("{SSHA}" + passlib_hash.ldap_salted_sha1.hash("pw")[6:], None, id="SSHA-None"),
        ("$2b$04$" + "a" * 53, None),
        ("{NOPE}pw", None),
        ("{PLAIN.HEX}zz", None),
        ("pw", None),
    ],
)
def test_plaintext_secret(stored: str, secret: bytes | None) -> None:
    assert plaintext_secret(stored) == secret


@pytest.mark.integration
def test_plaintext_secret_of_doveadm_plain() -> None:
    stored = run_tool("doveadm", "pw", "-s", "CLEARTEXT", "-p", PASSWORD, package="dovecot-core")
    assert plaintext_secret(stored) == PASSWORD.encode()


# -- hash_password ------------------------------------------------------------


def test_hash_password_default_is_bcrypt_cost_10() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("{BLF-CRYPT}$2y$10$")
    check_vector(stored)


@pytest.mark.parametrize(
    ("scheme", "start"),
    [
        ("BLF-CRYPT", "{BLF-CRYPT}$2y$04$"),
        ("SHA512-CRYPT", "{SHA512-CRYPT}$6$"),
        ("sha256-crypt", "{SHA256-CRYPT}$5$"),
        ("ARGON2ID", "{ARGON2ID}$argon2id$"),
        ("ARGON2I", "{ARGON2I}$argon2i$"),
        ("SSHA", "{SSHA}"),
        ("SSHA256", "{SSHA256}"),
        ("SSHA512", "{SSHA512}"),
        ("PLAIN", "{PLAIN}"),
        ("CLEARTEXT", "{CLEARTEXT}"),
    ],
)
def test_hash_password_round_trip(scheme: str, start: str) -> None:
    rounds = {"BLF-CRYPT": 4, "ARGON2ID": 1, "ARGON2I": 1}.get(scheme)
    stored = hash_password(PASSWORD, scheme, rounds=rounds)
    assert stored.startswith(start)
    check_vector(stored)


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID", "SSHA512", "PLAIN"])
def test_hash_password_is_accepted_by_dovecot(scheme: str) -> None:
    need_program("doveadm", "dovecot-core")
    stored = hash_password(PASSWORD, scheme, rounds=4 if scheme == "BLF-CRYPT" else None)
    ok = subprocess.run(["doveadm", "pw", "-t", stored, "-p", PASSWORD], capture_output=True)
    bad = subprocess.run(["doveadm", "pw", "-t", stored, "-p", WRONG], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0


@pytest.mark.integration
def test_hash_password_bare_is_accepted_by_htpasswd(tmp_path: Any) -> None:
    need_program("htpasswd", "apache2-utils")
    stored = hash_password(PASSWORD, rounds=4, prefix=False)
    assert stored.startswith("$2y$04$")
    path = tmp_path / "users"
    path.write_text(f"alice:{stored}\n")
    ok = subprocess.run(["htpasswd", "-vb", str(path), "alice", PASSWORD], capture_output=True)
    bad = subprocess.run(["htpasswd", "-vb", str(path), "alice", WRONG], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0


def test_hash_password_prefix_stays_on_unprefixed_schemes() -> None:
    assert hash_password("pw", "PLAIN", prefix=False) == "{PLAIN}pw"
    assert hash_password("pw", "SSHA", prefix=False).startswith("{SSHA}")


def test_hash_password_refuses() -> None:
    with pytest.raises(UnknownScheme):
        hash_password("pw", "MD4")
    with pytest.raises(ValueError):
        hash_password("a" * 73)


# -- off the reactor thread, and the dummy ------------------------------------


def test_verify_in_thread_uses_the_thread_pool() -> None:
    reactor = InlineReactor()
    stored = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    assert result_of(verify_in_thread(reactor, PASSWORD.encode(), stored)) is True
    assert result_of(verify_in_thread(reactor, WRONG.encode(), stored)) is False
    assert reactor.pool.calls == ["verify_password", "verify_password"]


def test_verify_in_thread_passes_the_default_scheme() -> None:
    stored = passlib_hash.des_crypt.hash("s3cret")
    d = verify_in_thread(InlineReactor(), b"s3cret", stored, default_scheme="CRYPT")
    assert result_of(d) is True


def test_verify_in_thread_fails_on_unknown_scheme() -> None:
    with pytest.raises(UnknownScheme):
        result_of(verify_in_thread(InlineReactor(), b"pw", "{NOPE}pw"))


def test_dummy_hash_is_bcrypt_cost_10() -> None:
    assert DUMMY_HASH.startswith("$2y$10$")
    assert verify_password(b"anything", DUMMY_HASH) is False


def test_dummy_verify_always_says_no() -> None:
    assert dummy_verify(b"pw", "{PLAIN}pw") is False
    assert dummy_verify(b"pw", "{NOPE}pw") is False
    assert dummy_verify(b"pw") is False
    reactor = InlineReactor()
    assert result_of(dummy_verify_in_thread(reactor, b"pw", DUMMY_HASH)) is False
    assert reactor.pool.calls == ["dummy_verify"]
    # Where a real check is inline (a cheap scheme), so is the dummy: the
    # thread hop would tell them apart.
    assert result_of(dummy_verify_in_thread(reactor, b"pw", "{PLAIN}pw")) is False
    assert reactor.pool.calls == ["dummy_verify"]


def test_cheap_schemes_skip_the_thread_pool_and_kdfs_do_not():
    """Clear text and plain digests are checked inline (the thread hop costs
    more); bcrypt and friends always go to the pool."""
    from popgate.cred import schemes

    class NoThreads:
        def getThreadPool(self):
            raise AssertionError("a cheap scheme went to the thread pool")

    d = schemes.verify_in_thread(NoThreads(), b"pw", "{PLAIN}pw")
    assert d.result is True
    d = schemes.verify_in_thread(NoThreads(), b"nope", schemes.hash_password("pw", "SSHA"))
    assert d.result is False
    assert not schemes.is_cheap(schemes.DUMMY_HASH)
    assert not schemes.is_cheap("{ARGON2ID}$argon2id$x")
