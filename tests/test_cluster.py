"""
Two popgate nodes sharing one PostgreSQL, behind a real HAProxy
(docs/cluster.md), every component real and started here: a throwaway
database with the popgate schema and a C{users} table (the C{sql:} user
store), node A on 127.0.0.2 and node B on 127.0.0.3 (each C{twistd
popgate} with a C{haproxy:} POP3 listener trusting only 127.0.0.1, a
plain POP3 listener for direct sessions and an LMTP listener, C{--store
postgresql:} and C{--auth sql:} on that database), and HAProxy on
127.0.0.1 sending PROXY v2 with C{check-send-proxy} health checks to both.

What it proves: mail delivered on one node is served byte-exact by the
other (poplib, fetchmail, curl; through HAProxy and directly); one
session per mailbox across nodes (C{[IN-USE]}); a node SIGKILLed after
DELEs, during QUIT or mid-RETR loses nothing, applies nothing it did not
answer, and its mailboxes open on the other node at once (the advisory
lock goes with the killed process's connections); C{pg_terminate_backend}
of a node's connections is C{[SYS/TEMP]} at worst and heals without a
restart; and 20 deliveries a second on one node while the other polls
serve each message exactly once.

The measured figures (time to reopen after a kill, deliveries and polls)
are printed: run with C{-s} to see them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import poplib
import re
import signal
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popgate.stores import pg_schema
from popgate.stores.pg_settings import parse_args
from popgate.stores.postgresql import PostgresStore
from popgate.testing import reactor_thread
from tests import haproxy_server
from tests.harness import free_port, greets
from tests.pg_database import throwaway_database
from tests.pop3_oracle import RawClient, normalized, wire
from tests.popgate_server import PopgateProcess, twistd_command
from tests.services import need_program

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PROXY = "127.0.0.1"
#: The documented bound for a killed process (docs/cluster.md): its
#: kernel closes its sockets, PostgreSQL ends the backends, the locks go.
REOPEN_BOUND = 5.0


def password(user: str) -> str:
    return f"{user}-secret"


def big_message() -> bytes:
    """About 7 MB, CRLF, a leading dot now and then (as over LMTP)."""
    line = b"y" * 75 + b"\r\n"
    body = b"".join((b"." + line) if i % 101 == 0 else line for i in range(92_000))
    return b"Subject: big\r\n\r\n" + body


#: What MTAs hand LMTP: CRLF lines.  Bare CRs, 8-bit octets and lines that
#: are or start with dots are data; "no final newline" gets the CRLF the
#: DATA terminator needs (smtplib adds it, as every MTA must).
CORPUS = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . line\r\n.\r\n",
    b"Subject: open end\r\n\r\nno newline at the end",
    "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncafé, naïve, 日本語\r\n".encode() + bytes(range(128, 256)),
    b"Subject: cr\r\n\r\none\rtwo\r\nthree\r\r\nfour\r",
    big_message(),
]


# -- the cluster


class Node(PopgateProcess):
    """One popgate node on its own loopback address: a C{haproxy:} POP3
    listener (C{proxy_port}), a plain one (C{port}, for direct sessions)
    and LMTP (C{lmtp_port}); fixed ports, so it restarts where HAProxy
    expects it.  Each start logs to a new file (C{name.N.log})."""

    def __init__(self, name: str, host: str, dsn: str, directory: Path) -> None:
        super().__init__([], log_path=None)
        self.name = f"node {name}"
        self.label = name
        self.host = host
        self.directory = directory
        self.starts = 0
        self.proxy_port = free_port()
        self.lmtp_port = free_port()
        # application_name says whose connections they are in pg_stat_activity.
        app = f"popgate-{name.lower()}"
        self.args = [
            "--store", f"postgresql:dsn={dsn}?application_name={app},pool_size=2",
            "--auth", f"sql:dsn={dsn}?application_name={app}-auth,pool_max=2",
            "--proxy-trusted", PROXY,
            "--lmtp", f"tcp:{self.lmtp_port}:interface={host}",
            "--pop3", f"haproxy:tcp:{self.proxy_port}:interface={host}",
        ]

    def command_line(self) -> list[str]:
        return twistd_command() + ["-n", "--pidfile=", "popgate",
                                   "--pop3", f"tcp:{self.port}:interface={self.host}", *self.args]

    def ready(self) -> bool:
        return greets(self.port, b"+OK", host=self.host, timeout=1)

    def start(self) -> Node:
        self.starts += 1
        self.log_path = str(self.directory / f"node-{self.label.lower()}.{self.starts}.log")
        super().start()
        return self

    def ensure_running(self) -> None:
        if self.pid() is None:
            self.start()

    def kill(self) -> float:
        """SIGKILL, by PID; when (monotonic) the signal went."""
        pid = self.pid()
        assert pid is not None, f"{self.name} is not running"
        sent = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        self.stop()  # only closes the log file now
        return sent

    def logs(self) -> list[Path]:
        return sorted(self.directory.glob(f"node-{self.label.lower()}.*.log"))


HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket @STATS@ mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 11m
    timeout server 11m
    timeout check 1s
    retries 2
    option redispatch

frontend pop3
    bind 127.0.0.1:@PORT@
    default_backend popgate

# Only node B: the soak polls from B while A takes the deliveries.
frontend pop3_b
    bind 127.0.0.1:{b_port}
    default_backend popgate_b

backend popgate
    balance leastconn
    default-server send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 1 source 127.0.0.1
    server nodeA 127.0.0.2:{a}
    server nodeB 127.0.0.3:{b}

backend popgate_b
    default-server send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 1 source 127.0.0.1
    server nodeB 127.0.0.3:{b}
"""


