"""
The PostgreSQL mail store's parts that need no server: the argument
string, the chunk-reading message source, the lock key, and the pool's
bounds and its handling of dead connections (with fake connections).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from popgate import errors
from popgate.interfaces import IDeferredMessageSource
from popgate.stores.pg_connections import ConnectionPool
from popgate.stores.pg_settings import PGSettings, parse_args
from popgate.stores.pg_source import ChunkSource
from popgate.stores.postgresql import lock_key, make_store


def test_the_argument_string_has_defaults_and_a_documented_dead_peer_bound() -> None:
    settings = parse_args("dsn=postgresql://popgate@db.example/mail")
    assert settings == PGSettings("postgresql://popgate@db.example/mail")
    assert settings.dead_peer_bound == 30.0
    kwargs = settings.connect_kwargs()
    assert (kwargs["keepalives"], kwargs["keepalives_idle"], kwargs["keepalives_interval"],
            kwargs["keepalives_count"], kwargs["tcp_user_timeout"]) == (1, 10, 5, 3, 30000)
    assert "-c tcp_keepalives_idle=10" in kwargs["options"]
    assert "-c statement_timeout=30000" in kwargs["options"]
    tuned = parse_args("dsn=postgresql://h/db?sslmode=require, pool_size=8,connect_timeout=2,"
                       "keepalive_idle=4,keepalive_interval=2,keepalive_count=2,user_timeout=9")
    assert (tuned.pool_size, tuned.connect_timeout, tuned.dead_peer_bound) == (8, 2.0, 9.0)
    assert (settings.idle_sessions, parse_args("dsn=postgresql://h/db,idle_sessions=0").idle_sessions
            ) == (16, 0)
    assert tuned.dsn == "postgresql://h/db?sslmode=require"
    own = parse_args("dsn=postgresql://h/db?options=-c%20search_path%3Dmail").connect_kwargs()
    assert own["options"].endswith("-c statement_timeout=30000 -c search_path=mail")


@pytest.mark.parametrize("argstring, message", [
    ("", r"dsn= is required"),
    ("dsn=mysql://h/db", r"postgresql:// URI"),
    ("dsn=postgresql://h", r"needs a database"),
    ("dsn=postgresql://h/db,pool_size=0", r"pool_size= must be at least 1"),
    ("dsn=postgresql://h/db,pool_size=many", r"pool_size= must be a number"),
    ("dsn=postgresql://h/db,idle_sessions=-1", r"idle_sessions= must be 0 or more"),
    ("dsn=postgresql://h/db,keepalive_count=0", r"keepalive_count= must be more than 0"),
    ("dsn=postgresql://h/db,bogus=1", r"unknown key bogus="),
])
def test_bad_argument_strings_are_one_line_errors(argstring: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^postgresql: .*{message}") as e:
        make_store(argstring, object())
    assert "\n" not in str(e.value)


def test_lock_keys_fit_an_int4() -> None:
    assert [lock_key(i) for i in (1, 2**31 - 1)] == [1, 2**31 - 1]
    assert lock_key(2**31) == -(2**31)
    assert all(-(2**31) <= lock_key(i) < 2**31 for i in (2**32, 2**40 + 7, 2**63 - 1))


def rows_of(data: bytes, size: int) -> dict[int, bytes]:
    return {seq: data[start:start + size] for seq, start in enumerate(range(0, len(data), size))}


def got(d: Any) -> Any:
    """The result of a Deferred that has fired (raising its failure)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_the_source_hands_out_at_most_size_octets_and_keeps_the_rest_of_a_row() -> None:
    data = bytes(range(256)) * 40  # 10,240 octets, rows of 3,000
    rows = rows_of(data, 3000)
    fetched: list[int] = []
    waiting: list[defer.Deferred[bytes | None]] = []

    def fetch(message_id: int, seq: int) -> defer.Deferred[bytes | None]:
        assert message_id == 7
        fetched.append(seq)
        waiting.append(defer.Deferred())
        return waiting[-1]

    source = ChunkSource(fetch, 7, len(data), first=rows[0])
    assert IDeferredMessageSource.providedBy(source) and not source.blocking
    out = [got(source.read_deferred(1000))]  # the first row came with the open
    assert out == [data[:1000]]
    while True:
        d = source.read_deferred(1024)
        if waiting:  # a row was asked for: nothing until it comes
            assert not d.called
            waiting.pop().callback(rows.get(fetched[-1]))
        part = got(d)
        assert len(part) <= 1024
        if not part:
            break
        out.append(part)
    assert b"".join(out) == data
    assert fetched == [1, 2, 3]  # one fetch per row, none past the end
    source.close()


def test_a_row_missing_before_the_end_is_a_temporary_failure() -> None:
    rows = {0: b"a" * 10}
    source = ChunkSource(lambda _, seq: defer.succeed(rows.get(seq)), 1, 25)
    assert got(source.read_deferred(100)) == b"a" * 10
    with pytest.raises(errors.TemporaryFailure, match="row 1 is missing"):
        got(source.read_deferred(100))
    assert got(ChunkSource(lambda _, seq: defer.succeed(None), 1, 0).read_deferred(10)) == b""


class FakeConnection:
    def __init__(self, name: int) -> None:
        self.name = name
        self.closed = False
        self.broken = False
        self.info = type("Info", (), {"transaction_status": psycopg.pq.TransactionStatus.IDLE})()

    def close(self) -> None:
        self.closed = True


def fake_opener() -> tuple[list[FakeConnection], Any]:
    made: list[FakeConnection] = []

    def opener() -> FakeConnection:
        made.append(FakeConnection(len(made)))
        return made[-1]

    return made, opener


def test_the_pool_is_bounded_and_reuses_idle_connections() -> None:
    made, opener = fake_opener()
    pool = ConnectionPool(opener, size=2, wait=0.05)
    a, reused_a = pool.get()
    b, _ = pool.get()
    assert not reused_a and pool.busy == 2
    with pytest.raises(errors.TemporaryFailure, match="all 2 database connections busy"):
        pool.get()
    pool.put(a)
    again, reused = pool.get()
    assert again is a and reused
    # A waiting job gets the connection given back meanwhile.
    threading.Timer(0.01, pool.put, (b,)).start()
    pool._wait = 5
    got, _ = pool.get()
    assert got is b
    assert len(made) == 2


def test_a_reused_connection_found_dead_is_replaced_and_the_job_run_again() -> None:
    made, opener = fake_opener()
    pool = ConnectionPool(opener, size=2, wait=1)
    first, _ = pool.get()
    second, _ = pool.get()
    pool.put(first)
    pool.put(second)  # both idle; both die (a restart)
    calls: list[int] = []

    def job(connection: Any) -> int:
        calls.append(connection.name)
        if connection.name < 2:
            connection.broken = True
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return int(connection.name)

    assert pool.run(job) == 2
    assert calls == [1, 2]  # the dead one, then a new one (the other idle one discarded)
    assert first.closed and second.closed and pool.busy == 0 and pool.idle == 1

    def fails(connection: Any) -> int:
        connection.broken = True
        raise psycopg.OperationalError("connection refused")

    fresh = ConnectionPool(opener, size=1, wait=1)
    with pytest.raises(psycopg.OperationalError):
        fresh.run(fails)  # a new connection that fails is not retried
    assert fresh.busy == 0
