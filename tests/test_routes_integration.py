"""
Per-user routing end to end: a real popgate (twistd) proxying two users to
two different upstreams (popgate test servers with memory stores, each
mailbox saying which upstream holds it), the route read from a real slapd
(an LDAP attribute, upstream authentication) and from real PostgreSQL and
MariaDB (a SQL column, local authentication by the same database); a user
with no route gets [AUTH], a route the proxy cannot serve [SYS/PERM], a
directory that cannot answer [SYS/TEMP].
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from popgate.testing import POP3TestServer
from tests.harness import free_port
from tests.ldap_server import (  # noqa: F401  (fixtures)
    ROUTE_ATTRIBUTE,
    USERS,
    LDAPServer,
    private_slapd,
)
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess
from tests.test_sql import _OPENERS, _quote

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORDS = {"alice": USERS["alice"][0], "bob": USERS["bob"][0], "carol": USERS["carol"][0],
             "erin": USERS["erin"][0]}
_source = itertools.count(10)


def upstreams(ports: tuple[int, int]) -> list[POP3TestServer]:
    """Two upstreams holding every user, each mailbox naming its upstream."""
    servers = []
    for label, port in zip("AB", ports, strict=True):
        mail = {user: [f"Subject: {user} on {label}\r\n\r\nhi\r\n".encode()] for user in PASSWORDS}
        servers.append(POP3TestServer(users=PASSWORDS, mailboxes=mail, port=port).start())
    return servers


def reply_to_login(port: int, user: str) -> bytes:
    """The reply to PASS; after a +OK, the subject of message 1."""
    client = RawClient(port, timeout=20, source=f"127.0.5.{next(_source) % 250 + 2}")
    try:
        client.cmd(b"USER " + user.encode())
        reply = client.cmd(b"PASS " + PASSWORDS.get(user, "pw").encode())
        if not reply.startswith(b"+OK"):
            return reply
        assert client.cmd(b"RETR 1").startswith(b"+OK")
        subject = client.multi().split(b"\r\n")[0]
        client.cmd(b"QUIT")
        return subject
    finally:
        client.sock.close()


def gateway(tmp_path: Path, *args: str) -> PopgateProcess:
    server = PopgateProcess(["--auth-failure-delay", "0", *args],
                            log_path=str(tmp_path / "popgate.log"))
    server.start()
    return server


def test_ldap_attribute_routes_each_user(private_slapd: LDAPServer,  # noqa: F811
                                         tmp_path: Path) -> None:
    servers = upstreams(private_slapd.route_ports)
    route = "ldap:" + private_slapd.argstring(attribute=ROUTE_ATTRIBUTE, timeout="2")
    proxy = gateway(tmp_path, "--store", "proxy:", "--route", route)
    try:
        assert reply_to_login(proxy.port, "alice") == b"Subject: alice on A"
        assert reply_to_login(proxy.port, "bob") == b"Subject: bob on B"
        assert reply_to_login(proxy.port, "erin").startswith(b"-ERR [AUTH]")  # no route
        assert reply_to_login(proxy.port, "nobody").startswith(b"-ERR [AUTH]")  # no entry
        assert reply_to_login(proxy.port, "carol").startswith(b"-ERR [SYS/PERM]")  # imaps://
        assert reply_to_login(proxy.port, "twin").startswith(b"-ERR [SYS/PERM]")  # two entries
        private_slapd.stop()
        assert reply_to_login(proxy.port, "alice").startswith(b"-ERR [SYS/TEMP]")
    finally:
        proxy.stop()
        for server in servers:
            server.stop()
    lines = [line for line in (tmp_path / "popgate.log").read_text().splitlines()
             if "carol" in line and "#error]" in line]
    assert len(lines) == 1 and "Login error" in lines[0], lines
    assert "route must be a pop3:// or pop3s:// URL, got 'imaps://127.0.0.1:" in lines[0]


@pytest.fixture(params=["postgresql", "mysql"])
def route_table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Any]]:
    """A users table with passwords and upstream URLs: the DSN, its name,
    and a function running SQL in it."""
    dsn, execute, close = _OPENERS[request.param](tmp_path)
    table = f"popgate_routes_{secrets.token_hex(6)}"
    execute(f"CREATE TABLE {table} (userid VARCHAR(255) PRIMARY KEY, password VARCHAR(255), "
            "upstream VARCHAR(255))")
    try:
        yield dsn, table, execute
    finally:
        execute(f"DROP TABLE IF EXISTS {table}")
        close()


def test_sql_column_routes_each_user(route_table: tuple[str, str, Any], tmp_path: Path) -> None:
    dsn, table, execute = route_table
    ports = (free_port(), free_port())
    routes = {"alice": f"pop3://127.0.0.1:{ports[0]}", "bob": f"pop3://127.0.0.1:{ports[1]}",
              "carol": "pop3://127.0.0.1:bad", "erin": None}
    for user, url in routes.items():
        execute(f"INSERT INTO {table} VALUES ({_quote(user)}, "
                f"{_quote('{PLAIN}' + PASSWORDS[user])}, {_quote(url)})")
    servers = upstreams(ports)
    where = f"FROM {table} WHERE userid = %(user)s"
    proxy = gateway(tmp_path, "--store", "proxy:", "--auth", f"sql:dsn={dsn},query=SELECT password {where}",
                    "--route", f"sql:dsn={dsn},query=SELECT upstream {where},timeout=3")
    try:
        assert reply_to_login(proxy.port, "alice") == b"Subject: alice on A"
        assert reply_to_login(proxy.port, "bob") == b"Subject: bob on B"
        assert reply_to_login(proxy.port, "erin").startswith(b"-ERR [AUTH]")  # NULL: no route
        assert reply_to_login(proxy.port, "carol").startswith(b"-ERR [SYS/PERM]")  # bad port
        execute(f"ALTER TABLE {table} RENAME COLUMN upstream TO gone")
        assert reply_to_login(proxy.port, "bob").startswith(b"-ERR [SYS/TEMP]")
    finally:
        proxy.stop()
        for server in servers:
            server.stop()
    lines = [line for line in (tmp_path / "popgate.log").read_text().splitlines()
             if "carol" in line and "#error]" in line]
    assert len(lines) == 1 and "the route of carol is unusable" in lines[0], lines
    assert "has a bad port" in lines[0]