@dataclass
class Cluster:
    dsn: str
    a: Node
    b: Node
    proxy: haproxy_server.HAProxyProcess
    proxy_port: int
    proxy_b_port: int
    directory: Path
    figures: dict[str, Any] = field(default_factory=dict)

    def running(self) -> None:
        """Both nodes up (restarted if a failed test left one dead) and
        HAProxy seeing them."""
        self.a.ensure_running()
        self.b.ensure_running()
        self.proxy.wait_until_up()


USERS = ("ann", "ben", "cat", "dan", "eve", "fay", "gus")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_program("haproxy", "haproxy")
    directory = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(throwaway_database("popgate_cluster"))
        with psycopg.connect(dsn, autocommit=True) as connection:
            pg_schema.upgrade(connection)
            connection.execute("CREATE TABLE users (userid text PRIMARY KEY, password text NOT NULL)")
            for user in USERS:
                connection.execute("INSERT INTO users VALUES (%s, %s)",
                                   (user, "{PLAIN}" + password(user)))
        # Stopped (by PID) in reverse order, whatever happens in between.
        a = Node("A", "127.0.0.2", dsn, directory)
        stack.callback(a.stop)
        b = Node("B", "127.0.0.3", dsn, directory)
        stack.callback(b.stop)
        a.start()
        b.start()
        b_port = free_port()
        proxy, port = haproxy_server.start(
            HAPROXY_CONFIG.format(a=a.proxy_port, b=b.proxy_port, b_port=b_port), directory)
        stack.callback(proxy.stop)
        proxy.wait_until_up()
        cluster = Cluster(dsn, a, b, proxy, port, b_port, directory)
        yield cluster
        print("\ncluster figures:", cluster.figures)


# -- helpers


