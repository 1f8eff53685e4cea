"""The floor under the PostgreSQL store's RETR: what PostgreSQL itself
costs to hand out message bodies, with no POP3 server in the way.

    .venv/bin/python bench/pgfloor.py [--mb 10] [--reps 20]

In a throwaway database, bodies are stored as popgate stores them
(popgate_chunks-like rows of 256 KiB, STORAGE EXTERNAL), and also as 8,000
octet rows stored inline (STORAGE PLAIN), the other layout considered.
Each layout is read back row by row, as a session reads it, and the CPU
is reported per MB: the PostgreSQL backend's (utime+stime of its process)
and the client's (this process: psycopg's cursor, or libpq alone through
psycopg.pq), with two controls: the backend reading every row but sending
nothing (md5 of each row minus md5's own cost) and a query per row that
returns no body (the per-statement cost).  Each figure is the mean over
--reps reads.  popgate's RETR on the PostgreSQL store pays at least the
backend's and libpq's figures on top of what a RETR from Maildir costs;
docs/benchmarks.md compares them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg_database import throwaway_database

CLK = os.sysconf("SC_CLK_TCK")


def backend_cpu(connection: psycopg.Connection) -> float:
    with open(f"/proc/{connection.info.backend_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def md5_ms_per_mb() -> float:
    data = os.urandom(1 << 20)
    t0 = time.process_time()
    for _ in range(200):
        hashlib.md5(data).digest()
    return (time.process_time() - t0) / 200 * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=10, help="body size in MiB (default 10)")
    ap.add_argument("--reps", type=int, default=20, help="reads per figure (default 20)")
    a = ap.parse_args()
    body = os.urandom(a.mb << 19).hex().encode()  # text, as mail is: a.mb MiB
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as c:
        for table, storage, size in (("ext", "EXTERNAL", 262144), ("pl", "PLAIN", 8000)):
            c.execute(f"CREATE TABLE {table} (message_id bigint, seq int, data bytea, "
                      "PRIMARY KEY (message_id, seq))")
            c.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE {storage}")
            view = memoryview(body)
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES (1, %s, %s)",
                                [(i, view[o:o + size]) for i, o in enumerate(range(0, len(body), size))])
            c.execute(f"VACUUM ANALYZE {table}")
        rows = {"ext": -(-len(body) // 262144), "pl": -(-len(body) // 8000)}
        pq = c.pgconn
        pq.prepare(b"ext1", b"SELECT data FROM ext WHERE message_id = 1 AND seq = $1")

        def cursor_rows() -> None:
            for s in range(rows["ext"]):
                c.execute("SELECT data FROM ext WHERE message_id = 1 AND seq = %s", (s,), binary=True).fetchone()

        def libpq_rows() -> None:
            for s in range(rows["ext"]):
                pq.exec_prepared(b"ext1", [str(s).encode()], result_format=1).get_value(0, 0)

        def plain_batches() -> None:
            for s in range(0, rows["pl"], 32):
                c.execute("SELECT data FROM pl WHERE message_id = 1 AND seq >= %s ORDER BY seq LIMIT 32",
                          (s,), binary=True).fetchall()

        def md5_rows() -> None:
            for s in range(rows["ext"]):
                c.execute("SELECT md5(data) FROM ext WHERE message_id = 1 AND seq = %s", (s,)).fetchone()

        def no_body() -> None:
            for s in range(rows["ext"]):
                c.execute("SELECT 1 FROM ext WHERE message_id = 1 AND seq = %s", (s,)).fetchone()

        md5_cost = md5_ms_per_mb()
        print(f"PostgreSQL {c.info.server_version}; body {a.mb} MiB of text; md5 costs {md5_cost:.3f} ms/MB here")
        print(f"{'read':58} {'backend ms/MB':>14} {'client ms/MB':>13}")
        for label, job in (
                ("256 KiB EXTERNAL rows, psycopg cursor (popgate before)", cursor_rows),
                ("256 KiB EXTERNAL rows, libpq prepared (popgate now)", libpq_rows),
                ("8,000 octet PLAIN rows, 32 per statement", plain_batches),
                ("control: md5 of each row in the backend, nothing sent", md5_rows),
                ("control: a statement per row, no body", no_body)):
            job()
            # The backend's CPU is counted in clock ticks (10 ms): summed
            # over all the reads, not per read.
            b0, t0 = backend_cpu(c), time.process_time()
            for _ in range(a.reps):
                job()
            b = (backend_cpu(c) - b0) * 1e3 / (a.mb * a.reps)
            cl = (time.process_time() - t0) * 1e3 / (a.mb * a.reps)
            if job is md5_rows:
                b -= md5_cost
                label += " (md5 taken off)"
            print(f"{label:58} {b:14.3f} {cl:13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
