"""
Tests for L{popgate.cred.htpasswd}: files written by Apache's own
C{htpasswd}, checked synchronously through an inline thread pool.  The
fast tests read a file C{htpasswd} made once (L{HTPASSWD_MADE}); the
integration tests run C{htpasswd} itself, so a new version is checked too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from passlib import hash as passlib_hash
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from popgate.cred.htpasswd import HtpasswdChecker, make_checker
from popgate.cred.userinfo import UserInfo
from popgate.errors import PermanentFailure, TemporaryFailure
from popgate.interfaces import IUserLookup
from popgate.stores import nowait
from tests.services import need_program
from tests.test_schemes import InlineReactor, QueueingReactor, result_of

# htpasswd flag -> (user, password); DES crypt only looks at 8 characters.
USERS = {
    "-B": ("bcrypt", "bcrypt pässword"),
    "-2": ("sha256", "sha256 password"),
    "-5": ("sha512", "sha512 password"),
    "-m": ("apr1", "apr1 password"),
    "-s": ("sha1", "sha1 password"),
    "-d": ("des", "desword"),
}


# What `htpasswd -b[c]FLAG users USER PASSWORD` (apache2-utils 2.4.71)
# wrote for each of USERS, in order; test_htpasswd_today_makes_what_we_read
# runs the tool again.
HTPASSWD_MADE = """\
bcrypt:$2y$05$CKi8ruy0JAVeLAxqtaTTae.BrPyrs3cPbc0emO9ZxYfuwlPKD342K
sha256:$5$cIeCYk.ZZjpgudlG$f2m9baQuZYZnH3SbOKP6g58BCjFEWnw32/LlaSgXTkC
sha512:$6$KnLMo8hwDbaVXtKE$omEnxwAqVxxbKoEqiAD8v4gXIeqdFIoJxAEf7WFkwvu2Nc8V9mqFGu79e5xjTGGQHwsbgVKZqD9PVoP2QBFgk0
apr1:$apr1$f4Am3S/1$/Y0bk2kNaPQfnbhlt7vC8.
sha1:{SHA}EDD7bp6f4MNI2a64dInframRW6k=
des:lXTeEshjRMbBY
"""


def htpasswd(*args: str) -> None:
    subprocess.run(["htpasswd", *args], check=True, capture_output=True)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """A file with one user per htpasswd format, as htpasswd made it."""
    path = tmp_path / "users"
    path.write_text(HTPASSWD_MADE)
    return path


@pytest.fixture
def made_now(tmp_path: Path) -> Path:
    """A file with one user per htpasswd format, made by htpasswd now."""
    need_program("htpasswd", "apache2-utils")
    path = tmp_path / "made-now"
    for number, (flag, (user, password)) in enumerate(USERS.items()):
        create = "c" if number == 0 else ""
        htpasswd(f"-b{create}{flag[1:]}", str(path), user, password)
    return path


@pytest.fixture
def reactor() -> InlineReactor:
    return InlineReactor()


def login(checker: HtpasswdChecker, user: bytes | str, password: bytes | str) -> str:
    user_b = user.encode() if isinstance(user, str) else user
    password_b = password.encode() if isinstance(password, str) else password
    avatar_id: str = result_of(checker.requestAvatarId(UsernamePassword(user_b, password_b)))
    return avatar_id


def test_interfaces(users_file: Path, reactor: InlineReactor) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    assert verifyObject(ICredentialsChecker, checker)
    assert verifyObject(IUserLookup, checker)


@pytest.mark.parametrize("flag", list(USERS))
def test_every_format_logs_in(users_file: Path, reactor: InlineReactor, flag: str) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    user, password = USERS[flag]
    assert login(checker, user, password) == user
    with pytest.raises(UnauthorizedLogin):
        login(checker, user, "x" + password)


@pytest.mark.integration
def test_htpasswd_today_makes_what_we_read(made_now: Path, reactor: InlineReactor) -> None:
    def formats(text: str) -> list[str]:  # each line without its salt and hash
        return [re.sub(r"[A-Za-z0-9./+=]{8,}", "", line) for line in text.splitlines()]

    assert formats(made_now.read_text()) == formats(HTPASSWD_MADE)
    checker = HtpasswdChecker(str(made_now), reactor)
    for user, password in USERS.values():
        assert login(checker, user, password) == user
        with pytest.raises(UnauthorizedLogin):
            login(checker, user, "x" + password)


def test_the_file_and_the_hashing_are_off_the_reactor(
    users_file: Path, reactor: InlineReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a kernel that cannot stat from its caches without waiting: every
    # stat in the pool (test_passwdfile checks the inline one).
    monkeypatch.setattr(nowait, "stat_cached", lambda path: None)
    checker = HtpasswdChecker(str(users_file), reactor)
    login(checker, "bcrypt", "bcrypt pässword")
    assert reactor.pool.calls == ["_read_if_changed", "verify_password"]
    assert result_of(checker.lookup_user("bcrypt")) == UserInfo("bcrypt")
    assert reactor.pool.calls[2:] == ["_read_if_changed"]


def test_unknown_user_and_wrong_password_look_alike(
    users_file: Path, reactor: InlineReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nowait, "stat_cached", lambda path: None)  # every stat in the pool
    checker = HtpasswdChecker(str(users_file), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, "nobody", "bcrypt pässword")
    with pytest.raises(UnauthorizedLogin):
        login(checker, "bcrypt", "wrong")
    # The unknown user cost the same steps: a hash check (against the
    # file's first hash, bcrypt) in the thread pool.
    assert reactor.pool.calls == ["_read_if_changed", "dummy_verify", "_read_if_changed", "verify_password"]
    stand_in = reactor.pool.args[1][1]
    assert stand_in.startswith("$2y$") and stand_in in users_file.read_text()


def test_undecodable_user_name(users_file: Path, reactor: InlineReactor) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, b"\xff\xfe", "bcrypt pässword")


@pytest.mark.integration
def test_reload_on_change(made_now: Path, reactor: InlineReactor) -> None:
    """The file htpasswd rewrites in place (adding, then deleting a user)."""
    checker = HtpasswdChecker(str(made_now), reactor)
    with pytest.raises(UnauthorizedLogin):
        login(checker, "newcomer", "new password")
    htpasswd("-bB", str(made_now), "newcomer", "new password")
    assert login(checker, "newcomer", "new password") == "newcomer"
    htpasswd("-D", str(made_now), "newcomer")
    with pytest.raises(UnauthorizedLogin):
        login(checker, "newcomer", "new password")


def test_reload_on_same_size_change(tmp_path: Path, reactor: InlineReactor) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{SHA}" + passlib_hash.ldap_sha1.hash("password1")[5:] + "\n")
    checker = HtpasswdChecker(str(path), reactor)
    assert login(checker, "alice", "password1") == "alice"
    before = path.stat()
    path.write_text("alice:{SHA}" + passlib_hash.ldap_sha1.hash("password2")[5:] + "\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert path.stat().st_size == before.st_size
    assert login(checker, "alice", "password2") == "alice"


def test_reload_by_atomic_rename(tmp_path: Path, reactor: InlineReactor) -> None:
    path = tmp_path / "users"
    path.write_text("alice:" + passlib_hash.apr_md5_crypt.hash("one") + "\n")
    checker = HtpasswdChecker(str(path), reactor)
    assert login(checker, "alice", "one") == "alice"
    new = tmp_path / "users.new"
    new.write_text("alice:" + passlib_hash.apr_md5_crypt.hash("two") + "\n")
    os.replace(new, path)
    assert login(checker, "alice", "two") == "alice"


def test_parse_only_on_change(users_file: Path, reactor: InlineReactor) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    first = result_of(checker._file.users())
    assert result_of(checker._file.users()) is first


def test_two_logins_reading_one_change_report_it_once(users_file: Path) -> None:
    """Both logins read the changed file in the pool; the second reading changes nothing."""
    reactor = QueueingReactor()
    checker = HtpasswdChecker(str(users_file), reactor)
    with capturedLogs() as events:
        first = checker.requestAvatarId(UsernamePassword(b"sha1", b"sha1 password"))
        second = checker.requestAvatarId(UsernamePassword(b"apr1", b"apr1 password"))
        assert not first.called and not second.called  # nothing ran on the reactor
        reactor.run_queued()
    assert (result_of(first), result_of(second)) == ("sha1", "apr1")
    assert [formatEvent(e) for e in events].count(f"{users_file}: 6 users") == 1


def test_comments_blank_lines_crlf_and_extra_fields(
    tmp_path: Path, reactor: InlineReactor
) -> None:
    path = tmp_path / "users"
    password = "Sw0rdfish!"
    hashed = passlib_hash.apr_md5_crypt.hash(password)
    path.write_bytes(
        b"# a comment\r\n\r\n   \n"
        + f"alice:{hashed}\r\n".encode()
        + f"bob:{hashed}:a comment field\n".encode()
        + f"malformed line {password}\n".encode()
        + f"alice:{passlib_hash.apr_md5_crypt.hash('second')}\n".encode()
    )
    checker = HtpasswdChecker(str(path), reactor)
    with capturedLogs() as events:
        assert login(checker, "alice", password) == "alice"  # the first entry wins
        with pytest.raises(UnauthorizedLogin):
            login(checker, "alice", "second")
    assert login(checker, "bob", password) == "bob"
    text = "\n".join(formatEvent(e) for e in events)
    assert ":6: malformed line ignored" in text
    assert "user alice listed again" in text
    assert hashed not in text and password not in text


def test_missing_file_is_a_temporary_failure(users_file: Path, reactor: InlineReactor) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    assert login(checker, "bcrypt", "bcrypt pässword") == "bcrypt"
    users_file.unlink()
    with capturedLogs() as events:
        with pytest.raises(TemporaryFailure):
            login(checker, "bcrypt", "bcrypt pässword")
        with pytest.raises(TemporaryFailure):
            result_of(checker.lookup_user("bcrypt"))
    errors = [e for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1  # logged once per outage
    assert "cannot read user file" in formatEvent(errors[0])


def test_unreadable_file_is_a_temporary_failure(tmp_path: Path, reactor: InlineReactor) -> None:
    # A directory where the file should be: unreadable even for root.
    checker = HtpasswdChecker(str(tmp_path), reactor)
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", "pw")


def test_unknown_scheme_is_a_permanent_failure_for_that_user(
    tmp_path: Path, reactor: InlineReactor
) -> None:
    path = tmp_path / "users"
    path.write_text(
        "alice:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7\n"
        "bob:" + passlib_hash.apr_md5_crypt.hash("pw") + "\n"
    )
    checker = HtpasswdChecker(str(path), reactor)
    with capturedLogs() as events:
        with pytest.raises(PermanentFailure):
            login(checker, "alice", "pw")
    assert any("for user alice: unsupported crypt format $y$" in formatEvent(e) for e in events)
    assert login(checker, "bob", "pw") == "bob"


def test_lookup_user(users_file: Path, reactor: InlineReactor) -> None:
    checker = HtpasswdChecker(str(users_file), reactor)
    assert result_of(checker.lookup_user("apr1")) == UserInfo("apr1")
    assert result_of(checker.lookup_user(b"apr1")) == UserInfo("apr1")
    assert result_of(checker.lookup_user("nobody")) is None
    assert result_of(checker.lookup_user(b"\xff")) is None


def test_make_checker(users_file: Path) -> None:
    checker = make_checker(str(users_file))
    assert isinstance(checker, HtpasswdChecker)
    assert checker.path == str(users_file)
    with pytest.raises(ValueError, match="path"):
        make_checker("")
    with pytest.raises(ValueError, match="no such file"):
        make_checker(str(users_file) + ".missing")


def test_dropin_makes_this_checker(users_file: Path) -> None:
    from twisted.plugins.popgate_plugin import htpasswd as factory

    assert isinstance(factory.generateChecker(str(users_file)), HtpasswdChecker)


def test_case_local_part_exact_domain_not(tmp_path: Path, reactor: InlineReactor) -> None:
    """
    The file decides the local part (Apache's htpasswd is case-sensitive
    and so is popgate's reading of it); the domain is case-insensitive and
    the avatar id spells it in lower case, whatever the file or the client.
    """
    path = tmp_path / "users"
    sha1 = "{SHA}" + "W6ph5Mm5Pz8GgiULbPgzG37mj9g="  # "password"
    path.write_text(f"Bob@Example.ORG:{sha1}\nbob@example.org:{{SHA}}other\ncarol:{sha1}\nCarol:{sha1}\n")
    checker = HtpasswdChecker(str(path), reactor)
    for typed in ("Bob@Example.ORG", "Bob@example.org", "Bob@EXAMPLE.ORG"):
        assert login(checker, typed, "password") == "Bob@example.org"
    # Another local part is another user: the second line's, whose hash is not this one.
    for typed in ("bob@example.org", "BOB@example.org"):
        with pytest.raises(UnauthorizedLogin):
            login(checker, typed, "password")
    assert (login(checker, "carol", "password"), login(checker, "Carol", "password")) == ("carol", "Carol")
    assert result_of(checker.lookup_user("Bob@EXAMPLE.org")) == UserInfo("Bob@example.org")
    assert result_of(checker.lookup_user("bob@EXAMPLE.org")) == UserInfo("bob@example.org")
    assert result_of(checker.lookup_user("BOB@example.org")) is None


def test_a_domain_case_variant_in_the_file_is_a_duplicate(tmp_path: Path, reactor: InlineReactor) -> None:
    path = tmp_path / "users"
    path.write_text("bob@example.org:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nbob@Example.org:{SHA}x\n")
    checker = HtpasswdChecker(str(path), reactor)
    with capturedLogs() as events:
        assert login(checker, "bob@EXAMPLE.org", "password") == "bob@example.org"
    assert any("listed again; the first entry wins" in formatEvent(e) for e in events)
