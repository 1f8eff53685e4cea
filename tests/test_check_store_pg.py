"""
C{popgate check-config --store postgresql:...} against real servers: a
closed port, a throwaway database without the schema, and one with it;
each answer is one line.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from popgate.stores import pg_schema
from tests.harness import free_port
from tests.pg_database import throwaway_database
from tests.popgate_server import REPO, child_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def check_config(store: str) -> tuple[int, list[str], float]:
    """Run C{popgate check-config} on C{store}: its status, its lines, and
    how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from popgate.cli import main; sys.exit(main())",
         "check-config", "--store", store, "--auth", "memory:a:b",
         "--pop3", "tcp:1110:interface=127.0.0.1"],
        capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=60, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines(), time.monotonic() - started


def test_a_closed_port_is_one_line_at_once() -> None:
    port = free_port()
    dsn = f"postgresql://popgate:secret@127.0.0.1:{port}/mail"
    status, lines, took = check_config(f"postgresql:dsn={dsn},connect_timeout=5")
    assert status == 1
    assert lines[0].startswith(f"--store postgresql: cannot connect to "
                               f"postgresql://popgate:***@127.0.0.1:{port}/mail: "), lines
    assert "Connection refused" in lines[0]
    assert lines[1:] == ["popgate check-config: 1 problem"]
    assert "secret" not in "".join(lines)
    assert took < 20  # refused at once, not a timeout


def test_a_database_without_the_schema_and_with_it() -> None:
    import psycopg

    with throwaway_database() as dsn:
        status, lines, _ = check_config(f"postgresql:dsn={dsn}")
        assert status == 1
        assert len(lines) == 2, lines
        assert lines[0].startswith("--store postgresql: the database ")
        assert lines[0].endswith(f"has popgate schema version 0, this popgate needs "
                                 f"{pg_schema.VERSION}: run popgate db init")
        with psycopg.connect(dsn, autocommit=True) as connection:
            pg_schema.upgrade(connection)
        status, lines, _ = check_config(f"postgresql:dsn={dsn}")
        assert status == 0, lines
        assert lines == [f"popgate check-config: ok: store postgresql (schema version "
                         f"{pg_schema.VERSION}, 0 mailboxes), 1 listener, memory (1 user given "
                         "on the command line)"]
