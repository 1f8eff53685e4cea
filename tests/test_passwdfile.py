"""
Tests for L{popgate.cred.passwdfile}: Dovecot passwd-files with hashes made
by doveadm, openssl and the hashing libraries, including the APOP and
CRAM-MD5 path that needs {PLAIN} passwords.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from passlib import hash as passlib_hash
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    CramMD5Credentials,
    IUsernameHashedPassword,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from popgate.cred import schemes
from popgate.cred.passwdfile import PasswdFileChecker, make_checker
from popgate.cred.userinfo import UserInfo
from popgate.errors import PermanentFailure, TemporaryFailure
from popgate.interfaces import IUserLookup
from popgate.stores import nowait
from tests.services import need
from tests.test_schemes import InlineReactor, result_of, run_tool

SHA512_CRYPT = passlib_hash.sha512_crypt.using(rounds=5000)


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """RFC 1939 APOP: the digest is hex MD5 of the greeting's challenge + password."""

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest

    def checkPassword(self, password: bytes) -> bool:
        return hashlib.md5(self.challenge + password).hexdigest().encode() == self.digest


CHALLENGE = b"<1896.697170952@dbc.mtview.ca.us>"


def apop(user: bytes, password: bytes) -> APOPCredentials:
    return APOPCredentials(CHALLENGE, user, hashlib.md5(CHALLENGE + password).hexdigest().encode())


@pytest.fixture
def reactor() -> InlineReactor:
    return InlineReactor()


@pytest.fixture
def passwd_file(tmp_path: Path) -> Path:
    """A passwd-file in the shapes Dovecot's documentation shows."""
    bcrypt_hash = bcrypt.hashpw(b"alice pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    lines = [
        "# Dovecot passwd-file",
        "",
        f"alice:{{BLF-CRYPT}}{bcrypt_hash}:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G",
        "bob:{PLAIN}bob pw:1001:1001:Bob:/home/bob:/bin/false",
        "carol:{PLAIN.HEX}" + b"carol pw".hex(),
        f"dave:{SHA512_CRYPT.hash('dave pw')}",  # bare: CRYPT, as in Dovecot
        f"erin:{passlib_hash.des_crypt.hash('erin pw')}::",
        f"frank:{{SSHA512}}{passlib_hash.ldap_salted_sha512.hash('frank pw')[9:]}",
        "gina@example.org:{CLEARTEXT}gina pw",
        "nopass",
        "empty:",
    ]
    path = tmp_path / "passwd"
    path.write_text("\n".join(lines) + "\n")
    return path


def login(checker: PasswdFileChecker, user: str, password: str) -> str:
    credentials = UsernamePassword(user.encode(), password.encode())
    avatar_id: str = result_of(checker.requestAvatarId(credentials))
    return avatar_id


def test_interfaces(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    assert verifyObject(ICredentialsChecker, checker)
    assert verifyObject(IUserLookup, checker)
    assert IUsernameHashedPassword in checker.credentialInterfaces


USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "gina@example.org"]


@pytest.mark.parametrize("user", USERS)
def test_every_user_logs_in(passwd_file: Path, reactor: InlineReactor, user: str) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    password = user.split("@")[0] + " pw"
    assert login(checker, user, password) == user
    with pytest.raises(UnauthorizedLogin):
        login(checker, user, "wrong")


@pytest.mark.integration
@pytest.mark.parametrize(
    "scheme", ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID", "SSHA256", "PLAIN-MD5", "CRAM-MD5"]
)
def test_doveadm_hashes(tmp_path: Path, reactor: InlineReactor, scheme: str) -> None:
    stored = run_tool("doveadm", "pw", "-s", scheme, "-p", "Sw0rdfish", package="dovecot-core")
    path = tmp_path / "passwd"
    path.write_text(f"alice:{stored}:1000:1000::/home/alice::\n")
    checker = PasswdFileChecker(str(path), reactor)
    if scheme == "CRAM-MD5":  # a scheme only Dovecot's CRAM-MD5 mechanism uses
        with pytest.raises(PermanentFailure):
            login(checker, "alice", "Sw0rdfish")
        return
    assert login(checker, "alice", "Sw0rdfish") == "alice"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "alice", "Sw0rdfish!")


@pytest.mark.integration
def test_openssl_bare_crypt(tmp_path: Path, reactor: InlineReactor) -> None:
    stored = run_tool("openssl", "passwd", "-5", "Sw0rdfish", package="openssl")
    path = tmp_path / "passwd"
    path.write_text(f"alice:{stored}:1000:1000::/home/alice::\n")
    assert login(PasswdFileChecker(str(path), reactor), "alice", "Sw0rdfish") == "alice"


