"""
The PostgreSQL mail store's schema, its versions, and the one way a
message is written into it (delivery and C{popgate migrate} both use
L{insert_message}, so a migrated message is stored exactly as a delivered
one).

Layout, and why:

  - C{popgate_mailboxes}: one row per user (the avatar id, as the realm
    names it).  The row is what a session's advisory lock is keyed on
    (C{pg_try_advisory_lock(LOCK_CLASS, id)}: two int4 keys, so popgate's
    locks cannot collide with an application's one-bigint locks).
  - C{popgate_messages}: one row per message, with its exact POP3 wire
    size (CRLF line ends, before dot-stuffing) and UIDL computed at
    delivery, so a session's snapshot (STAT, LIST, UIDL) is one index
    scan and reads no body.  Arrival order is C{id} (a sequence: never
    reused, so a UIDL made from it is never reused either).
  - C{popgate_chunks}: the body in rows of at most L{CHUNK_SIZE} octets.
    Chosen over large objects (which need C{lo_unlink} on every delete,
    C{vacuumlo} when one is missed, and their own permissions) and over
    one C{bytea} read with C{substring} (which detoasts only slices when
    the column is stored uncompressed, and a 100 MB value still has to be
    written in one statement and held whole by the writer): chunk rows are
    written and read one at a time, deleted by C{ON DELETE CASCADE} in the
    same transaction as the message, and replicated like any row.  Stored
    C{EXTERNAL} (uncompressed): mail bodies are mostly already encoded
    (base64 attachments) and compressing costs CPU on every read.
  - version 2, for LOGIN-DELAY and EXPIRE (L{popgate.stores.pg_history}):
    C{popgate_mailboxes.last_login}, the user's last successful login, and
    C{popgate_messages.retrieved_at}, a message's first RETR; both NULL
    until then, and a deleted message takes its time with it.

The schema is versioned in C{popgate_schema}; L{upgrade} applies the
steps above the current version, each in its own transaction, and is
idempotent.
"""

from __future__ import annotations

import secrets
from typing import Any

from popgate.maildrop import is_valid_uid
from popgate.wire import wire_size

#: The first key of every session lock (two-key C{pg_try_advisory_lock}).
#: 0x706f70 is "pop" in ASCII.
LOCK_CLASS = 0x706F70

#: Octets per body row: large enough that a 100 MB message is 400 rows,
#: small enough that one row is one comfortable send to the client.
CHUNK_SIZE = 256 * 1024

#: Each version's statements, applied in order by L{upgrade}.
STEPS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS popgate_mailboxes (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            created timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE IF NOT EXISTS popgate_messages (
            id bigserial PRIMARY KEY,
            mailbox_id bigint NOT NULL REFERENCES popgate_mailboxes (id) ON DELETE CASCADE,
            uidl text NOT NULL CHECK (uidl ~ '^[!-~]{1,70}$'),
            wire_size bigint NOT NULL CHECK (wire_size >= 0),
            stored_size bigint NOT NULL CHECK (stored_size >= 0),
            arrived timestamptz NOT NULL DEFAULT now(),
            UNIQUE (mailbox_id, uidl)
        )""",
        """CREATE INDEX IF NOT EXISTS popgate_messages_mailbox
            ON popgate_messages (mailbox_id, id)""",
        """CREATE TABLE IF NOT EXISTS popgate_chunks (
            message_id bigint NOT NULL REFERENCES popgate_messages (id) ON DELETE CASCADE,
            seq integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (message_id, seq)
        )""",
        "ALTER TABLE popgate_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    ),
    2: (
        "ALTER TABLE popgate_mailboxes ADD COLUMN IF NOT EXISTS last_login timestamptz",
        "ALTER TABLE popgate_messages ADD COLUMN IF NOT EXISTS retrieved_at timestamptz",
    ),
}

#: The version this code reads and writes.
VERSION = max(STEPS)


def current_version(cursor: Any) -> int:
    """The schema version of the database C{cursor} is on (0: none)."""
    cursor.execute("SELECT to_regclass('popgate_schema') IS NOT NULL")
    (exists,) = cursor.fetchone()
    if not exists:
        return 0
    cursor.execute("SELECT coalesce(max(version), 0) FROM popgate_schema")
    (version,) = cursor.fetchone()
    return int(version)


def upgrade(connection: Any) -> list[int]:
    """
    Bring the schema to L{VERSION}: create it on an empty database, apply
    the missing steps on an older one, nothing on a current one.  Two
    nodes upgrading at once are serialised by a transaction-level
    advisory lock.

    @param connection: a psycopg connection, not in a transaction.
    @return: the versions applied (empty when it was current).
    @raise ValueError: the database is newer than this code.
    """
    applied: list[int] = []
    for version in sorted(STEPS):
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
            cursor.execute("CREATE TABLE IF NOT EXISTS popgate_schema ("
                           "version integer PRIMARY KEY, "
                           "applied timestamptz NOT NULL DEFAULT now())")
            have = current_version(cursor)
            if have > VERSION:
                raise ValueError(f"the database has popgate schema version {have}; "
                                 f"this popgate knows {VERSION} at most: upgrade popgate")
            if have >= version:
                continue
            for statement in STEPS[version]:
                cursor.execute(statement)
            cursor.execute("INSERT INTO popgate_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def mailbox_id(cursor: Any, name: str, create: bool = True) -> int | None:
    """The id of C{name}'s mailbox row, created if C{create} (race-free:
    two deliveries creating it at once both get the one row)."""
    if create:
        cursor.execute("INSERT INTO popgate_mailboxes (name) VALUES (%s) "
                       "ON CONFLICT (name) DO NOTHING", (name,))
    cursor.execute("SELECT id FROM popgate_mailboxes WHERE name = %s", (name,))
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def new_uidl(message_id: int) -> bytes:
    """
    The UIDL of a delivered message: its id (never reused) and a random
    part, so that a database restored from a backup, whose sequence went
    back, does not hand a client a UIDL it saw on another message.
    """
    return b"%x.%s" % (message_id, secrets.token_hex(4).encode())


def insert_message(cursor: Any, mailbox: int, data: bytes, uidl: bytes | None = None) -> bytes:
    """
    Write one message (bytes as stored: LF or CRLF line ends) into
    C{mailbox}, in the caller's transaction.

    @param uidl: the UIDL to keep (C{popgate migrate}); a new one if
        C{None}.
    @return: the message's UIDL.
    @raise ValueError: C{uidl} is not 1-70 printable octets.
    """
    if uidl is not None and not is_valid_uid(uidl):
        raise ValueError(f"not a valid UIDL: {uidl!r}")
    cursor.execute("SELECT nextval(pg_get_serial_sequence('popgate_messages', 'id'))")
    (message_id,) = cursor.fetchone()
    if uidl is None:
        uidl = new_uidl(message_id)
    cursor.execute(
        "INSERT INTO popgate_messages (id, mailbox_id, uidl, wire_size, stored_size) "
        "VALUES (%s, %s, %s, %s, %s)",
        (message_id, mailbox, uidl.decode("ascii"), wire_size(data), len(data)))
    view = memoryview(data)
    chunks = [(message_id, seq, view[start:start + CHUNK_SIZE])
              for seq, start in enumerate(range(0, len(data), CHUNK_SIZE))]
    if chunks:
        cursor.executemany("INSERT INTO popgate_chunks (message_id, seq, data) "
                           "VALUES (%s, %s, %s)", chunks)
    return uidl
