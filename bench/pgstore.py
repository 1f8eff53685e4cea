"""The PostgreSQL side of bench/run.py: a throwaway database on the
machine's PostgreSQL, the schema (`popgate db init`), loading the generated
Maildirs (`popgate migrate`, timed: the migration benchmark), fresh copies
of the 100k mailbox, and the CPU of the PostgreSQL backends serving the
bench database.

The PostgreSQL server is the machine's, shared with other work: only the
database this module creates is touched (CREATE, then DROP ... WITH (FORCE)
of that one name), and only the backends connected to it are metered.

Backend CPU: a thread reads the postmaster's children every 50 ms
(/proc/PID/task/PID/children), keeps those whose process title names the
bench database, and reads utime+stime of each from /proc/PID/stat.  A
backend still there at the end counts from its value at the start (0 if it
started during the run: its start-up is part of the cost).  A backend that
ends during the run (a connection popgate closes: many, when its pool keeps
fewer idle connections than there are sessions) may live for less than a
sample; its CPU is taken from the postmaster's cutime+cstime, which grows by
the whole CPU of every child it reaps.  That counts any other database's
backends that end meanwhile too: their number is reported
(pg_other_backends_ended; 0 means the figure is the bench's alone).  Which
node a backend serves is its application_name (pg_stat_activity, asked once
per new backend); the CPU of ended backends is shared out between nodes by
the number of their backends seen ending.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import psycopg

ADMIN_DSN = os.environ.get("POPGATE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        s = f.read()
    return s[s.rfind(b")") + 2:].split()


def _cpu(pid: int) -> float | None:
    try:
        f = _stat(pid)
        return (int(f[11]) + int(f[12])) / CLK
    except (OSError, IndexError):
        return None


class BenchDatabase:
    """One throwaway database, popgate_bench_<random>, on ADMIN_DSN's server."""

    def __init__(self) -> None:
        self.name = f"popgate_bench_{secrets.token_hex(4)}"
        self.admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
        self.admin.execute(f"CREATE DATABASE {self.name}")
        (backend,) = self.admin.execute("SELECT pg_backend_pid()").fetchone()
        self.postmaster = int(_stat(backend)[1])
        self.settings = {k: self.admin.execute(f"SHOW {k}").fetchone()[0]
                         for k in ("server_version", "shared_buffers", "synchronous_commit", "fsync",
                                   "wal_level", "max_connections")}

    def dsn(self, app: str | None = None) -> str:
        base = ADMIN_DSN.rsplit("/", 1)[0] + "/" + self.name
        return base + (f"?application_name={app}" if app else "")

    def store(self, app: str, extra: str = "") -> str:
        return f"postgresql:dsn={self.dsn(app)}" + (f",{extra}" if extra else "")

    def drop(self) -> None:
        try:
            self.admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            self.admin.close()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn("popgate-bench-harness"), autocommit=True) as c:
            cur = c.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def sessions(self) -> int:
        """Connections to the bench database so far (pg_stat_database.sessions,
        PostgreSQL 14+; counted when a session ends, so it may lag a little)."""
        try:
            row = self.admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                                     (self.name,)).fetchone()
        except psycopg.Error:
            return 0
        return int(row[0] or 0) if row else 0

    def apps(self, pids: list[int]) -> dict[int, str]:
        rows = self.admin.execute("SELECT pid, application_name FROM pg_stat_activity "
                                  "WHERE pid = ANY(%s)", (pids,)).fetchall()
        return {int(p): a for p, a in rows}


