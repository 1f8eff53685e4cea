"""
LOGIN-DELAY and EXPIRE values (popgate.policy): parsing, the options and
TOML keys, each user store's per-user fields, and the CAPA lines of every
state, byte for byte (RFC 2449 6.5, 6.7; tags as the IANA registry spells
them).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.python import usage

from popgate import config as config_file
from popgate.build import session_settings
from popgate.cred.cache import CachingChecker
from popgate.cred.chain import ChainedChecker
from popgate.cred.ldap import LDAPChecker
from popgate.cred.ldap_directory import Entry
from popgate.cred.ldap_settings import parse_args as ldap_args
from popgate.cred.names import normalize_user
from popgate.cred.passwdfile import PasswdFileChecker
from popgate.cred.sql import SQLChecker
from popgate.cred.sql_query import rows
from popgate.cred.userinfo import AvatarId
from popgate.policy import (
    NEVER,
    Policy,
    UserPolicy,
    expire_text,
    for_user,
    parse_expire,
    parse_login_delay,
    user_policy,
    varying_fields,
)
from popgate.pop3.policy import capabilities
from popgate.pop3.settings import SessionSettings
from popgate.settings import resolve
from tests.helpers import InlineReactor
from tests.reactor_thread import run, start_reactor

HEAD = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, text: str, **fields: Any) -> None:
        self.lines.append(text.format(**fields))


# -- values


def test_parse_login_delay() -> None:
    assert parse_login_delay("900") == 900
    assert parse_login_delay(" 0 ") == 0
    assert parse_login_delay(60) == 60
    for bad in ("-1", "1.5", "ten", "", True, 2**31, "\u0661"):
        with pytest.raises(ValueError):
            parse_login_delay(bad)


def test_parse_expire() -> None:
    assert parse_expire("31") == 31.0
    assert parse_expire(0) == 0.0
    assert parse_expire("never") == NEVER
    assert parse_expire("NEVER") == NEVER
    for bad in ("-2", "forever", "1.5", None):
        with pytest.raises(ValueError):
            parse_expire(bad)
    assert expire_text(NEVER) == "NEVER"
    assert expire_text(31.0) == "31"
    assert expire_text(0.0) == "0"


def test_user_policy_overrides_only_what_it_sets() -> None:
    server = Policy(900, 31.0)
    assert UserPolicy(login_delay=60).over(server) == Policy(60, 31.0)
    assert UserPolicy(expire=NEVER).over(server) == Policy(900, NEVER)
    assert UserPolicy(login_delay=0, expire=0.0).over(server) == Policy(0, 0.0)
    assert for_user("alice", server) == server
    assert for_user(AvatarId("alice", None, UserPolicy(expire=7.0)), server) == Policy(900, 7.0)
    assert for_user(AvatarId("alice", None, UserPolicy(expire=7.0)), None) == Policy(0, 7.0)


def test_a_bad_user_value_is_logged_and_ignored() -> None:
    log = _Log()
    assert user_policy("abc", "12", "bob", log) == UserPolicy(expire=12.0)
    assert log.lines == ["ignoring the login_delay of user 'bob': must be a whole number of "
                         "seconds, not 'abc'"]
    assert user_policy(None, "", "bob", log) is None
    assert user_policy(b"30", b"never", "bob", log) == UserPolicy(30, NEVER)


def test_the_policy_survives_the_domain_being_lower_cased() -> None:
    name = normalize_user(AvatarId("bob@Example.ORG", "/m/bob", UserPolicy(login_delay=5)))
    assert name == "bob@example.org"
    assert name.mail_location == "/m/bob" and name.policy == UserPolicy(login_delay=5)


# -- settings


def test_options_and_their_toml_twins(tmp_path: Path) -> None:
    assert resolve({}).login_delay == 0 and resolve({}).expire is None
    config = resolve({"login_delay": "900", "expire": "NEVER"})
    assert (config.login_delay, config.expire) == (900, "never")
    settings = session_settings(resolve({"expire": "031"}), "h")
    assert (settings.login_delay, settings.expire) == (0, 31.0)
    assert session_settings(resolve({"expire": "never"}), "h").expire == NEVER
    with pytest.raises(usage.UsageError, match="--expire: must be a whole number of days"):
        resolve({"expire": "soon"})
    with pytest.raises(usage.UsageError, match="--login-delay must be at least 0"):
        resolve({"login_delay": "-5"})
    toml = tmp_path / "popgate.toml"
    toml.write_text('login_delay = 300\nexpire = 14\n')
    assert resolve({}, config_file.load(str(toml))).expire == "14"
    toml.write_text('expire = "never"\n')
    assert resolve({}, config_file.load(str(toml))).expire == "never"
    toml.write_text('expire = true\n')
    with pytest.raises(usage.UsageError, match="expire has the wrong type"):
        config_file.load(str(toml))


# -- CAPA, before and after login


class _Varying:
    """A user store whose users may set the given fields."""

    credentialInterfaces = ()

    def __init__(self, *fields: str) -> None:
        self.fields = frozenset(fields)

    def policy_fields(self) -> frozenset[str]:
        return self.fields


class _Portal:
    def __init__(self, *checkers: Any) -> None:
        self.checkers = {i: c for i, c in enumerate(checkers)}


def _varying(*fields: str) -> Any:
    from zope.interface import alsoProvides

    from popgate.interfaces import IPerUserPolicy

    checker = _Varying(*fields)
    alsoProvides(checker, IPerUserPolicy)
    return checker


@pytest.mark.parametrize(("settings", "portal", "policy", "lines"), [
    # Nothing configured: nothing advertised, before or after login.
    (SessionSettings(), _Portal(), None, []),
    (SessionSettings(), _Portal(), Policy(), []),
    # Server-wide only: the same value in both states, no USER.
    (SessionSettings(login_delay=900), _Portal(), None, [b"LOGIN-DELAY 900"]),
    (SessionSettings(login_delay=900), _Portal(), Policy(900), [b"LOGIN-DELAY 900"]),
    (SessionSettings(expire=31.0), _Portal(), None, [b"EXPIRE 31"]),
    (SessionSettings(expire=0.0), _Portal(), None, [b"EXPIRE 0"]),
    (SessionSettings(expire=NEVER), _Portal(), None, [b"EXPIRE NEVER"]),
    (SessionSettings(expire=NEVER), _Portal(), Policy(), [b"EXPIRE NEVER"]),
    # Per-user values: USER before login, the user's own value after.
    (SessionSettings(login_delay=900, expire=31.0), _Portal(_varying("login_delay", "expire")),
     None, [b"LOGIN-DELAY 900 USER", b"EXPIRE 31 USER"]),
    (SessionSettings(login_delay=900, expire=31.0), _Portal(_varying("login_delay", "expire")),
     Policy(1800, 0.0), [b"LOGIN-DELAY 1800", b"EXPIRE 0"]),
    (SessionSettings(), _Portal(_varying("expire")), None, [b"EXPIRE NEVER USER"]),
    (SessionSettings(), _Portal(_varying("expire")), Policy(0, 7.0), [b"EXPIRE 7"]),
    (SessionSettings(), _Portal(_varying("login_delay")), None, [b"LOGIN-DELAY 0 USER"]),
    (SessionSettings(), _Portal(_varying("login_delay")), Policy(0), [b"LOGIN-DELAY 0"]),
    # Through the auth cache and a chain of user stores.
    (SessionSettings(expire=NEVER),
     _Portal(CachingChecker(ChainedChecker([_Varying(), _varying("expire")]),
                            clock=InlineReactor())),
     None, [b"EXPIRE NEVER USER"]),
])
def test_capability_lines(settings: SessionSettings, portal: Any, policy: Policy | None,
                          lines: list[bytes]) -> None:
    assert capabilities(settings, portal, policy) == lines


def test_varying_fields_walks_wrappers_once() -> None:
    inner = _varying("login_delay")
    chain = ChainedChecker([inner, inner])
    assert varying_fields([chain, CachingChecker(chain, clock=InlineReactor())]) == {"login_delay"}
    assert varying_fields([]) == frozenset()


def test_capa_over_the_protocol_in_both_states(tmp_path: Path) -> None:
    """The whole CAPA reply, before and after login, with a passwd-file
    whose users carry their own values."""
    from popgate.realm import MaildropRealm
    from popgate.stores.maildir import MaildirStore
    from tests.helpers import connect

    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}secret::::::login_delay=1800 expire=0\n"
                     "bob:{PLAIN}hunter2::::::\n")
    checker = PasswdFileChecker(str(users), InlineReactor())
    store = MaildirStore(str(tmp_path / "%n"), reactor=InlineReactor())
    from twisted.cred.portal import Portal
    from twisted.internet.task import Clock

    clock = Clock()
    portal = Portal(MaildropRealm(store, InlineReactor(), clock), [checker])
    settings = SessionSettings(login_delay=900, expire=31.0, implementation="")
    session = connect(portal, clock, settings)
    before = session.send(b"CAPA\r\n")
    assert before == (b"+OK Capability list follows\r\n" + b"\r\n".join(
        HEAD + [b"USER", b"SASL PLAIN LOGIN CRAM-MD5", b"UTF8", b"LOGIN-DELAY 900 USER",
                b"EXPIRE 31 USER"]) + b"\r\n.\r\n")
    session.login(b"alice", b"secret")
    after = session.send(b"CAPA\r\n")
    assert after == (b"+OK Capability list follows\r\n" + b"\r\n".join(
        HEAD + [b"LOGIN-DELAY 1800", b"EXPIRE 0"]) + b"\r\n.\r\n")
    other = connect(portal, clock, settings)
    other.login(b"bob", b"hunter2")
    assert other.send(b"CAPA\r\n").endswith(b"LOGIN-DELAY 900\r\nEXPIRE 31\r\n.\r\n")


# -- the user stores' per-user fields


def test_passwd_file_extra_fields(tmp_path: Path) -> None:
    entry = PasswdFileChecker.parse_line("alice:{PLAIN}x:1:1::/home/a::login_delay=60 "
                                         "userdb_expire=never userdb_mail=maildir:/m")
    assert entry is not None and entry.policy == UserPolicy(60, NEVER)
    plain = PasswdFileChecker.parse_line("bob:{PLAIN}y")
    assert plain is not None and plain.policy is None
    path = tmp_path / "users"
    path.write_text("bob:{PLAIN}y::::::\n")
    assert PasswdFileChecker(str(path), InlineReactor()).policy_fields() == frozenset()
    path.write_text("bob:{PLAIN}y::::::expire=3\n")
    checker = PasswdFileChecker(str(path), InlineReactor())
    assert checker.policy_fields() == {"expire"}  # a glance at construction
    name = checker.requestAvatarId(UsernamePassword(b"bob", b"y")).result
    assert name == "bob" and name.policy == UserPolicy(expire=3.0)
    path.write_text("bob:{PLAIN}y::::::login_delay=5\n")
    checker.requestAvatarId(UsernamePassword(b"bob", b"y"))
    assert checker.policy_fields() == {"login_delay"}  # as read for the login
    info = checker.lookup_user("bob").result
    assert info.policy == UserPolicy(login_delay=5)


def test_ldap_attributes() -> None:
    settings = ldap_args("url=ldap://127.0.0.1:1/,base=dc=x,login_delay_attribute=popDelay,"
                         "expire_attribute=popExpire")
    checker = LDAPChecker(settings, InlineReactor())
    assert checker.policy_fields() == {"login_delay", "expire"}
    entry = Entry("uid=a,dc=x", {"popdelay": ["600"], "popExpire": ["NEVER"]})
    assert checker._policy(entry, "a") == UserPolicy(600, NEVER)
    assert checker._policy(Entry("uid=b,dc=x", {}), "b") is None
    plain = LDAPChecker(ldap_args("url=ldap://127.0.0.1:1/,base=dc=x"), InlineReactor())
    assert plain.policy_fields() == frozenset()
    assert "popDelay" in checker.directory._attributes


def test_sql_rows_take_the_named_columns_out() -> None:
    description = [("password",), ("LOGIN_DELAY",), ("user",), ("maildir",), ("expire",)]
    (row,) = rows(description, [("{PLAIN}x", 60, "Bob", "/m", "never")])
    assert row.columns == ("{PLAIN}x", "/m")
    assert (row.user, row.has_user) == ("Bob", True)
    assert row.named == {"login_delay": 60, "expire": "never"}
    (plain,) = rows([("password",)], [("{PLAIN}x",)])
    assert plain.named == {} and plain.columns == ("{PLAIN}x",)


def test_sql_columns_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (userid TEXT, password TEXT, delay INTEGER, days TEXT)")
    db.execute("INSERT INTO users VALUES ('alice', '{PLAIN}pw', 600, '3')")
    db.execute("INSERT INTO users VALUES ('bob', '{PLAIN}pw', NULL, NULL)")
    db.commit()
    db.close()
    checker = SQLChecker(f"sqlite://{path}", "SELECT password, delay AS login_delay, days AS "
                         "expire FROM users WHERE userid = %(user)s", reactor=start_reactor())
    assert checker.policy_fields() == {"login_delay", "expire"}
    try:
        alice = run(checker.requestAvatarId, UsernamePassword(b"alice", b"pw"))
        assert alice.policy == UserPolicy(600, 3.0)
        bob = run(checker.requestAvatarId, UsernamePassword(b"bob", b"pw"))
        assert getattr(bob, "policy", None) is None
        assert run(checker.lookup_user, "alice").policy == UserPolicy(600, 3.0)
    finally:
        run(lambda: checker.database.pool and checker.database.pool.close())
    plain = SQLChecker(f"sqlite://{path}", reactor=InlineReactor())
    assert plain.policy_fields() == frozenset()