def db(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def stored(dsn: str, user: str) -> list[bytes]:
    """C{user}'s committed messages, in order, from the database."""
    with db(dsn) as connection:
        rows = connection.execute(
            "SELECT m.id, string_agg(c.data, ''::bytea ORDER BY c.seq) FROM popgate_messages m "
            "JOIN popgate_mailboxes b ON b.id = m.mailbox_id "
            "LEFT JOIN popgate_chunks c ON c.message_id = m.id WHERE b.name = %s "
            "GROUP BY m.id ORDER BY m.id", (user,)).fetchall()
    return [bytes(data or b"") for _, data in rows]


def lock_holder(dsn: str, user: str) -> int | None:
    with db(dsn) as connection:
        row = connection.execute(
            "SELECT l.pid FROM pg_locks l JOIN popgate_mailboxes b "
            "ON l.objid::text::bigint = b.id %% 4294967296 WHERE l.locktype = 'advisory' "
            "AND l.classid = %s AND l.objsubid = 2 AND l.granted AND b.name = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (pg_schema.LOCK_CLASS, user)).fetchone()
    return None if row is None else int(row[0])


def deliver(node: Node, user: str, *messages: bytes) -> None:
    """Over LMTP to C{node}: each answered 250 (committed)."""
    with smtplib.LMTP(node.host, node.lmtp_port, timeout=30) as lmtp:
        for message in messages:
            assert lmtp.sendmail("sender@example.net", [user], message) == {}


def pop(host: str, port: int, user: str) -> poplib.POP3:
    client = poplib.POP3(host, port, timeout=30)
    client.user(user)
    client.pass_(password(user))
    return client


def direct(node: Node, user: str) -> poplib.POP3:
    return pop(node.host, node.port, user)


def retr_all(client: poplib.POP3) -> list[bytes]:
    """Every message as poplib gives it back (CRLF lines, unstuffed)."""
    count = client.stat()[0]
    return [b"".join(line + b"\r\n" for line in client.retr(i)[1]) for i in range(1, count + 1)]


def as_delivered(message: bytes) -> bytes:
    """What RETR sends of a stored message, unstuffed: CRLF lines."""
    text = normalized(message)
    return text if text.endswith(b"\r\n") or not text else text + b"\r\n"


def reopen(node: Node | tuple[str, int], user: str, since: float,
           limit: float = 30.0) -> tuple[poplib.POP3, float]:
    """Log in on C{node} (or at an address) until the mailbox is no longer
    C{[IN-USE]}; the session and the seconds from C{since}."""
    host, port = (node.host, node.port) if isinstance(node, Node) else node
    deadline = time.monotonic() + limit
    while True:
        try:
            client = pop(host, port, user)
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0], e
            assert time.monotonic() < deadline, f"{user}'s mailbox still in use after {limit} s"
            time.sleep(0.02)
            continue
        return client, time.monotonic() - since


def error_lines(paths: list[Path], offsets: dict[Path, int] | None = None) -> list[str]:
    """Lines at error level or above, and tracebacks, in node logs."""
    found = []
    for path in paths:
        data = path.read_bytes()[(offsets or {}).get(path, 0):]
        for line in data.decode("utf-8", "replace").splitlines():
            if re.search(r"#(error|critical)\]", line) or "Traceback" in line:
                found.append(f"{path.name}: {line}")
    return found


# -- 1. deliver on A, fetch from B, byte-exact


def fetchmail(cluster: Cluster, port: int, user: str) -> bytes:
    """fetchmail --keep once, through an MDA appending to a file; what it
    delivered, without the Received: line it adds."""
    program = need_program("fetchmail", "fetchmail")
    home = cluster.directory / f"fetchmail-{port}"
    home.mkdir()
    delivered = home / "delivered"
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 protocol pop3 port {port} auth password timeout 30\n"
        f'  user "{user}" there with password "{password(user)}" is "{getpass.getuser()}" here\n'
        "  sslproto '' keep fetchall no stripcr\n"
        f'  mda "cat >> {delivered}"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    result = subprocess.run([program, "--nosyslog", "-f", str(rc)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.sub(rb"Received: from 127\.0\.0\.1[^\n]*\n(?:[ \t][^\n]*\n)*", b"",
                  delivered.read_bytes())


