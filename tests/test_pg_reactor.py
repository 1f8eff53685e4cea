"""
popgate.stores.pg_reactor against the machine's PostgreSQL, on a real
reactor: batches in one pipeline, statements prepared once per
connection, a failing statement (its error code, the results before it,
the connection still usable), a connection the server ends (the
server's own reason, nothing left watched by the reactor), a server that
does not answer in time, and batches queued behind each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from popgate.stores.pg_reactor import LinkBroken, ReactorLink, Statement, StatementError
from popgate.testing import reactor_thread
from tests.pg_database import throwaway_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with throwaway_database() as dsn:
        yield dsn


@pytest.fixture()
def link(dsn: str) -> Iterator[ReactorLink]:
    reactor = reactor_thread.start_reactor()
    connection = psycopg.connect(dsn, autocommit=True)
    made = ReactorLink(reactor, connection, 5.0)
    yield made
    reactor_thread.run(made.done)
    connection.close()


def values(results: list[Any]) -> list[list[bytes | None]]:
    return [[r.get_value(i, 0) for i in range(r.ntuples)] for r in results]


def prepared(connection: psycopg.Connection[Any]) -> set[str]:
    rows = connection.execute("SELECT name FROM pg_prepared_statements").fetchall()
    return {row[0] for row in rows}


def test_a_batch_is_answered_in_order_and_each_statement_prepared_once(link: ReactorLink) -> None:
    two = Statement(b"t_two", b"SELECT $1::int4 * 2", (b"21",))
    series = Statement(b"t_series", b"SELECT generate_series(1, $1::int4)", (b"3",))
    assert values(reactor_thread.run(link.run, [two, series, two])) == [
        [b"42"], [b"1", b"2", b"3"], [b"42"]]
    assert {"t_two", "t_series"} <= prepared(link.connection)
    # Again: executed by name, no second PREPARE (which would fail as a duplicate).
    assert values(reactor_thread.run(link.run, [series, two])) == [[b"1", b"2", b"3"], [b"42"]]


def test_a_failing_statement_says_why_keeps_what_ran_and_the_connection(link: ReactorLink) -> None:
    ok = Statement(b"t_ok", b"SELECT 1")
    zero = Statement(b"t_zero", b"SELECT 1 / $1::int4", (b"0",))
    with pytest.raises(StatementError) as e:
        reactor_thread.run(link.run, [ok, zero, ok])
    assert e.value.sqlstate == "22012" and "division by zero" in str(e.value)
    assert values(e.value.results) == [[b"1"]]
    missing = Statement(b"t_missing", b"SELECT * FROM no_such_table")
    with pytest.raises(StatementError) as e:
        reactor_thread.run(link.run, [missing])  # its PREPARE fails
    assert e.value.sqlstate == "42P01"
    assert values(reactor_thread.run(link.run, [ok])) == [[b"1"]]


def test_a_connection_the_server_ends_fails_with_its_reason_and_is_let_go(
        link: ReactorLink, dsn: str) -> None:
    reactor_thread.run(link.run, [Statement(b"t_ok", b"SELECT 1")])
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (link.connection.info.backend_pid,))
    with pytest.raises(LinkBroken, match="terminating connection due to administrator command"):
        reactor_thread.run(link.run, [Statement(b"t_ok", b"SELECT 1")])
    assert link.connection.closed
    reactor = link.reactor
    assert link not in reactor_thread.run(reactor.getReaders)
    assert link.fileno() == -1
    with pytest.raises(LinkBroken, match="closed"):
        reactor_thread.run(link.run, [Statement(b"t_ok", b"SELECT 1")])


def test_no_answer_in_time_gives_the_connection_up(dsn: str) -> None:
    reactor = reactor_thread.start_reactor()
    connection = psycopg.connect(dsn, autocommit=True)
    slow = ReactorLink(reactor, connection, 0.5)
    with pytest.raises(LinkBroken, match=r"no answer from the server within 0.5s"):
        reactor_thread.run(slow.run, [Statement(b"t_sleep", b"SELECT pg_sleep(5)")])
    assert connection.closed


def test_batches_run_one_after_the_other(link: ReactorLink) -> None:
    def both() -> Any:
        from twisted.internet import defer

        first = link.run([Statement(b"t_sleep_a", b"SELECT pg_sleep(0.2), 'a'")])
        second = link.run([Statement(b"t_b", b"SELECT 'b'")])
        assert not second.called
        return defer.gatherResults([first, second])

    first, second = reactor_thread.run(both)
    assert first[0].get_value(0, 1) == b"a" and second[0].get_value(0, 0) == b"b"


def test_each_statement_of_a_batch_commits_before_the_next_runs(link: ReactorLink) -> None:
    """A sync point after each statement: in one implicit transaction, a
    QUIT's unlock would free the mailbox before its DELETE committed, and
    another node's snapshot would still list the deleted messages (the
    two-node test caught that once)."""
    txid = Statement(b"t_txid", b"SELECT txid_current()")
    first, second = values(reactor_thread.run(link.run, [txid, txid]))
    assert first != second
