"""
The PostgreSQL side of LOGIN-DELAY and EXPIRE (popgate.stores.pg_history)
on a throwaway database: schema version 2's columns, the SQL functions,
and the two adapters over a real store's pool.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from popgate.stores import pg_history, pg_schema
from tests.helpers import InlineReactor
from tests.pg_database import throwaway_database

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg")
T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as connection:
        pg_schema.upgrade(connection)
        yield dsn


@pytest.fixture
def db(dsn: str) -> Iterator[object]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("DELETE FROM popgate_mailboxes")
        yield connection


def mailbox(db: object, name: str, messages: int) -> tuple[int, list[int]]:
    with db.cursor() as cursor:  # type: ignore[attr-defined]
        box = pg_schema.mailbox_id(cursor, name)
        assert box is not None
        for i in range(messages):
            pg_schema.insert_message(cursor, box, b"Subject: %d\n\nbody\n" % i)
        ids = [row[0] for row in cursor.execute(
            "SELECT id FROM popgate_messages WHERE mailbox_id = %s ORDER BY id", (box,))]
    return box, ids


def test_version_2_adds_the_columns_to_a_version_1_database() -> None:
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as connection:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("CREATE TABLE popgate_schema (version integer PRIMARY KEY, "
                           "applied timestamptz NOT NULL DEFAULT now())")
            for statement in pg_schema.STEPS[1]:
                cursor.execute(statement)
            cursor.execute("INSERT INTO popgate_schema (version) VALUES (1)")
        assert pg_schema.upgrade(connection) == [2]
        assert pg_schema.upgrade(connection) == []
        columns = {row[0] for row in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name IN "
            "('popgate_mailboxes', 'popgate_messages')")}
        assert {"last_login", "retrieved_at"} <= columns


def test_last_login(db: object) -> None:
    mailbox(db, "alice@example.org", 0)
    assert pg_history.last_login(db, "alice@example.org") is None
    assert pg_history.last_login(db, "nobody@example.org") is None
    pg_history.record_login(db, "alice@example.org", T0 + 0.25)
    assert pg_history.last_login(db, "alice@example.org") == T0 + 0.25
    pg_history.record_login(db, "alice@example.org", T0 + 900)
    assert pg_history.last_login(db, "alice@example.org") == T0 + 900


def test_retrievals_and_expiry(db: object) -> None:
    box, ids = mailbox(db, "alice", 4)
    other, other_ids = mailbox(db, "bob", 1)
    assert pg_history.retrieved_times(db, box, ids) == [None] * 4
    pg_history.record_retrieved(db, box, {ids[0]: T0, ids[2]: T0 + DAY})
    pg_history.record_retrieved(db, box, {ids[0]: T0 + 5 * DAY})  # the first RETR stays
    pg_history.record_retrieved(db, box, {other_ids[0]: T0})  # not alice's message: ignored
    pg_history.record_retrieved(db, box, {})
    assert pg_history.retrieved_times(db, box, ids) == [T0, None, T0 + DAY, None]
    assert pg_history.retrieved_times(db, other, other_ids) == [None]
    assert pg_history.expired_ids(db, box, ids, 30.0, T0 + 30 * DAY - 1) == []
    assert pg_history.expired_ids(db, box, ids, 30.0, T0 + 30 * DAY) == [ids[0]]
    assert pg_history.expired_ids(db, box, ids, 0.0, T0 + DAY) == [ids[0], ids[2]]
    assert pg_history.expired_ids(db, box, ids, float("inf"), T0 + 1e9) == []
    assert pg_history.expired_ids(db, box, ids[1:], 0.0, T0 + DAY) == [ids[2]]  # the snapshot's


def test_the_adapters_over_a_store(dsn: str, db: object) -> None:
    from popgate.stores.postgresql import make_store

    store = make_store(f"dsn={dsn}", InlineReactor())
    try:
        box, ids = mailbox(db, "carol", 2)
        history = pg_history.PostgresLoginHistory(store)
        assert history.last_login("carol").result is None
        history.record_login("carol", T0)
        assert history.last_login("carol").result == T0
        record = pg_history.PostgresRetrievalRecord(store, box, ids)
        assert record.load().result == [None, None]
        record.save([None, T0 + 1])
        assert record.load().result == [None, T0 + 1]
    finally:
        store.close()