def curl(port: int, user: str, number: int, host: str = "127.0.0.1") -> bytes:
    program = need_program("curl", "curl")
    result = subprocess.run([program, "-sS", "--max-time", "30",
                             f"pop3://{user}:{password(user)}@{host}:{port}/{number}"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mail_delivered_on_a_is_byte_exact_from_b_and_through_haproxy(cluster: Cluster) -> None:
    cluster.running()
    deliver(cluster.a, "ann", *CORPUS)
    messages = stored(cluster.dsn, "ann")
    assert len(messages) == len(CORPUS)
    # What was stored is what LMTP was given, under the trace headers.
    for message, sent in zip(messages, CORPUS, strict=True):
        assert message.startswith(b"Return-Path: <sender@example.net>")
        assert normalized(message).endswith(as_delivered(sent))
    expected = [as_delivered(m) for m in messages]
    b = cluster.b
    # poplib (unstuffs, strips CRLFs) through HAProxy and directly.
    for host, port in (("127.0.0.1", cluster.proxy_port), (b.host, b.port)):
        client = pop(host, port, "ann")
        try:
            assert retr_all(client) == expected, (host, port)
        finally:
            client.quit()
    # Every octet, stuffing and terminator included, from node B.
    with RawClient(b.port, b.host, timeout=30) as raw:
        raw.login(b"ann", password("ann").encode())
        for number, message in enumerate(messages, 1):
            assert raw.cmd(b"RETR %d" % number).startswith(b"+OK")
            assert raw.multi() == wire(message), number
        assert raw.cmd(b"QUIT").startswith(b"+OK")
    # curl: pop3:// RETR.
    for host, port in (("127.0.0.1", cluster.proxy_port), (b.host, b.port)):
        for number, message in enumerate(expected, 1):
            assert curl(port, "ann", number, host) == message, (host, port, number)
    # fetchmail --keep, "no stripcr" (else it drops every CR, bare ones
    # too), through HAProxy and through the node B frontend.
    for port in (cluster.proxy_port, cluster.proxy_b_port):
        assert fetchmail(cluster, port, "ann") == b"".join(expected), port
    assert stored(cluster.dsn, "ann") == messages  # kept


# -- 2. one session per mailbox, cluster-wide


def test_the_same_user_on_both_nodes_at_once_is_in_use(cluster: Cluster) -> None:
    cluster.running()
    deliver(cluster.b, "ben", b"Subject: one\r\n\r\nhi\r\n")
    first = direct(cluster.a, "ben")
    try:
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            direct(cluster.b, "ben")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            pop("127.0.0.1", cluster.proxy_port, "ben")  # whichever node HAProxy picks
        assert first.stat()[0] == 1
    finally:
        assert first.quit().startswith(b"+OK")
    second = direct(cluster.b, "ben")
    assert second.stat()[0] == 1
    second.quit()


# -- 3. SIGKILL a node


def test_a_node_killed_after_deles_changes_nothing(cluster: Cluster) -> None:
    cluster.running()
    deliver(cluster.b, "cat", *[b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(5)])
    before = stored(cluster.dsn, "cat")
    client = direct(cluster.a, "cat")
    for number in (1, 2, 3):
        client.dele(number)
    assert lock_holder(cluster.dsn, "cat") is not None
    killed = cluster.a.kill()
    client.close()
    # Through HAProxy, at once, before its checks mark node A down (fall 2,
    # 300 ms apart): a connection node A refuses is retried on node B
    # (retries, option redispatch), so no client sees the dead node.
    for _ in range(6):
        with RawClient(cluster.proxy_port, timeout=10) as greeted:
            assert greeted.greeting is not None and greeted.greeting.startswith(b"+OK")
    other, seconds = reopen(("127.0.0.1", cluster.proxy_port), "cat", killed)
    try:
        assert other.stat()[0] == 5
        assert stored(cluster.dsn, "cat") == before
    finally:
        other.quit()
    cluster.figures["reopen after kill (DELEs), s"] = round(seconds, 3)
    assert seconds < REOPEN_BOUND
    # HAProxy's log: "/+N" in the retries field is a redispatched session.
    assert cluster.proxy.log_path is not None
    log = Path(cluster.proxy.log_path).read_text(errors="replace")
    redispatched = re.findall(r" popgate/nodeB \S+ \d+ -- \d+/\d+/\d+/\d+/\+\d+ ", log)
    cluster.figures["redispatched after the kill"] = len(redispatched)
    assert redispatched, log[-3000:]
    cluster.a.start()


#: Seconds between sending QUIT and SIGKILL, a round each: from at once
#: (before popgate reads it) to after the commit.
QUIT_KILL_DELAYS = (0.0, 0.001, 0.002, 0.003, 0.005, 0.008)


def test_a_node_killed_during_quit_applies_all_or_nothing(cluster: Cluster) -> None:
    cluster.running()
    outcomes: list[str] = []
    times: list[float] = []
    nodes = (cluster.a, cluster.b)
    for round_, delay in enumerate(QUIT_KILL_DELAYS):
        # The session on one node, the reopen on the other, by turns.
        victim, survivor = nodes[round_ % 2], nodes[1 - round_ % 2]
        victim.ensure_running()  # killed the round before
        survivor.ensure_running()
        messages = [b"Subject: round %d %d\r\n\r\nhi\r\n" % (round_, i) for i in range(3)]
        deliver(survivor, "dan", *messages)
        before = stored(cluster.dsn, "dan")
        assert before[-3:] and len(before) == 3
        raw = RawClient(victim.port, victim.host, timeout=10)
        raw.login(b"dan", password("dan").encode())
        for number in (1, 2, 3):
            assert raw.cmd(b"DELE %d" % number).startswith(b"+OK")
        raw.send(b"QUIT\r\n")
        time.sleep(delay)
        killed = victim.kill()
        try:
            answer = raw.line(timeout=5)
        except (EOFError, ConnectionResetError, TimeoutError):
            answer = b""
        raw.close()
        other, seconds = reopen(survivor, "dan", killed)
        times.append(seconds)
        after = stored(cluster.dsn, "dan")
        if answer.startswith(b"+OK"):
            assert after == [], "answered QUIT, messages still there"
            outcomes.append("answered, deleted")
        elif after == []:
            outcomes.append("unanswered, deleted")  # committed, killed before +OK was sent
        else:
            assert after == before, "a QUIT applied in part"
            outcomes.append("unanswered, nothing deleted")
        assert other.stat()[0] == len(after)
        for number in range(1, len(after) + 1):
            other.dele(number)
        assert other.quit().startswith(b"+OK")
        assert stored(cluster.dsn, "dan") == []
    cluster.figures["kill during QUIT"] = outcomes
    cluster.figures["reopen after kill (QUIT), s"] = [round(t, 3) for t in times]
    assert max(times) < REOPEN_BOUND
    cluster.running()


def test_a_node_killed_mid_retr_changes_nothing(cluster: Cluster) -> None:
    cluster.running()
    big = big_message()
    deliver(cluster.b, "eve", b"Subject: small\r\n\r\nhi\r\n", big)
    before = stored(cluster.dsn, "eve")
    raw = RawClient(cluster.a.port, cluster.a.host, timeout=10)
    raw.login(b"eve", password("eve").encode())
    assert raw.cmd(b"DELE 1").startswith(b"+OK")
    assert raw.cmd(b"RETR 2").startswith(b"+OK")
    while len(raw.buf) < 1_000_000:
        assert raw.recv()
    killed = cluster.a.kill()
    raw.close()
    other, seconds = reopen(cluster.b, "eve", killed)
    try:
        assert other.stat()[0] == 2
        assert b"".join(line + b"\r\n" for line in other.retr(2)[1]) == as_delivered(before[1])
    finally:
        other.quit()
    assert stored(cluster.dsn, "eve") == before
    cluster.figures["reopen after kill (mid-RETR), s"] = round(seconds, 3)
    assert seconds < REOPEN_BOUND
    cluster.a.start()


# -- 4. PostgreSQL ends a node's connections


def node_backends(dsn: str, node: Node) -> list[int]:
    """The backend PIDs of C{node}'s connections (store and user store)."""
    with db(dsn) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE %s", (f"popgate-{node.label.lower()}%",)).fetchall()
    return [int(pid) for (pid,) in rows]


def test_terminated_connections_are_sys_temp_at_worst_and_heal_without_a_restart(
        cluster: Cluster) -> None:
    cluster.running()
    a = cluster.a
    deliver(a, "fay", b"Subject: before\r\n\r\nhi\r\n")
    direct(a, "fay").quit()  # a session connection, now idle in the pool
    deliver(a, "fay", b"Subject: open\r\n\r\nhi\r\n")
    open_session = direct(a, "fay")  # its connection, and its lock, go too
    open_session.dele(1)
    pid = a.pid()
    backends = node_backends(cluster.dsn, a)
    assert len(backends) >= 2, backends
    others = set(node_backends(cluster.dsn, cluster.b))
    with db(cluster.dsn) as connection:
        for backend in backends:
            connection.execute("SELECT pg_terminate_backend(%s)", (backend,))
    ended = time.monotonic()
    # The open session's QUIT cannot commit: -ERR, nothing deleted.
    with pytest.raises(poplib.error_proto, match=r"^b?'?-ERR") as quit_error:
        open_session.quit()
    open_session.close()
    assert len(stored(cluster.dsn, "fay")) == 2
    # The next login: [SYS/TEMP] (a dead connection found out), or +OK.
    try:
        direct(a, "fay").quit()
        first = "+OK"
    except poplib.error_proto as e:
        assert b"[SYS/TEMP]" in e.args[0], e
        first = "[SYS/TEMP]"
    deadline = ended + 5
    while True:
        try:
            client = direct(a, "fay")
            break
        except poplib.error_proto as e:
            assert b"[SYS/TEMP]" in e.args[0], e
            assert time.monotonic() < deadline, "no recovery within 5 s"
            time.sleep(0.1)
    healed = time.monotonic() - ended
    try:
        assert client.stat()[0] == 2
    finally:
        client.quit()
    deliver(a, "fay", b"Subject: after\r\n\r\nhi\r\n")
    assert len(stored(cluster.dsn, "fay")) == 3
    assert a.pid() == pid  # no restart
    assert set(node_backends(cluster.dsn, cluster.b)) >= others  # node B untouched
    cluster.figures["after pg_terminate_backend"] = {
        "terminated": len(backends), "open session's QUIT": str(quit_error.value),
        "first login": first, "logins work after s": round(healed, 3)}


# -- 5. deliveries on A while B polls


RATE = 20  # deliveries per second
SOAK = 15.0  # seconds


def test_deliveries_on_a_while_b_polls_serve_each_message_exactly_once(cluster: Cluster) -> None:
    cluster.running()
    logs = cluster.a.logs() + cluster.b.logs()
    offsets = {path: path.stat().st_size for path in logs}
    delivered: list[bytes] = []
    refused: list[str] = []
    done = threading.Event()

    def deliveries() -> None:
        try:
            with smtplib.LMTP(cluster.a.host, cluster.a.lmtp_port, timeout=30) as lmtp:
                start = time.monotonic()
                for i in range(int(RATE * SOAK)):
                    wait = start + i / RATE - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if time.monotonic() - start > SOAK + 10:
                        break  # bounded in time as well as in count
                    tag = b"soak-%04d" % i
                    try:
                        if lmtp.sendmail("s@example.net", ["gus"],
                                         b"Subject: %s\r\nX-Tag: %s\r\n\r\nbody %s\r\n"
                                         % (tag, tag, tag)) == {}:
                            delivered.append(tag)
                    except smtplib.SMTPException as e:
                        refused.append(f"{tag!r}: {e}")
        finally:
            done.set()

    served: list[bytes] = []  # by sessions whose QUIT was answered +OK
    uidls: list[bytes] = []
    sessions = {"answered": 0, "failed": 0}
    failures: list[str] = []

    def one_poll() -> None:
        client = pop("127.0.0.1", cluster.proxy_b_port, "gus")
        try:
            listing = client.uidl()[1]
            tags, seen = [], []
            for entry in listing:
                number, uidl = entry.split()
                lines = client.retr(int(number))[1]
                tags += [line.split()[1] for line in lines if line.startswith(b"X-Tag:")]
                seen.append(uidl)
            for entry in listing:
                client.dele(int(entry.split()[0]))
        except BaseException:
            client.close()
            raise
        if client.quit().startswith(b"+OK"):
            served.extend(tags)
            uidls.extend(seen)
            sessions["answered"] += 1

    def polls() -> None:
        deadline = time.monotonic() + SOAK + 20
        while time.monotonic() < deadline:
            finished = done.is_set()
            try:
                one_poll()
            except (poplib.error_proto, OSError, EOFError) as e:
                sessions["failed"] += 1
                failures.append(repr(e))
            if finished:
                return  # one last session after the last delivery
            time.sleep(0.05)

    threads = [threading.Thread(target=deliveries, daemon=True),
               threading.Thread(target=polls, daemon=True)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SOAK + 40)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads), "deadlock: a thread is stuck"
    remaining = [tag for message in stored(cluster.dsn, "gus")
                 for tag in re.findall(rb"^X-Tag: (\S+)", message, re.M)]
    cluster.figures["soak"] = {
        "delivered": len(delivered), "refused": len(refused), "seconds": round(elapsed, 1),
        "poll sessions answered": sessions["answered"], "failed": sessions["failed"],
        "served": len(served), "left in mailbox": len(remaining)}
    assert not refused, refused[:5]
    assert not failures, failures[:5]
    assert len(delivered) == int(RATE * SOAK)
    duplicates = [tag for tag, count in Counter(served).items() if count > 1]
    assert not duplicates, f"served twice: {duplicates[:5]}"
    assert len(set(uidls)) == len(uidls), "a UIDL served twice"
    assert not set(served) & set(remaining), "served by an answered QUIT yet still there"
    assert Counter(served + remaining) == Counter(delivered)
    assert sessions["answered"] >= 10
    assert error_lines(logs, offsets) == []


def test_the_nodes_logged_no_errors_outside_the_kills(cluster: Cluster) -> None:
    """Killed processes log nothing (SIGKILL); the ones running now, and
    each earlier start, logged no error-level line but the one expected:
    the QUIT whose connection pg_terminate_backend ended (deletions not
    applied is an error an operator must see)."""
    found = [line for line in error_lines(cluster.a.logs() + cluster.b.logs())
             if not ("op=commit" in line and "user=<fay>" in line
                     and "terminating connection due to administrator command" in line)]
    assert found == [], found[:10]


def test_the_store_takes_a_libpq_multi_host_dsn(cluster: Cluster) -> None:
    """What docs/cluster.md tells operators for a primary and a standby:
    the URI goes to libpq as it is, which tries each host in turn (here
    the first refuses connections) for a read-write session."""
    closed = free_port()
    name = cluster.dsn.rsplit("/", 1)[1]
    multi = (f"postgresql://postgres@127.0.0.1:{closed},127.0.0.1:5432/{name}"
             "?target_session_attrs=read-write")
    settings = parse_args(f"dsn={multi},pool_size=1,connect_timeout=3")
    info = psycopg.conninfo.conninfo_to_dict(settings.dsn)
    assert info["host"] == "127.0.0.1,127.0.0.1" and info["target_session_attrs"] == "read-write"
    store = PostgresStore(settings, reactor_thread.start_reactor())
    try:
        reactor_thread.run(store.deliver, "ann", b"Subject: via two hosts\n\nhi\n")
        maildrop = reactor_thread.run(store.open_maildrop, "ann")
        try:
            assert len(maildrop.list_messages()) == len(CORPUS) + 1
        finally:
            reactor_thread.run(maildrop.close)
    finally:
        reactor_thread.run(store.close)
