"""
The LDAP checker: filter escaping and argument parsing in memory, then
search-then-bind against a real slapd (see L{tests.ldap_server}) with the
real reactor running in a thread (see L{tests.reactor_thread}).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from zope.interface.verify import verifyObject

from popgate.cred.ldap import LDAPChecker, make_checker, parse_args
from popgate.cred.ldap_filter import (
    DEFAULT_FILTER,
    escape_filter_value,
    expand_filter,
    name_attributes,
)
from popgate.cred.userinfo import UserInfo
from popgate.errors import TemporaryFailure
from popgate.interfaces import IUserLookup
from popgate.stores.mailpath import expand
from tests.harness import free_port
from tests.ldap_server import (  # noqa: F401  (fixtures)
    ERIN_MAIL_LOCATION,
    MIXED_CASE_USER,
    TWIN_PASSWORD,
    USERS,
    LDAPServer,
    ldap_server,
    local_slapd,
    private_slapd,
)
from tests.reactor_thread import run

integration = pytest.mark.integration


# -- escaping and filters ----------------------------------------------------


@pytest.mark.parametrize(
    "value, escaped",
    [
        ("alice", "alice"),
        ("a*", r"a\2a"),
        ("*)(uid=*", r"\2a\29\28uid=\2a"),
        ("back\\slash", r"back\5cslash"),
        ("nul\0", r"nul\00"),
        ("jos\u00e9", "jos\u00e9"),
        ("\\2a", r"\5c2a"),
    ],
)
def test_escape_filter_value(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


def test_expand_filter_placeholders() -> None:
    template = "(|(uid=%n)(mail=%u)(o=%d)(cn=100%%))"
    assert expand_filter(template, "a*@b(c)") == r"(|(uid=a\2a)(mail=a\2a@b\28c\29)(o=b\28c\29)(cn=100%))"
    assert expand_filter(DEFAULT_FILTER, "bob") == "(&(objectClass=inetOrgPerson)(uid=bob))"
    # The domain is after the last @, the local part keeps the others.
    assert expand_filter("%n|%d", "a@b@c") == "a@b|c"


def test_name_attributes() -> None:
    """Where the directory's spelling of a name is: the attribute compared with %n/%u."""
    assert name_attributes(DEFAULT_FILTER) == [("uid", False)]
    template = "(&(objectClass=x)(|(uid=%n)(mail=%u)(mailAlias=%n@%d)(cn=x%n)(sn=%n*)(o=%d)))"
    assert name_attributes(template) == [("uid", False), ("mail", True), ("mailAlias", True)]
    assert name_attributes("(cn=%u%%)") == []


def test_expand_filter_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match="%x"):
        expand_filter("(uid=%x)", "bob")


# -- argument parsing ----------------------------------------------------------


def test_parse_args_full() -> None:
    settings = parse_args(
        "url=ldap://ldap.example.org:3389/,base=ou=people,dc=example,dc=org,"
        "filter=(&(objectClass=inetOrgPerson)(|(uid=%n)(mail=%u))),"
        "binddn=cn=popgate,ou=services,dc=example,dc=org,bindpw=s3cret,"
        "starttls=yes,timeout=2.5,connect_timeout=1,"
        "mail_attribute=mailMessageStore,user_attribute=uid"
    )
    assert (settings.host, settings.port, settings.ldaps, settings.starttls) == ("ldap.example.org", 3389, False, True)
    assert settings.base == "ou=people,dc=example,dc=org"
    assert settings.filter == "(&(objectClass=inetOrgPerson)(|(uid=%n)(mail=%u)))"
    assert settings.binddn == "cn=popgate,ou=services,dc=example,dc=org"
    assert settings.bindpw == "s3cret"
    assert (settings.timeout, settings.connect_timeout) == (2.5, 1.0)
    assert (settings.mail_attribute, settings.user_attribute) == ("mailMessageStore", "uid")
    assert "s3cret" not in repr(settings)


