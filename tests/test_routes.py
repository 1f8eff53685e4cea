"""
Per-user routing (popgate.routes) in memory: the router's decisions (a
route, no route with and without upstream=, a scheme the store cannot
serve, a malformed URL, a directory that cannot answer), the proxy store
routing both credential modes, the replies a POP3 client gets for each,
the --route argument strings, and the SQL source on a real sqlite file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from popgate import errors
from popgate.build import build_portal
from popgate.cred.ldap_directory import Entry
from popgate.routes import ldap as ldap_routes
from popgate.routes.router import Router
from popgate.routes.source import make_route_source
from popgate.routes.sql import SQLRoutes
from popgate.stores import proxy_store
from popgate.stores.proxy_auth import UpstreamAvatarId
from popgate.stores.proxy_settings import Upstream, parse_upstream
from popgate.stores.registry import make_store
from tests.helpers import connect
from tests.reactor_thread import run, start_reactor

ROUTES: dict[str, Any] = {
    "alice": "pop3s://mail1.example.org",
    "bob@example.org": "pop3://127.0.0.1:1110?tls=starttls",
    "imapuser": "imaps://imap.example.org",
    "broken": "pop3://host:99999",
    "empty": "",
    "down": errors.TemporaryFailure("LDAP search failed: ConnectionRefusedError"),
}


class FakeSource:
    """A route source answering from a dict (an exception: it fails so)."""

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self.routes = ROUTES if routes is None else routes
        self.asked: list[str] = []

    def lookup(self, name: str) -> defer.Deferred[str | None]:
        self.asked.append(name)
        found = self.routes.get(name)
        if isinstance(found, Exception):
            return defer.fail(found)
        return defer.succeed(found)

    def probe(self) -> defer.Deferred[str]:
        return defer.succeed("the fake directory")


def outcome(d: defer.Deferred[Any]) -> Any:
    """What a Deferred that has fired holds: its result or its exception."""
    box: list[Any] = []
    d.addCallbacks(box.append, lambda f: box.append(f.value))
    assert box, "the Deferred has not fired"
    return box[0]


def router(default: Upstream | None = None) -> Router[Upstream]:
    return Router(FakeSource(), lambda url: parse_upstream(url, "/ca.pem", what="route"),
                  default, "proxy")


def test_a_route_is_the_users_upstream() -> None:
    up = outcome(router()("alice"))
    assert (up.host, up.port, up.tls, up.server_name, up.ca_file) == (
        "mail1.example.org", 995, "implicit", "mail1.example.org", "/ca.pem")
    up = outcome(router()("bob@example.org"))
    assert (up.host, up.port, up.tls) == ("127.0.0.1", 1110, "starttls")


def test_no_route_is_an_unknown_user_unless_there_is_a_default(log_events: list[Any]) -> None:
    for name in ("nobody", "empty"):
        assert isinstance(outcome(router()(name)), errors.UnknownUser)
    default = parse_upstream("pop3://fallback.example.org")
    assert outcome(router(default)("nobody")) is default
    assert outcome(router(default)("empty")) is default
    assert isinstance(outcome(router(default)("alice")), Upstream)
    assert outcome(router(default)("alice")) != default


@pytest.mark.parametrize("name,said", [
    ("imapuser", "must be a pop3:// or pop3s:// URL, got 'imaps://imap.example.org'"),
    ("broken", "has a bad port"),
])
def test_a_route_the_store_cannot_serve_is_permanent_with_one_line(
        log_events: list[Any], name: str, said: str) -> None:
    default = parse_upstream("pop3://fallback.example.org")  # not used for a bad route
    failure = outcome(router(default)(name))
    assert isinstance(failure, errors.PermanentFailure)
    assert f"the route of {name} is unusable: proxy: route" in str(failure)
    assert said in str(failure)
    assert not log_events  # the login's error line says it (test_what_a_pop3_client_hears)


def test_a_directory_that_cannot_answer_is_temporary() -> None:
    default = parse_upstream("pop3://fallback.example.org")
    assert isinstance(outcome(router(default)("down")), errors.TemporaryFailure)


# -- the proxy store routes both credential modes


def routed_store(monkeypatch: pytest.MonkeyPatch, argstring: str = "") -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    async def log_in(reactor: Any, settings: Any, upstream: Upstream, user: bytes,
                     password: bytes) -> str:
        calls.append((upstream.url, user, password))
        return "connection"

    monkeypatch.setattr(proxy_store, "log_in", log_in)
    store = make_store(f"proxy:{argstring}", MemoryReactorClock(), route=FakeSource())
    return store, calls


def test_upstream_authentication_logs_in_on_the_users_upstream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, calls = routed_store(monkeypatch)
    assert outcome(store.log_in("alice", b"alice", b"pw")) == "connection"
    assert outcome(store.log_in("bob@example.org", b"Bob@Example.ORG", b"pw2")) == "connection"
    assert calls == [("pop3s://mail1.example.org:995", b"alice", b"pw"),
                     ("pop3://127.0.0.1:1110?tls=starttls", b"Bob@Example.ORG", b"pw2")]
    assert isinstance(outcome(store.log_in("nobody", b"nobody", b"pw")), UnauthorizedLogin)
    assert len(calls) == 2  # no upstream was tried for them


def test_local_authentication_logs_in_on_the_users_upstream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, calls = routed_store(monkeypatch, "upstream=pop3://fallback:110")
    for avatar in (UpstreamAvatarId("alice", password=b"pw"),
                   UpstreamAvatarId("nobody", password=b"pw3")):
        assert outcome(defer.Deferred.fromCoroutine(store.log_in_for(avatar))) == "connection"
    assert calls == [("pop3s://mail1.example.org:995", b"alice", b"pw"),
                     ("pop3://fallback:110", b"nobody", b"pw3")]
    d = defer.Deferred.fromCoroutine(store.log_in_for(UpstreamAvatarId("down", password=b"x")))
    assert isinstance(outcome(d), errors.TemporaryFailure)


def test_what_a_pop3_client_hears(monkeypatch: pytest.MonkeyPatch,
                                  log_events: list[Any]) -> None:
    store, calls = routed_store(monkeypatch)
    reactor = MemoryReactorClock()
    portal = build_portal(store, [], reactor)
    replies = {}
    for name in (b"imapuser", b"down", b"nobody"):
        session = connect(portal)
        session.send(b"USER " + name + b"\r\n")
        reply = session.send(b"PASS pw\r\n")
        session.clock.advance(10)  # the failure delay of [AUTH]
        replies[name] = (reply + session.take()).split(b" ")[:2]
        session.lose()
    assert replies == {b"imapuser": [b"-ERR", b"[SYS/PERM]"], b"down": [b"-ERR", b"[SYS/TEMP]"],
                       b"nobody": [b"-ERR", b"[AUTH]"]}
    assert calls == []
    said = [e for e in log_events if "imaps://imap.example.org" in str(e.get("why", ""))
            and e["log_level"] >= LogLevel.info]
    assert len(said) == 1 and said[0]["log_level"] == LogLevel.error  # one line, the login's
    assert said[0]["event"] == "pop3.login" and said[0]["user"] == "imapuser"


def test_arguments_and_probe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="upstream= is required"):
        make_store("proxy:ca_file=", MemoryReactorClock())
    store = make_store("proxy:", MemoryReactorClock(), route=FakeSource())
    assert store.settings.upstream is None
    assert outcome(store.probe()) == "routes from the fake directory"
    with pytest.raises(ValueError, match="takes no --route"):
        make_store(f"maildir:{tmp_path}/%u", MemoryReactorClock(), route=FakeSource())
    for bad, said in [
        ("nis:x", "unknown route source 'nis'"),
        ("ldap:url=ldap://h/,base=dc=x", "attribute= is required"),
        ("ldap:url=ldap://h/,base=dc=x,attribute=mailHost,mail_attribute=x", "unknown key"),
        ("ldap:url=http://h/,base=dc=x,attribute=mailHost", "ldap://"),
        ("sql:dsn=sqlite:///x.db", "query= is required"),
        ("sql:dsn=sqlite:///x.db,query=SELECT upstream FROM users", "must use %(user)s"),
        ("sql:dsn=oracle://x,query=SELECT 1 WHERE %(user)s", "dsn= must start"),
    ]:
        with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
            make_route_source(bad, MemoryReactorClock())
    source = make_route_source("ldap:url=ldap://127.0.0.1:1/,base=dc=example,dc=org,"
                               "filter=(mail=%u),attribute=mailHost,timeout=2", MemoryReactorClock())
    assert source.directory.settings.filter == "(mail=%u)"
    assert source.directory.settings.timeout == 2


def test_ldap_source_reads_the_attribute_of_the_one_entry(monkeypatch: pytest.MonkeyPatch,
                                                          log_events: list[Any]) -> None:
    source = make_route_source("ldap:url=ldap://127.0.0.1:1/,base=dc=x,attribute=mailHost",
                               MemoryReactorClock())
    assert isinstance(source, ldap_routes.LDAPRoutes)
    found: list[Entry] = []
    filters: list[Any] = []

    async def search(search_filter: Any) -> list[Entry]:
        filters.append(search_filter.asText())
        return found

    monkeypatch.setattr(source.directory, "search", search)
    assert outcome(source.lookup("a*b")) is None
    assert filters == ["(&(objectClass=inetOrgPerson)(uid=a\\2ab))"]  # escaped
    found.append(Entry("uid=a,dc=x", {"MAILHOST": ["pop3://one", "pop3://two"]}))
    assert outcome(source.lookup("a")) == "pop3://one"
    found.append(Entry("uid=a,dc=y", {}))
    assert isinstance(outcome(source.lookup("a")), errors.PermanentFailure)
    assert outcome(source.lookup("")) is None


# -- the SQL source on a real sqlite file (its queries in the pool's threads)


def test_sql_source_on_sqlite(tmp_path: Path, log_events: list[Any]) -> None:
    path = tmp_path / "routes.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE users (userid TEXT, upstream TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [
        ("alice", "pop3://127.0.0.1:1"), ("nulled", None), ("twice", "a"), ("twice", "b")])
    db.close()
    source = SQLRoutes(f"sqlite://{path}", "SELECT upstream FROM users WHERE userid = %(user)s",
                       start_reactor(), timeout=3)

    def ask(name: str) -> Any:
        try:
            return run(source.lookup, name)
        except Exception as e:
            return e

    try:
        assert ask("alice") == "pop3://127.0.0.1:1"
        assert ask("nulled") is None and ask("nobody") is None
        assert ask("bad\x00name") is None  # no query for it
        assert isinstance(ask("twice"), errors.PermanentFailure)
        assert "route query runs" in run(source.probe)
        sqlite3.connect(path, isolation_level=None).execute("DROP TABLE users")
        assert isinstance(ask("alice"), errors.TemporaryFailure)
    finally:
        if source.database.pool is not None:
            run(source.database.pool.close)
    log_events.clear()  # the dropped table's error line is expected


def test_the_imap_store_routes_imap_urls_only() -> None:
    store = make_store("imap:", MemoryReactorClock(),
                       route=FakeSource({"ann": "imaps://imap.example.org", "bob": "pop3://h",
                                         "cy": None}))
    assert store.settings.upstream is None
    up = outcome(store.route("ann"))
    assert (up.protocol, up.host, up.port, up.tls) == ("imap", "imap.example.org", 993, "implicit")
    assert isinstance(outcome(store.route("bob")), errors.PermanentFailure)
    assert isinstance(outcome(store.route("cy")), errors.UnknownUser)
    assert outcome(store.probe()) == "routes from the fake directory"
    with pytest.raises(ValueError, match="upstream= is required"):
        make_store("imap:", MemoryReactorClock())