def test_lines_without_a_password_never_log_in(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    for user in ("nopass", "empty"):
        for password in ("", "x"):
            with pytest.raises(UnauthorizedLogin):
                login(checker, user, password)


def test_unknown_user_costs_a_hash_check(
    passwd_file: Path, reactor: InlineReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nowait, "stat_cached", lambda path: None)  # every stat in the pool
    checker = PasswdFileChecker(str(passwd_file), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, "zed", "alice pw")
    with pytest.raises(UnauthorizedLogin):
        login(checker, "alice", "zed pw")
    assert reactor.pool.calls == ["_read_if_changed", "dummy_verify", "_read_if_changed", "verify_password"]


def test_unknown_user_is_checked_against_a_hash_from_the_file(
    tmp_path: Path, reactor: InlineReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[tuple[bytes, str]] = []
    real = schemes.dummy_verify

    def spy(password: bytes, stored: str, **kw: Any) -> bool:
        checked.append((password, stored))
        return real(password, stored, **kw)

    monkeypatch.setattr(schemes, "dummy_verify", spy)
    ssha = "{SSHA}" + passlib_hash.ldap_salted_sha1.hash("alice pw")[6:]
    path = tmp_path / "passwd"
    path.write_text(f"bob:{{PLAIN}}bob pw\nalice:{ssha}\n")
    checker = PasswdFileChecker(str(path), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, "zed", "zed pw")
    # Never bob's clear-text password: alice's hash costs what a real check
    # does, inline as a real SSHA check is (no thread hop to tell them apart).
    assert checked == [(b"zed pw", ssha)]
    assert reactor.pool.calls == ["_read_if_changed"]


def test_a_file_of_clear_text_passwords_has_a_clear_text_stand_in(
    tmp_path: Path, reactor: InlineReactor
) -> None:
    path = tmp_path / "passwd"
    path.write_text("bob:{PLAIN}bob pw\n")
    checker = PasswdFileChecker(str(path), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, "zed", "bob pw")
    # Not bcrypt (that would make unknown users slow), never bob's password.
    stand_in = checker._timing.stand_in
    assert stand_in.startswith("{PLAIN}") and "bob pw" not in stand_in
    assert reactor.pool.calls == ["_read_if_changed"]


# -- APOP and CRAM-MD5 --------------------------------------------------------


@pytest.mark.parametrize("user", ["bob", "carol", "gina@example.org"])
def test_apop_with_plain_password(passwd_file: Path, reactor: InlineReactor, user: str) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    password = user.split("@")[0].encode() + b" pw"
    assert result_of(checker.requestAvatarId(apop(user.encode(), password))) == user
    with pytest.raises(UnauthorizedLogin):
        result_of(checker.requestAvatarId(apop(user.encode(), b"wrong")))
    assert set(reactor.pool.calls) == {"_read_if_changed"}  # a cheap MD5: no hash in a thread


def test_apop_needs_a_plain_password(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    with pytest.raises(UnauthorizedLogin):
        result_of(checker.requestAvatarId(apop(b"alice", b"alice pw")))
    with pytest.raises(UnauthorizedLogin):
        result_of(checker.requestAvatarId(apop(b"zed", b"zed pw")))
    with pytest.raises(UnauthorizedLogin):
        result_of(checker.requestAvatarId(apop(b"\xff", b"pw")))


def test_cram_md5_with_plain_password(passwd_file: Path, reactor: InlineReactor) -> None:
    import hmac

    checker = PasswdFileChecker(str(passwd_file), reactor)
    credentials = CramMD5Credentials(host="pop.example.org")  # type: ignore[no-untyped-call]
    challenge = credentials.getChallenge()  # type: ignore[no-untyped-call]
    credentials.username = b"bob"
    credentials.response = hmac.new(b"bob pw", challenge, "md5").hexdigest().encode()
    assert result_of(checker.requestAvatarId(credentials)) == "bob"
    credentials.response = hmac.new(b"nope", challenge, "md5").hexdigest().encode()
    with pytest.raises(UnauthorizedLogin):
        result_of(checker.requestAvatarId(credentials))


# -- the file -----------------------------------------------------------------


def test_reload_on_change(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    assert login(checker, "bob", "bob pw") == "bob"
    text = passwd_file.read_text().replace("{PLAIN}bob pw:", "{PLAIN}new pw:")
    new = passwd_file.with_suffix(".new")
    new.write_text(text)
    os.replace(new, passwd_file)
    assert login(checker, "bob", "new pw") == "bob"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "bob", "bob pw")


def test_an_unchanged_file_is_told_without_a_thread(passwd_file: Path,
                                                    reactor: InlineReactor) -> None:
    """Once read, the file's stat comes from the kernel's caches on the
    reactor thread (a trip to a thread costs more than a cheap check); an
    edit is still seen at the next login, read in the pool."""
    need(nowait.stat_cached(str(passwd_file)) is not None,
         "this kernel cannot stat from its caches without waiting (openat2)")
    checker = PasswdFileChecker(str(passwd_file), reactor)
    assert login(checker, "bob", "bob pw") == "bob"
    assert login(checker, "carol", "carol pw") == "carol"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "bob", "wrong")
    assert reactor.pool.calls == ["_read_if_changed"]
    # (A new size: a rewrite within one clock tick keeps the mtime.)
    passwd_file.write_text(passwd_file.read_text().replace("{PLAIN}bob pw:", "{PLAIN}newer pw:"))
    assert login(checker, "bob", "newer pw") == "bob"
    assert reactor.pool.calls == ["_read_if_changed"] * 2


def test_a_file_gone_after_a_read_is_a_temporary_failure(passwd_file: Path,
                                                          reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    assert login(checker, "bob", "bob pw") == "bob"
    passwd_file.unlink()
    with pytest.raises(TemporaryFailure):
        login(checker, "bob", "bob pw")


def test_malformed_lines_are_logged_without_content(
    passwd_file: Path, reactor: InlineReactor
) -> None:
    with passwd_file.open("ab") as f:
        f.write(b"\xff\xfe:{PLAIN}Sw0rdfish\n:{PLAIN}Sw0rdfish\nbob:{PLAIN}Sw0rdfish\n")
    checker = PasswdFileChecker(str(passwd_file), reactor)
    with capturedLogs() as events:
        assert login(checker, "bob", "bob pw") == "bob"
    text = "\n".join(formatEvent(e) for e in events)
    assert "passwd:12: malformed line ignored" in text
    assert "passwd:13: malformed line ignored" in text
    assert "passwd:14: user bob listed again" in text
    assert "Sw0rdfish" not in text


def test_missing_file_is_a_temporary_failure(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    passwd_file.unlink()
    with pytest.raises(TemporaryFailure):
        login(checker, "bob", "bob pw")
    with pytest.raises(TemporaryFailure):
        result_of(checker.requestAvatarId(apop(b"bob", b"bob pw")))
    passwd_file.write_text("bob:{PLAIN}back\n")
    assert login(checker, "bob", "back") == "bob"


def test_lookup_user(passwd_file: Path, reactor: InlineReactor) -> None:
    checker = PasswdFileChecker(str(passwd_file), reactor)
    assert result_of(checker.lookup_user("gina@example.org")) == UserInfo("gina@example.org")
    assert result_of(checker.lookup_user("nobody")) is None


def test_make_checker(passwd_file: Path, tmp_path: Path) -> None:
    assert isinstance(make_checker(str(passwd_file)), PasswdFileChecker)
    with pytest.raises(ValueError, match="passwd-file"):
        make_checker("  ")
    with pytest.raises(ValueError, match="no such file"):
        make_checker(str(tmp_path / "missing"))


def test_dropin_makes_this_checker(passwd_file: Path) -> None:
    from twisted.plugins.popgate_plugin import passwd_file as factory

    assert isinstance(factory.generateChecker(str(passwd_file)), PasswdFileChecker)


def test_case_local_part_exact_domain_not(tmp_path: Path, reactor: InlineReactor) -> None:
    """As Dovecot reads a passwd-file with auth_username_format=%u: the local
    part as written; popgate also lower-cases the domain (RFC 5321 2.4)."""
    path = tmp_path / "passwd"
    path.write_text("Gina@Example.org:{PLAIN}gina pw\n")
    checker = PasswdFileChecker(str(path), reactor)
    assert login(checker, "Gina@EXAMPLE.ORG", "gina pw") == "Gina@example.org"
    assert result_of(checker.requestAvatarId(apop(b"Gina@example.ORG", b"gina pw"))) == "Gina@example.org"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "gina@example.org", "gina pw")
    assert result_of(checker.lookup_user("Gina@example.org")) == UserInfo("Gina@example.org")
    assert result_of(checker.lookup_user("gina@example.org")) is None