def test_parse_args_defaults() -> None:
    settings = parse_args("url=ldaps://ldap.example.org,base=dc=example,dc=org")
    assert (settings.port, settings.ldaps, settings.starttls) == (636, True, False)
    assert settings.filter == DEFAULT_FILTER
    assert settings.binddn is None and settings.bindpw == ""
    assert settings.timeout == settings.connect_timeout == 5.0
    assert parse_args("url=ldap://[::1]/,base=dc=x").port == 389


def test_parse_args_bindpw_file(tmp_path: Any) -> None:
    secret = tmp_path / "bindpw"
    secret.write_text("a,url=b\n")
    settings = parse_args(f"url=ldap://h/,base=dc=x,binddn=cn=s,dc=x,bindpw_file={secret}")
    assert settings.bindpw == "a,url=b"


@pytest.mark.parametrize(
    "argstring, message",
    [
        ("", "url= is required"),
        ("url=ldap://h/,base=dc=x,bogus=1", None),  # in the DN: base=dc=x,bogus=1
        ("url=ldap://h/,bogus=1,base=dc=x", "unknown key bogus="),
        ("url=ldap://h/,base=dc=x,timeout=5,bogus=1", "unknown key bogus="),
        ("base=dc=x", "url= is required"),
        ("url=ldap://h/", "base= is required"),
        ("host=h,url=ldap://h/,base=dc=x", "known key"),
        ("url=ldap://h/,base=dc=x,base=dc=y", "twice"),
        ("url=http://h/,base=dc=x", "ldap://"),
        ("url=ldap:///,base=dc=x", "no host"),
        ("url=ldap://h/dc=x,base=dc=x", "scheme://host"),
        ("url=ldap://h:notaport/,base=dc=x", "bad url"),
        ("url=ldaps://h/,base=dc=x,starttls=yes", "ldaps"),
        ("url=ldap://h/,base=dc=x,starttls=maybe", "yes or no"),
        ("url=ldap://h/,base=dc=x,binddn=cn=s,dc=x", "needs bindpw"),
        ("url=ldap://h/,base=dc=x,bindpw=s", "without binddn"),
        ("url=ldap://h/,base=dc=x,binddn=cn=s,bindpw=a,bindpw_file=/x", "not both"),
        ("url=ldap://h/,base=dc=x,binddn=cn=s,bindpw_file=/nonexistent/pw", "cannot read"),
        ("url=ldap://h/,base=dc=x,timeout=soon", "number of seconds"),
        ("url=ldap://h/,base=dc=x,timeout=0", "between"),
        ("url=ldap://h/,base=dc=x,filter=(uid=%n", "invalid LDAP filter"),
        ("url=ldap://h/,base=dc=x,filter=(uid=%q)", "%q"),
        ("url=ldap://h/,base=dc=x,cafile=/nonexistent/ca.pem", "cannot read"),
    ],
)
def test_parse_args_errors(argstring: str, message: str | None) -> None:
    if message is None:
        assert parse_args(argstring).base == "dc=x,bogus=1"
        return
    with pytest.raises(ValueError, match=message) as info:
        make_checker(argstring)
    assert str(info.value).startswith("ldap: ") and "\n" not in str(info.value)


def test_parse_args_tolerates_whitespace() -> None:
    settings = parse_args(" url = ldap://h/ , base = ou=people, dc=x , starttls = yes ")
    assert (settings.host, settings.base, settings.starttls) == ("h", "ou=people, dc=x", True)


def test_interfaces() -> None:
    checker = make_checker("url=ldap://127.0.0.1/,base=dc=x")
    assert isinstance(checker, LDAPChecker)
    assert verifyObject(ICredentialsChecker, checker)
    assert verifyObject(IUserLookup, checker)