class BackendMeter:
    """CPU of the bench database's backends while it runs (see the module
    docstring); a context manager; `result()` afterwards."""

    def __init__(self, db: BenchDatabase, interval: float = 0.05) -> None:
        self.db = db
        self.interval = interval
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}    # pid -> "backend" | "autovacuum" | "other"
        self.app: dict[int, str] = {}
        self.ended: set[int] = set()
        self.other_ended = 0
        self.started = 0
        self._stop = threading.Event()
        self._first = True
        self.lock = threading.Lock()

    def _children(self) -> list[int]:
        pm = self.db.postmaster
        try:
            text = Path(f"/proc/{pm}/task/{pm}/children").read_text()
            return [int(x) for x in text.split()]
        except OSError:
            return [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == pm]

    def _classify(self, pid: int) -> str:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "other"
        words = title.split()
        if self.db.name not in words:
            return "other"
        return "autovacuum" if "autovacuum" in words else "backend"

    def poll(self) -> None:
        kids = self._children()
        new_backends = []
        for pid in kids:
            if pid not in self.kind:
                self.kind[pid] = self._classify(pid)
                if self.kind[pid] != "other":
                    c = _cpu(pid)
                    if c is None:
                        continue
                    self.base[pid] = c if self._first else 0.0
                    if not self._first:
                        self.started += 1
                    new_backends.append(pid)
            if self.kind[pid] != "other":
                c = _cpu(pid)
                if c is not None:
                    self.last[pid] = c
        live = set(kids)
        for pid in self.last:
            if pid not in live:
                self.ended.add(pid)
        for pid in [p for p, k in self.kind.items() if k == "other" and p not in live]:
            del self.kind[pid]  # gone (its pid may come back as a new backend)
            if not self._first:
                self.other_ended += 1
        missing = [p for p in self.last if p not in self.app and p in live and self.kind[p] == "backend"]
        if missing:
            try:
                self.app.update(self.db.apps(missing))
            except psycopg.Error:
                pass
        self._first = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self.lock:
                self.poll()

    def _reaped(self) -> float:
        f = _stat(self.db.postmaster)
        return (int(f[13]) + int(f[14])) / CLK

    def __enter__(self) -> BackendMeter:
        with self.lock:
            self.poll()
            self.reaped0 = self._reaped()
            self.sessions0 = self.db.sessions()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        with self.lock:
            self.poll()
            self.reaped = self._reaped() - self.reaped0
            self.sessions = self.db.sessions() - self.sessions0
        self.wall = time.monotonic() - self.t0

    def result(self) -> dict:
        by_app: dict[str, float] = {}
        total = auto = 0.0
        ended_base = 0.0
        ended_by_app: dict[str, int] = {}
        for pid, last in self.last.items():
            if pid in self.ended:  # counted through the postmaster's cutime
                ended_base += self.base.get(pid, 0.0)
                app = self.app.get(pid, "?")
                ended_by_app[app] = ended_by_app.get(app, 0) + 1
                continue
            d = max(0.0, last - self.base.get(pid, 0.0))
            if self.kind.get(pid) == "autovacuum":
                auto += d
                continue
            total += d
            app = self.app.get(pid, "?")
            by_app[app] = by_app.get(app, 0.0) + d
        reaped = max(0.0, self.reaped - ended_base)
        total += reaped
        n_ended = sum(ended_by_app.values())
        for app, n in ended_by_app.items():
            by_app[app] = by_app.get(app, 0.0) + reaped * n / n_ended
        if not n_ended and reaped:
            by_app["?"] = by_app.get("?", 0.0) + reaped
        return {"pg_cpu_s": round(total, 3), "pg_autovacuum_cpu_s": round(auto, 3),
                "pg_ended_cpu_s": round(reaped, 3),
                "pg_cpu_by_app": {k: round(v, 3) for k, v in sorted(by_app.items())},
                "pg_backends_started": self.started, "pg_backends_ended": len(self.ended),
                "pg_connections_ended": self.sessions,
                "pg_other_backends_ended": self.other_ended,
                "pg_backends_seen": sum(1 for p in self.last if self.kind.get(p) == "backend")}


def _ppid(pid: int) -> int:
    try:
        return int(_stat(pid)[1])
    except (OSError, IndexError):
        return -1


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def popgate_cmd(twistd: str) -> str:
    return str(Path(twistd).with_name("popgate"))


def db_init(db: BenchDatabase, twistd: str) -> str:
    r = subprocess.run([popgate_cmd(twistd), "db", "init", "--store", db.store("popgate-bench-init")],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"popgate db init failed: {r.stderr.strip()[-500:]}")
    return r.stdout.strip()