@pytest.mark.parametrize("password", [b"", ""])
def test_empty_password_rejected_without_network(password: bytes | str) -> None:
    """An empty password would make an unauthenticated bind: refused up front."""
    checker = LDAPChecker(parse_args("url=ldap://127.0.0.1/,base=dc=x"), reactor=object())
    failures: list[Any] = []
    checker.requestAvatarId(UsernamePassword(b"alice", password)).addErrback(failures.append)
    assert failures and failures[0].check(UnauthorizedLogin)


def test_entries_that_are_not_text() -> None:
    """A DN that is not UTF-8 leaves the entry out; a value that is not drops that value; each logged once."""
    from ldaptor.protocols import pureldap
    from twisted.logger import capturedLogs, formatEvent

    directory = LDAPChecker(parse_args("url=ldap://127.0.0.1/,base=dc=x"), reactor=object()).directory

    def entry(dn: bytes, **attributes: list[bytes]) -> Any:
        return directory._entry(pureldap.LDAPSearchResultEntry(dn, [(k.encode(), v) for k, v in attributes.items()]))

    with capturedLogs() as events:
        for _ in range(2):
            assert entry(b"uid=\xff,dc=x", uid=[b"bob"]) is None
            found = entry(b"uid=bob,dc=x", uid=[b"bob", b"b\xffb"], mail=[b"\xff"])
            assert found.dn == "uid=bob,dc=x" and found.values("uid") == ["bob"] and found.first("mail") is None
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 3
    assert errors[0].startswith("LDAP: configuration error: the DN of 'uid=") and "not UTF-8" in errors[0]


# -- against real servers ----------------------------------------------------------


@pytest.fixture
def checkers() -> Iterator[Any]:
    """Makes checkers and closes their connections afterwards."""
    made: list[LDAPChecker] = []

    def make(argstring: str) -> LDAPChecker:
        checker = make_checker(argstring)
        made.append(checker)
        return checker

    yield make
    for checker in made:
        run(_hang_up, checker)


def _hang_up(checker: LDAPChecker) -> None:
    """Close the service connection (the reactor outlives each test)."""
    client = checker.directory.service
    if client is not None and client.connected:
        client.transport.loseConnection()


def login(checker: LDAPChecker, user: bytes | str, password: bytes | str) -> Any:
    return run(checker.requestAvatarId, UsernamePassword(user, password))


@integration
def test_unreachable_is_temporary(checkers: Any) -> None:
    port = free_port()
    checker = checkers(f"url=ldap://127.0.0.1:{port}/,base=dc=x")
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", "pw")
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")