def migrate(db: BenchDatabase, twistd: str, root: Path, users: list[str], workdir: Path,
            tag: str, run_bounded) -> dict:
    """`popgate migrate --from maildir:ROOT/%n --to ... --users-from FILE`,
    timed, with its own CPU and that of its backends."""
    ufile = workdir / f"migrate-{tag}.txt"
    ufile.write_text("".join(u + "\n" for u in users))
    cmd = [popgate_cmd(twistd), "migrate", "--from", f"maildir:{root}/%n",
           "--to", db.store(f"popgate-bench-migrate-{tag}"), "--users-from", str(ufile)]
    c0, t0 = children_cpu(), time.monotonic()
    with BackendMeter(db) as meter:
        r = run_bounded(cmd, 1800)
    wall = time.monotonic() - t0
    cpu = children_cpu() - c0
    if r.returncode != 0:
        raise RuntimeError(f"popgate migrate ({tag}) failed rc={r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[-500:]}")
    (n,) = db.query("SELECT count(*) FROM popgate_messages m JOIN popgate_mailboxes b "
                    "ON b.id = m.mailbox_id WHERE b.name = ANY(%s)", (users,))[0]
    (octets,) = db.query("SELECT coalesce(sum(stored_size), 0) FROM popgate_messages m JOIN "
                         "popgate_mailboxes b ON b.id = m.mailbox_id WHERE b.name = ANY(%s)", (users,))[0]
    pg = meter.result()
    return {"set": tag, "users": len(users), "messages": int(n), "MB": round(int(octets) / 1e6, 1),
            "wall_s": round(wall, 2), "messages_per_s": round(int(n) / wall, 1),
            "MB_per_s": round(int(octets) / 1e6 / wall, 1), "migrate_cpu_s": round(cpu, 2),
            "pg_cpu_s": pg["pg_cpu_s"], "pg_autovacuum_cpu_s": pg["pg_autovacuum_cpu_s"],
            "cpu_ms_per_message": round(1e3 * (cpu + pg["pg_cpu_s"]) / max(1, int(n)), 3),
            "last_line": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""}


def bulk_load(db: BenchDatabase, maildir: Path, name: str) -> dict:
    """The quick run's stand-in for migrating the 100k mailbox (which takes
    minutes): the same rows written with COPY by the harness (UIDL: the
    file's unique name; wire size as popgate computes it).  Not a
    migration figure."""
    from popgate.stores.pg_schema import CHUNK_SIZE
    from popgate.wire import wire_size
    t0 = time.monotonic()
    files = sorted((maildir / "cur").iterdir()) + sorted((maildir / "new").iterdir())
    with psycopg.connect(db.dsn("popgate-bench-harness")) as c:
        (mbox,) = c.execute("INSERT INTO popgate_mailboxes (name) VALUES (%s) RETURNING id",
                            (name,)).fetchone()
        (first,) = c.execute("SELECT nextval(pg_get_serial_sequence('popgate_messages', 'id'))").fetchone()
        c.execute("SELECT setval(pg_get_serial_sequence('popgate_messages', 'id'), %s)",
                  (first + len(files),))
        with c.cursor() as cur:
            with cur.copy("COPY popgate_messages (id, mailbox_id, uidl, wire_size, stored_size) "
                          "FROM STDIN") as cp:
                datas = []
                for i, f in enumerate(files):
                    data = f.read_bytes()
                    datas.append(data)
                    cp.write_row((first + i, mbox, f.name.split(":")[0][:70], wire_size(data), len(data)))
            with cur.copy("COPY popgate_chunks (message_id, seq, data) FROM STDIN") as cp:
                for i, data in enumerate(datas):
                    for seq, start in enumerate(range(0, len(data), CHUNK_SIZE)):
                        cp.write_row((first + i, seq, data[start:start + CHUNK_SIZE]))
    return {"set": "big (COPY by the harness, not popgate migrate)", "messages": len(files),
            "wall_s": round(time.monotonic() - t0, 2)}


def fresh_copy(db: BenchDatabase, source: str, name: str) -> float:
    """A new mailbox `name` with every message of `source` (new rows, the
    same UIDLs, sizes and bodies, in the same order), as one statement.
    Seconds taken."""
    t0 = time.monotonic()
    with psycopg.connect(db.dsn("popgate-bench-harness")) as c:
        (src,) = c.execute("SELECT id FROM popgate_mailboxes WHERE name = %s", (source,)).fetchone()
        (dst,) = c.execute("INSERT INTO popgate_mailboxes (name) VALUES (%s) RETURNING id",
                           (name,)).fetchone()
        c.execute("""
            WITH src AS (SELECT id, uidl, wire_size, stored_size FROM popgate_messages
                         WHERE mailbox_id = %(src)s),
                 ins AS (INSERT INTO popgate_messages (mailbox_id, uidl, wire_size, stored_size)
                         SELECT %(dst)s, uidl, wire_size, stored_size FROM src ORDER BY id
                         RETURNING id, uidl)
            INSERT INTO popgate_chunks (message_id, seq, data)
            SELECT ins.id, ch.seq, ch.data FROM ins JOIN src USING (uidl)
            JOIN popgate_chunks ch ON ch.message_id = src.id""", {"src": src, "dst": dst})
    return time.monotonic() - t0


def drop_mailbox(db: BenchDatabase, name: str) -> None:
    db.query("DELETE FROM popgate_mailboxes WHERE name = %s", (name,))