@integration
def test_silent_server_times_out(checkers: Any) -> None:
    """A server that accepts but never answers: TemporaryFailure after timeout=."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        port = s.getsockname()[1]
        checker = checkers(f"url=ldap://127.0.0.1:{port}/,base=dc=x,timeout=0.3")
        started = time.monotonic()
        with pytest.raises(TemporaryFailure):
            login(checker, "alice", "pw")
        assert time.monotonic() - started < 5


@integration
@pytest.mark.parametrize("name", sorted(USERS))
def test_good_login(ldap_server: LDAPServer, checkers: Any, name: str) -> None:
    """{SSHA} (slappasswd), {CRYPT}$6$, cleartext, odd characters, UTF-8."""
    checker = checkers(ldap_server.argstring())
    password = USERS[name][0]
    avatar_id = login(checker, name.encode("utf-8"), password.encode("utf-8"))
    assert avatar_id == name and isinstance(avatar_id, str)
    with pytest.raises(UnauthorizedLogin):
        login(checker, name, password + "x")


@integration
def test_unknown_ambiguous_and_passwordless(ldap_server: LDAPServer, checkers: Any) -> None:
    checker = checkers(ldap_server.argstring())
    for user, password in [("nobody", "pw"), ("twin", TWIN_PASSWORD), ("nopw", "pw"), ("alice", "")]:
        with pytest.raises(UnauthorizedLogin):
            login(checker, user, password)
    with pytest.raises(UnauthorizedLogin):
        login(checker, b"\xff\xfe", "pw")


@integration
@pytest.mark.parametrize(
    "user",
    ["*", "al*", "*ice", "alice)(uid=*", "*)(uid=*", "*)(|(uid=*", "alice)(|(objectClass=*", "alice\0", "alice\\2a"],
)
def test_injection_does_not_log_in(ldap_server: LDAPServer, checkers: Any, user: str) -> None:
    """Unescaped, each of these would find alice and bind with her password."""
    checker = checkers(ldap_server.argstring())
    with pytest.raises(UnauthorizedLogin):
        login(checker, user, USERS["alice"][0])
    assert run(checker.lookup_user, user) is None


@integration
def test_filter_on_full_address(ldap_server: LDAPServer, checkers: Any) -> None:
    checker = checkers(ldap_server.argstring(filter="(&(objectClass=inetOrgPerson)(mail=%n@%d))"))
    assert login(checker, "alice@example.org", USERS["alice"][0]) == "alice@example.org"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "*@example.org", USERS["alice"][0])


@integration
def test_user_attribute_canonicalises(ldap_server: LDAPServer, checkers: Any) -> None:
    checker = checkers(ldap_server.argstring(user_attribute="uid"))
    assert login(checker, "ALICE", USERS["alice"][0]) == "alice"
    assert run(checker.lookup_user, "Alice") == UserInfo("alice", None)


@integration
def test_anonymous_search(local_slapd: LDAPServer, checkers: Any) -> None:
    """Our slapd allows anonymous searches (an external one may not)."""
    checker = checkers(local_slapd.argstring(binddn=None, bindpw=None))
    assert login(checker, "carol", USERS["carol"][0]) == "carol"


@integration
def test_service_connection_is_reused(ldap_server: LDAPServer, checkers: Any) -> None:
    checker = checkers(ldap_server.argstring())
    login(checker, "alice", USERS["alice"][0])
    first = checker.directory.service
    login(checker, "bob", USERS["bob"][0])
    run(checker.lookup_user, "carol")
    assert first is not None and checker.directory.service is first


@integration
@pytest.mark.parametrize(
    "options",
    [{"bindpw": "wrong"}, {"binddn": "cn=nobody,dc=example,dc=org"}, {"base": "ou=missing,dc=example,dc=org"}],
    ids=["bad-bindpw", "bad-binddn", "missing-base"],
)
def test_directory_trouble_is_temporary(ldap_server: LDAPServer, checkers: Any, options: dict[str, str]) -> None:
    if "base" in options:
        options = {"base": f"ou=missing,{ldap_server.base}"}
    checker = checkers(ldap_server.argstring(**options))
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", USERS["alice"][0])
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")


@integration
def test_lookup_user(ldap_server: LDAPServer, checkers: Any) -> None:
    checker = checkers(ldap_server.argstring(mail_attribute=ldap_server.mail_attribute))
    assert run(checker.lookup_user, "erin") == UserInfo("erin", ERIN_MAIL_LOCATION)
    assert run(checker.lookup_user, "alice") == UserInfo("alice", None)
    assert run(checker.lookup_user, "nobody") is None
    assert run(checker.lookup_user, "") is None
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "twin")
    assert login(checker, "erin", USERS["erin"][0]) == "erin"
    # The login's avatar id carries the mail location too, for the store.
    assert login(checker, "erin", USERS["erin"][0]).mail_location == ERIN_MAIL_LOCATION
    assert login(checker, "alice", USERS["alice"][0]).mail_location is None


@integration
def test_slapd_stopped_then_restarted(private_slapd: LDAPServer, checkers: Any) -> None:
    checker = checkers(private_slapd.argstring(timeout="2"))
    password = USERS["alice"][0]
    assert login(checker, "alice", password) == "alice"

    # Restarted between two requests: the stale connection is replaced.
    private_slapd.stop()
    private_slapd.start()
    assert login(checker, "alice", password) == "alice"

    private_slapd.stop()
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", password)
    with pytest.raises(TemporaryFailure):
        run(checker.lookup_user, "alice")

    private_slapd.start()
    assert login(checker, "alice", password) == "alice"
    assert run(checker.lookup_user, "alice") == UserInfo("alice", None)


@integration
def test_starttls(local_slapd: LDAPServer, checkers: Any) -> None:
    checker = checkers(local_slapd.argstring(starttls="yes", cafile=local_slapd.cafile))
    assert login(checker, "alice", USERS["alice"][0]) == "alice"
    with pytest.raises(UnauthorizedLogin):
        login(checker, "alice", "wrong")


@integration
def test_ldaps(local_slapd: LDAPServer, checkers: Any) -> None:
    checker = checkers(local_slapd.argstring(url=local_slapd.ldaps_url, cafile=local_slapd.cafile))
    assert login(checker, "bob", USERS["bob"][0]) == "bob"


@integration
@pytest.mark.parametrize("tls", ["starttls", "ldaps"])
def test_untrusted_certificate_is_temporary(local_slapd: LDAPServer, checkers: Any, tls: str) -> None:
    """Without cafile= the test CA is not trusted: no password goes out."""
    options = {"starttls": "yes"} if tls == "starttls" else {"url": local_slapd.ldaps_url}
    checker = checkers(local_slapd.argstring(**options))
    with pytest.raises(TemporaryFailure):
        login(checker, "alice", USERS["alice"][0])



# -- case in user names ------------------------------------------------------


@integration
def test_the_directory_spells_the_name(ldap_server: LDAPServer, checkers: Any) -> None:
    """
    The README's set-up (no user_attribute): the directory's uid names the
    user, whatever case the client types, and the domain is lower-cased.
    Login and delivery lookup agree, so they reach one mailbox.
    """
    checker = checkers(ldap_server.argstring())
    password = USERS["bob"][0]
    for typed in ("bob@example.org", "Bob@Example.org", "BOB@EXAMPLE.ORG"):
        assert login(checker, typed, password) == "bob@example.org"
        assert run(checker.lookup_user, typed) == UserInfo("bob@example.org", None)
    assert login(checker, "BOB", password) == "bob"
    # The other way round: stored as "Dana", typed in lower case.
    _, dana_password, _ = MIXED_CASE_USER
    for typed in ("dana@example.org", "DANA@Example.Org"):
        assert login(checker, typed, dana_password) == "Dana@example.org"
        assert run(checker.lookup_user, typed) == UserInfo("Dana@example.org", None)
    template = "/var/mail/%d/%n"
    assert expand(template, run(checker.lookup_user, "Dana@Example.org").name) == \
        expand(template, login(checker, "dana@example.org", dana_password)) == "/var/mail/example.org/Dana"


@integration
def test_filter_on_the_full_address_gives_its_stored_spelling(ldap_server: LDAPServer, checkers: Any) -> None:
    _, password, mail = MIXED_CASE_USER
    checker = checkers(ldap_server.argstring(filter="(&(objectClass=inetOrgPerson)(mail=%u))"))
    for typed in ("dana@example.org", "DANA@EXAMPLE.ORG", mail):
        assert login(checker, typed, password) == "Dana@example.org"
        assert run(checker.lookup_user, typed) == UserInfo("Dana@example.org", None)


@integration
def test_user_attribute_spelling_wins_with_its_domain_lower_cased(ldap_server: LDAPServer, checkers: Any) -> None:
    _, password, _ = MIXED_CASE_USER
    checker = checkers(ldap_server.argstring(user_attribute="mail"))
    assert login(checker, "DANA", password) == "Dana@example.org"
    assert run(checker.lookup_user, "dana@example.net") == UserInfo("Dana@example.org", None)
