#!/usr/bin/env python3
"""popgate vs Dovecot 2.3 ("tuned"), same data, same run.

    sudo .venv/bin/python bench/run.py            # full run, ~30 minutes on 2 cores
    sudo .venv/bin/python bench/run.py --quick    # smoke run, ~3 minutes (193 s)
    sudo .venv/bin/python bench/run.py --quick --pg   # and the PostgreSQL store, ~5 minutes

Generates the mail (cached between runs), installs Debian's dovecot-pop3d
if missing, starts popgate (twistd) and a throwaway Dovecot on loopback
ports, runs every scenario with the servers alternating (A B A B ...),
prints a table of medians with the ratio popgate/Dovecot against the
targets, writes it as JSON and markdown under bench/results/, profiles
popgate with py-spy, and stops everything it started, also on Ctrl-C.
The PostgreSQL store runs beside Maildir and Dovecot in a throwaway
database on the machine's PostgreSQL (bench/pgstore.py).
See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import coldretr  # noqa: E402
import hotspots  # noqa: E402
import scale  # noqa: E402
import tlsbench  # noqa: E402
from servers import (MAIL_GID, MAIL_UID, Dovecot, Popgate, ensure_dovecot,  # noqa: E402
                     ensure_dovecot_lmtp, tree_cpu)

SHARED = Path(os.environ.get("POPGATE_SHARED_BENCH") or (REPO.parent / "shared" / "bench")).resolve()
POPBENCH = SHARED / "popbench.py"
MKMAIL = SHARED / "mkmail.py"
NOOPLAT = BENCH / "nooplat.py"
LMTPLOAD = BENCH / "lmtpload.py"
PY = sys.executable
PASSWORD = "benchpw"
DOMAIN = "bench.test"

DATASETS = {  # mkmail.py arguments, as in shared/bench/README.md
    "login": ["--users", "500", "--messages", "10", "--seed", "1"],
    "r100k": ["--users", "4", "--messages", "200", "--size", "fixed:102400", "--seed", "2",
              "--user-fmt", "r{:04d}"],
    "r10m": ["--users", "4", "--messages", "10", "--size", "fixed:10485760", "--seed", "3",
             "--user-fmt", "v{:04d}"],
    "big": ["--big", "--seed", "4"],
}
N_BCRYPT = 50      # bcrypt (cost 12) users: b0001..b0050
N_FRESH = 60       # user names for fresh copies of the big Maildir: f001..f060
N_LMTP = 20        # LMTP recipients l001..l020 (empty mailboxes at the start)
BCRYPT_COST = 12

PROFILES = {
    #            reps  login  retr  r10m  big_n  idle_k  hold  noop  poll  warm
    "full": dict(reps=3, login=5.0, retr=5.0, r10m=6.0, big_n=3, idle_k=500, hold=3.0,
                 noop=6.0, noop_c=50, poll=8.0, warm=2.0, lmtp_n=250, lmtp_d=20.0, nodes=5.0,
                 scale_n=10000, scale_noop=5.0, cold=30.0, settle=(0.3, 0.25)),
    # --quick is a smoke run of every scenario (~3 minutes): its figures are
    # for seeing that nothing broke, not for the tables in docs/.
    "quick": dict(reps=1, login=1.5, retr=1.5, r10m=3.0, big_n=1, idle_k=500, hold=1.5,
                  noop=2.0, noop_c=10, poll=1.5, warm=0.5, lmtp_n=60, lmtp_d=8.0, nodes=2.0,
                  scale_n=300, scale_noop=1.0, cold=3.0, settle=(0.1, 0.1)),
}

# id, metric, title, better, target kind, target value
ROWS = [
    ("login10", "sessions_per_s", "logins/s, 10 clients (popgate 1 worker)", "higher", "ratio>=", 3.0),
    ("login50", "sessions_per_s", "logins/s, 50 clients (popgate 1 worker)", "higher", "ratio>=", 3.0),
    ("login50w2", "sessions_per_s", "logins/s, 50 clients (popgate --workers 2)", "higher", "ratio>=", 3.0),
    # a 7th item: compared with that kind of run instead of Dovecot's (the
    # Dovecot column then shows it): here popgate with one worker, same runs
    ("login50w2", "server_cpu_ms_per_session", "server CPU ms per login, 50 clients: --workers 2 "
     "(Dovecot column: 1 worker)", "lower", "ratio<=", 1.0, "w1"),
    ("retr100k", "MB_per_s", "RETR 200 x 100 KB, MB/s (every byte verified)", "higher", "ratio>=", 1.0),
    ("retr100k", "server_cpu_ms_per_MB", "RETR 200 x 100 KB, server CPU ms/MB", "lower", "ratio<=", 1.0),
    ("retr10m", "MB_per_s", "RETR 10 x 10 MiB, MB/s (every byte verified)", "higher", "ratio>=", 1.0),
    ("retr10m", "server_cpu_ms_per_MB", "RETR 10 x 10 MiB, server CPU ms/MB", "lower", "ratio<=", 1.0),
    ("retr10m_w2", "MB_per_s", "RETR 10 x 10 MiB, MB/s, popgate --workers 2", "higher",
     "ratio>=", 1.0),
    ("retr10m_w2", "server_cpu_ms_per_MB",
     "RETR 10 x 10 MiB, server CPU ms/MB, popgate --workers 2", "lower", "ratio<=", 0.7),
    ("big_warm", "session_ms", "100k-msg Maildir, STAT+UIDL+LIST session, warm, ms", "lower", "ratio<=", 1.0),
    ("big_fresh", "session_ms", "100k-msg Maildir, same, first session on fresh copy, ms", "lower", "ratio<=", 1.0),
    ("idle", "pss_KiB_per_session", "memory per idle authenticated session (500 open), PSS KiB", "lower", "ratio<=", 0.05),
    ("nooplat", "noop_p99_ms", "p99 NOOP latency during 50 bcrypt-12 logins, ms", "lower", "abs<=", 20.0),
    ("authcache", "sessions_per_s", "polling logins/s, bcrypt-12, auth cache on (2 clients, 10 users)", "higher", "ratio>=", 3.0),
    # bench/scale.py: 10,000 open sessions (300 with --quick)
    ("scale", "total_MiB_at_N", "10,000 open sessions (--quick 300): total server PSS, MiB",
     "lower", "ratio<=", 0.05),
    ("scale", "open_s", "same, time to open them all, s", "lower", None, None),
    ("scale", "noop_p99_ms", "same, NOOP p99 over every session, ms", "lower", "abs<=", 50.0),
    # last: it drops the page cache of the whole machine
    ("coldretr", "MB_per_s", "RETR 4 x 10 x 10 MiB from a dropped page cache, MB/s", "higher",
     "ratio>=", 1.0),
    ("coldretr", "server_cpu_ms_per_MB", "same, server CPU ms/MB", "lower", None, None),
    ("coldretr", "noop_p99_ms", "same, meanwhile an idle session's NOOP p99, ms", "lower",
     "abs<=", 20.0),
]
ROWS += tlsbench.ROWS  # POP3S (bench/tlsbench.py)
# The PostgreSQL store beside Maildir and Dovecot (issue 13): id, metric, title,
# target kind, target value, compared with ("maildir" or "dovecot"; "nodes": the
# pg_2nodes ratio two nodes / one node).  Server CPU here includes the CPU of the
# PostgreSQL backends serving popgate-pg (bench/pgstore.py).
PG_ROWS = [
    ("pg_login10", "sessions_per_s", "logins/s, 10 clients", None, None, "maildir"),
    ("pg_login10", "total_cpu_ms_per_session", "server CPU ms per login (incl. PG backends)",
     "ratio<=", 1.5, "maildir"),
    ("pg_retr100k", "MB_per_s", "RETR 200 x 100 KB, MB/s (every byte verified)", None, None, "maildir"),
    ("pg_retr100k", "total_cpu_ms_per_MB", "RETR 200 x 100 KB, server CPU ms/MB (incl. PG)",
     "ratio<=", 1.5, "maildir"),
    ("pg_retr10m", "MB_per_s", "RETR 10 x 10 MiB, MB/s (every byte verified)", None, None, "maildir"),
    ("pg_retr10m", "total_cpu_ms_per_MB", "RETR 10 x 10 MiB, server CPU ms/MB (incl. PG)",
     "ratio<=", 1.5, "maildir"),
    ("pg_big_warm", "session_ms", "100k messages, STAT+UIDL+LIST session, warm, ms", None, None, "dovecot"),
    ("pg_big_fresh", "session_ms", "100k messages, same, first session on fresh data, ms",
     "ratio<=", 1.0, "dovecot"),
    ("lmtp", "deliveries_per_s", "LMTP deliveries/s, 4 connections, 4 KB messages", None, None, "maildir"),
    ("lmtp", "total_cpu_ms_per_delivery", "LMTP server CPU ms per delivery (incl. PG)", None, None,
     "maildir"),
    ("pg_2nodes", "sessions_per_s", "logins/s, 2 load generators x 10 clients: two nodes / one node",
     "ratio>=", 1.6, "nodes"),
    ("pg_2nodes", "total_cpu_ms_per_session", "server CPU ms per login (incl. PG): two nodes / one node",
     None, None, "nodes"),
]
PG_SCENARIOS = list(dict.fromkeys(r[0] for r in PG_ROWS))
SCENARIOS = list(dict.fromkeys(r[0] for r in ROWS)) + PG_SCENARIOS
# coldretr last: it drops the page cache of the whole machine.
SCENARIOS = [s for s in SCENARIOS if s != "coldretr"] + ["coldretr"]
_PG_LOGIN = [("server_cpu_ms_per_session", "popgate CPU ms per login"),
             ("pg_ms_per_session", "PostgreSQL backends CPU ms per login"),
             ("total_cpu_ms_per_session", "sum, ms per login"),
             ("pg_connections_ended", "PG connections closed during a run (pg_stat_database)"),
             ("pg_other_backends_ended", "other databases' backends ended meanwhile"),
             ("lat_ms_p99", "session latency p99, ms"), ("client_cpu_pct", "load generator CPU %")]
_PG_RETR = [("server_cpu_ms_per_MB", "popgate CPU ms/MB"), ("pg_ms_per_MB", "PostgreSQL backends CPU ms/MB"),
            ("total_cpu_ms_per_MB", "sum, ms/MB"), ("client_cpu_pct", "load generator CPU %")]
_PG_BIG = [("user_pass_ms", "USER+PASS (login, snapshot), ms"), ("stat_ms", "STAT, ms"),
          ("uidl_ms", "UIDL, ms"), ("list_ms", "LIST, ms"),
          ("run_server_cpu_ms_per_session", "server CPU per session, ms"),
          ("pg_ms_per_session", "PostgreSQL backends CPU per session, ms")]
PG_DETAILS = {
    "pg_login10": _PG_LOGIN, "pg_retr100k": _PG_RETR, "pg_retr10m": _PG_RETR,
    "pg_big_warm": _PG_BIG, "pg_big_fresh": _PG_BIG,
    "lmtp": [("server_cpu_ms_per_delivery", "server CPU ms per delivery (popgate / Dovecot)"),
             ("pg_ms_per_delivery", "PostgreSQL backends CPU ms per delivery"),
             ("lat_ms_p50", "delivery latency p50, ms"), ("lat_ms_p99", "delivery latency p99, ms"),
             ("client_cpu_pct", "load generator CPU %")],
}
_LOGIN_DETAILS = [("server_cpu_ms_per_session", "server CPU ms per login"),
                  ("lat_ms_p99", "session latency p99, ms"), ("client_cpu_pct", "load generator CPU %")]
_BIG_DETAILS = [("user_pass_ms", "USER+PASS (login, Maildir scan), ms"), ("stat_ms", "STAT, ms"),
                ("uidl_ms", "UIDL, ms"), ("list_ms", "LIST, ms")]
DETAILS = {  # supporting figures: scenario -> [(record key, label)]
    "login10": _LOGIN_DETAILS, "login50": _LOGIN_DETAILS, "login50w2": _LOGIN_DETAILS,
    "retr100k": [("server_cpu_pct", "server CPU %"), ("client_cpu_pct", "load generator CPU %")],
    "retr10m": [("server_cpu_pct", "server CPU %"), ("client_cpu_pct", "load generator CPU %")],
    "retr10m_w2": [("server_cpu_pct", "server CPU % (popgate: both workers)"),
                   ("client_cpu_pct", "load generator CPU %")],
    "coldretr": [("noop_baseline_ms.p99", "NOOP p99 without load, ms"),
                 ("noop_ms.p50", "NOOP p50 under load, ms"),
                 ("noop_ms.max", "NOOP max under load, ms"),
                 ("MB", "MB read"), ("retr_ms.p99", "RETR p99, ms"),
                 ("server_cpu_pct", "server CPU %")],
    "big_warm": _BIG_DETAILS, "big_fresh": _BIG_DETAILS,
    "idle": [("pss_MiB_before", "server PSS before, MiB"), ("pss_MiB_at_K", "server PSS with 500 open, MiB"),
             ("server_procs_at_K", "server processes with 500 open")],
    "nooplat": [("noop_baseline_ms.p99", "NOOP p99 without load, ms"), ("noop_ms.p50", "NOOP p50 under load, ms"),
                ("noop_ms.max", "NOOP max under load, ms"), ("logins_in_window", "bcrypt logins completed in window"),
                ("server_cpu_pct", "server CPU % during window")],
    "authcache": [("lat_ms_p99", "session latency p99, ms"), ("server_cpu_ms_per_session", "server CPU ms per login")],
    "scale": [("opened", "sessions opened"), ("pss_MiB_before", "server PSS before, MiB"),
              ("pss_KiB_per_session", "PSS per session, KiB"),
              ("server_procs_at_N", "server processes"),
              ("sessions_per_s", "sessions opened per s"),
              ("server_cpu_ms_per_session_open", "server CPU ms per session opened"),
              ("open_ms.p99", "open (connect..STAT) p99, ms"), ("noop_ms.p50", "NOOP p50, ms"),
              ("noop_ms.max", "NOOP max, ms"), ("client_cpu_s", "client CPU s (whole run)"),
              ("other_cpu_pct_open", "other load while opening, % of a core")],
}
DETAILS.update(tlsbench.DETAILS)


class Skip(Exception):
    """A scenario that cannot run here; the text goes into the table."""


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def run_bounded(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run a command in its own process group; kill the whole group on a
    timeout, an exception or Ctrl-C."""
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def sys_busy() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------ data
def ensure_data(workdir: Path) -> dict[str, Path]:
    """Generate each data set once (deterministic; reused while mkmail.py and
    its arguments are unchanged), owned by nobody:nogroup for Dovecot."""
    mk_sha = hashlib.sha256(MKMAIL.read_bytes()).hexdigest()
    out = {}
    for name, args in DATASETS.items():
        d = workdir / "src" / name
        stamp = d / ".popgate-bench-stamp"
        want = json.dumps({"args": args, "mkmail": mk_sha, "owner": MAIL_UID})
        if not (stamp.exists() and stamp.read_text() == want):
            log(f"generating data set {name} ({' '.join(args)})")
            shutil.rmtree(d, ignore_errors=True)
            r = run_bounded([PY, str(MKMAIL), "--out", str(d), "--domain", DOMAIN,
                             "--password", PASSWORD, *args], 900)
            if r.returncode != 0:
                raise SystemExit(f"mkmail.py failed: {r.stderr[-2000:]}")
            subprocess.run(["chown", "-R", f"{MAIL_UID}:{MAIL_GID}", str(d)], check=True)
            stamp.write_text(want)
        out[name] = d
    return out


def warm_page_cache(maildir: Path) -> None:
    """Read every message once, so the page cache holds them (coldretr, or
    another job on the machine, may have dropped it).  8 cat processes at
    a time: 100,000 small files from a cold cache in 6.8 s instead of 13.4
    (threads in one Python process took 22, queued on the GIL)."""
    paths = [os.fsencode(e.path) for sub in ("cur", "new") for e in os.scandir(maildir / sub)]
    subprocess.run(["xargs", "-0", "-P", "8", "-n", "2000", "cat"], input=b"\0".join(paths),
                   stdout=subprocess.DEVNULL, check=True, timeout=900)


def maildirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if (p / "cur").is_dir())


def bcrypt_hash() -> str:
    r = subprocess.run(["doveadm", "pw", "-s", "BLF-CRYPT", "-r", str(BCRYPT_COST), "-p", PASSWORD],
                       capture_output=True, text=True, timeout=60)
    h = r.stdout.strip()
    if r.returncode == 0 and h.startswith("{BLF-CRYPT}$2"):
        return h
    import bcrypt  # the venv has it (popgate depends on it)
    return "{BLF-CRYPT}" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def build_run(rundir: Path, data: dict[str, Path]) -> dict:
    """One passwd-file for both servers, one mail root per server (hard-link
    copies of the sources: each server writes its own index/size caches)."""
    files = {}
    lines = []
    for name in DATASETS:
        lines += [ln for ln in (data[name] / "passwd.dovecot").read_text().splitlines() if ln]
    lines += [f"f{i:03d}@{DOMAIN}:{{PLAIN}}{PASSWORD}::::::" for i in range(1, N_FRESH + 1)]
    lnames = [f"l{i:03d}" for i in range(1, N_LMTP + 1)]
    lines += [f"{n}@{DOMAIN}:{{PLAIN}}{PASSWORD}::::::" for n in lnames]
    h = bcrypt_hash()
    bnames = [f"b{i:04d}" for i in range(1, N_BCRYPT + 1)]
    lines += [f"{b}@{DOMAIN}:{h}::::::" for b in bnames]
    files["passwd"] = rundir / "passwd"
    files["passwd"].write_text("\n".join(lines) + "\n")
    os.chmod(files["passwd"], 0o644)
    for name in ("login", "r100k", "r10m"):
        files[f"users-{name}"] = rundir / f"users-{name}.txt"
        shutil.copy(data[name] / "users.txt", files[f"users-{name}"])
    files["users-bcrypt"] = rundir / "users-bcrypt.txt"
    files["users-bcrypt"].write_text("".join(f"{b}@{DOMAIN} {PASSWORD}\n" for b in bnames))
    sources = [str(p) for name in DATASETS for p in maildirs(data[name])]
    for server in ("popgate", "dovecot"):
        root = rundir / f"mail-{server}"
        root.mkdir()
        subprocess.run(["cp", "-al", *sources, str(root)], check=True)
        for b in bnames + lnames:
            for sub in ("cur", "new", "tmp"):
                (root / b / sub).mkdir(parents=True)
        os.chown(root, MAIL_UID, MAIL_GID)  # cp -a kept the sources' owner below it
        subprocess.run(["chown", "-R", f"{MAIL_UID}:{MAIL_GID}"] + [str(root / b) for b in bnames + lnames],
                       check=True)
        files[f"root-{server}"] = root
    return files


# ------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.p = dict(PROFILES["quick" if a.quick else "full"])
        if a.reps:
            self.p["reps"] = a.reps
        self.servers: list = []
        self.counter = 0
        self.fresh = 0
        self.big_visited: set[str] = set()  # servers (kinds) that have opened big@ once
        self.results: dict = {"scenarios": {}, "profiles": {}}
        self.db = None   # pgstore.BenchDatabase when a PostgreSQL scenario runs
        self.pg = None   # popgate on the PostgreSQL store
        self.dovecot_lmtp = None
        self.tls = tlsbench.TLSBench(self)  # the POP3S scenarios and their servers

    # -- helpers
    def start(self, server) -> None:
        log(f"starting {server.name}")
        self.servers.append(server)
        server.start()
        log(f"{server.name}: pid {server.pid}, port {server.port}")

    def stop(self, server) -> None:
        if server in self.servers:
            self.servers.remove(server)
        server.stop()

    def stop_all(self) -> None:
        for s in list(self.servers):
            try:
                self.stop(s)
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print(f"stopping {s.name}: {e}", file=sys.stderr)

    def settle(self, max_s: float = 30.0) -> None:
        """Wait until no server burns CPU (a backlog of bcrypt checks, a pop3
        process finishing) so one run does not load the next."""
        # (--quick: shorter looks; it settles some 70 times)
        pause, sample = self.p["settle"]
        time.sleep(pause)
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            live = [s for s in self.servers if s.running]
            c0 = sum(tree_cpu(s.pid) for s in live)
            time.sleep(sample)
            if (sum(tree_cpu(s.pid) for s in live) - c0) / sample < 0.05:
                return

    def check_alive(self, *servers) -> None:
        for s in servers:
            if not s.running:
                raise RuntimeError(f"{s.name} died; see {s.log}")

    def metered(self, cmd: list[str] | list[list[str]], timeout: float, out: Path | list[Path],
                what: str, server=None) -> dict:
        """Run a load generator (or several at once: a list of commands and
        outputs; the records come back under "parts"); add `_other_cpu_pct`:
        machine CPU used by anything but the servers, the PostgreSQL backends
        of the bench database and the load generator during the run (other
        people's jobs on a shared machine show up here), `_server_cpu_s` of
        `server` over the whole run, and, when the bench database exists,
        the CPU of its backends (bench/pgstore.py)."""
        import contextlib
        cmds = cmd if isinstance(cmd[0], list) else [cmd]
        outs = out if isinstance(out, list) else [out]
        live = [s for s in self.servers if s.running]
        meter = None
        if self.db is not None:
            import pgstore
            meter = pgstore.BackendMeter(self.db)
        t0, b0 = time.monotonic(), sys_busy()
        s0 = {s.name: tree_cpu(s.pid) for s in live}
        ru0 = os.times()
        with meter if meter is not None else contextlib.nullcontext():
            if len(cmds) == 1:
                results = [run_bounded(cmds[0], timeout)]
            else:
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(len(cmds)) as ex:
                    results = list(ex.map(lambda c: run_bounded(c, timeout), cmds))
        ru1 = os.times()
        wall = max(time.monotonic() - t0, 1e-9)
        s1 = {s.name: tree_cpu(s.pid) for s in live if s.running}
        pg = meter.result() if meter is not None else {}
        other = (sys_busy() - b0) - sum(s1[n] - s0[n] for n in s1) - \
            ((ru1.children_user + ru1.children_system) - (ru0.children_user + ru0.children_system)) - \
            pg.get("pg_cpu_s", 0.0) - pg.get("pg_autovacuum_cpu_s", 0.0)
        recs = []
        for r, o in zip(results, outs):
            if r.returncode != 0 or not o.exists():
                return {"error": f"{what} rc={r.returncode}: {r.stderr.strip()[-500:]}"}
            recs.append(json.loads(o.read_text().splitlines()[-1]))
        rec = recs[0] if len(recs) == 1 else {"parts": recs}
        rec["_other_cpu_pct"] = round(100 * other / wall, 1)
        rec["_wall_s"] = round(wall, 3)
        rec["_server_cpu_s_by_name"] = {n: round(s1[n] - s0[n], 3) for n in s1}
        if server is not None and server.name in s1:
            rec["_server_cpu_s"] = round(s1[server.name] - s0[server.name], 3)
        if pg:
            rec.update(pg)
        return rec

    @staticmethod
    def add_pg_figures(rec: dict, server) -> dict:
        """Per-session / per-MB CPU of the PostgreSQL backends (popgate-pg
        runs only; 0 for the others) and the sum with the server's own."""
        if "error" in rec:
            return rec
        pg_s = rec.get("pg_cpu_s", 0.0) if server.kind == "pg" else 0.0
        for k in [k for k in rec if k.startswith("pg_")]:
            if server.kind != "pg":
                del rec[k]
        n = rec.get("sessions") or (len(rec["runs"]) if "runs" in rec else 0)
        if n:
            rec["pg_ms_per_session"] = round(1e3 * pg_s / n, 3)
            if "server_cpu_ms_per_session" in rec:
                rec["total_cpu_ms_per_session"] = round(rec["server_cpu_ms_per_session"]
                                                        + rec["pg_ms_per_session"], 3)
            if "_server_cpu_s" in rec:
                rec["run_server_cpu_ms_per_session"] = round(1e3 * rec["_server_cpu_s"] / n, 2)
        if rec.get("payload_MB"):
            rec["pg_ms_per_MB"] = round(1e3 * pg_s / rec["payload_MB"], 3)
            if "server_cpu_ms_per_MB" in rec:
                rec["total_cpu_ms_per_MB"] = round(rec["server_cpu_ms_per_MB"] + rec["pg_ms_per_MB"], 3)
        if rec.get("deliveries"):
            rec["pg_ms_per_delivery"] = round(1e3 * pg_s / rec["deliveries"], 3)
            rec["server_cpu_ms_per_delivery"] = round(1e3 * rec.get("_server_cpu_s", 0) / rec["deliveries"], 3)
            rec["total_cpu_ms_per_delivery"] = round(rec["server_cpu_ms_per_delivery"]
                                                     + rec["pg_ms_per_delivery"], 3)
        return rec

    def popbench_cmd(self, scenario: str, server, args: list[str]) -> tuple[list[str], Path]:
        self.counter += 1
        out = self.rawdir / f"{self.counter:03d}-{scenario}-{server.name}.json"
        return [PY, str(POPBENCH), scenario, "--host", server.host, "--port", str(server.port),
                "--json", str(out), "--quiet", "--label", server.name, *args], out

    def popbench(self, scenario: str, server, args: list[str], timeout: float) -> dict:
        cmd, out = self.popbench_cmd(scenario, server, args)
        return self.add_pg_figures(self.metered(cmd, timeout, out, "popbench", server), server)

    def nooplat(self, server, duration: float) -> dict:
        self.counter += 1
        out = self.rawdir / f"{self.counter:03d}-nooplat-{server.name}.json"
        cmd = [PY, str(NOOPLAT), "--port", str(server.port), "--probe-user", f"u0500@{DOMAIN}",
               "--probe-password", PASSWORD, "--users-file", str(self.files["users-bcrypt"]),
               "-c", str(self.p["noop_c"]), "-d", str(duration), "--baseline", "1", "--grace", "15", "--json", str(out),
               "--server-pid", str(server.pid)]
        return self.metered(cmd, duration + 90, out, "nooplat")

    def ab(self, sid: str, pair, measure, warm=None) -> None:
        """Run `measure` for each server of the pair (or triple), alternating,
        reps times."""
        runs: dict[str, list] = {s.kind: [] for s in pair}
        names = {s.kind: s.name for s in pair}
        if warm:
            for s in pair:
                warm(s)
                self.settle()
        for rep in range(self.p["reps"]):
            for s in pair:
                self.check_alive(s)
                rec = measure(s, rep)
                rec["_server"] = s.name
                runs[s.kind].append(rec)
                log(f"  {sid} {s.name} #{rep + 1}: {brief(sid, rec)}")
                self.settle()
        self.results["scenarios"][sid] = {"runs": runs, "servers": names}

    # -- scenarios
    def login_args(self, clients: int, duration: float, server) -> list[str]:
        return ["--users-file", str(self.files["users-login"]), "-c", str(clients),
                "-d", str(duration), "--server-pid", str(server.pid),
                "--grace", "10", "--session-timeout", "30"]

    def sc_login(self, sid: str, clients: int, pop, others=None) -> None:
        d, w = self.p["login"], self.p["warm"]
        self.ab(sid, (pop, *(others or (self.dovecot,))),
                lambda s, rep: self.popbench("login", s, self.login_args(clients, d, s), d + 60),
                warm=lambda s: self.popbench("login", s, self.login_args(clients, w, s), w + 60))

    def sc_retr(self, sid: str, users: str, duration: float, servers=None) -> None:
        def args(s, dur):
            return ["--users-file", str(self.files[users]), "-c", "4", "-d", str(dur),
                    "--verify", "hash", "--verify-every", "1", "--server-pid", str(s.pid),
                    "--grace", "20", "--session-timeout", "60"]
        w = self.p["warm"]
        self.ab(sid, servers or (self.popgate, self.dovecot),
                lambda s, rep: self.popbench("retr", s, args(s, duration), duration + 90),
                warm=lambda s: self.popbench("retr", s, args(s, w), w + 90))

    def biglist(self, s, user: str, n: int) -> dict:
        rec = self.popbench("biglist", s, ["--users", "1", "--user-fmt", user, "--password", PASSWORD,
                                           "-n", str(n), "-d", "120", "--grace", "30"], 120 * n + 60)
        if "runs" in rec:
            rec["session_ms"] = median([r["total_ms"] for r in rec["runs"]])
            for k in ("connect_greeting_ms", "user_pass_ms", "stat_ms", "uidl_ms", "list_ms", "quit_ms"):
                rec[k] = median([r[k] for r in rec["runs"]])
            rec["stat"] = rec["runs"][0].get("stat")
        return rec

    def sc_big_warm(self, sid: str = "big_warm", servers=None) -> None:
        user = f"big@{DOMAIN}"
        pair = servers or (self.popgate, self.dovecot)
        # (--quick's big_fresh ran first, on this very mailbox: it is warm)
        warmed = all(s.kind in self.big_visited for s in pair)
        self.ab(sid, pair, lambda s, rep: self.biglist(s, user, self.p["big_n"]),
                warm=None if warmed else (lambda s: self.biglist(s, user, 1)))

    def fresh_copy(self, s) -> str:
        self.fresh += 1
        if self.fresh > N_FRESH:
            raise Skip("out of fresh user names")
        name = f"f{self.fresh:03d}"
        subprocess.run(["cp", "-al", str(self.data["big"] / "big"), str(self.files[f"root-{s.kind}"] / name)],
                       check=True)
        return name

    def sc_big_fresh(self, sid: str = "big_fresh", servers=None) -> None:
        page_cache_warm: list[bool] = []

        def measure(s, rep):
            if s.kind == "pg":
                return self.pg_fresh(s)
            if not page_cache_warm:  # a fresh index, not a cold disk (once: nothing drops it)
                warm_page_cache(self.data["big"] / "big")
                page_cache_warm.append(True)
            if self.a.quick and s.kind not in self.big_visited:
                # --quick: the big mailbox's own first visit (its copy and
                # removal would take longer than the session), which also
                # warms it for big_warm.
                self.big_visited.add(s.kind)
                self.settle()
                rec = self.biglist(s, f"big@{DOMAIN}", 1)
                rec["maildir"] = "big"
                return rec
            name = self.fresh_copy(s)
            self.settle()
            try:
                rec = self.biglist(s, f"{name}@{DOMAIN}", 1)
            finally:
                shutil.rmtree(self.files[f"root-{s.kind}"] / name, ignore_errors=True)
            rec["maildir"] = name
            return rec
        self.ab(sid, servers or (self.popgate, self.dovecot), measure)

    # -- the PostgreSQL store (issue 13; bench/pgstore.py)
    def pg_fresh(self, s) -> dict:
        """A new mailbox holding the 100k messages as new rows (copied inside
        the database by the harness, not measured), then its first session."""
        import pgstore
        self.fresh += 1
        name = f"f{self.fresh:03d}@{DOMAIN}"
        secs = pgstore.fresh_copy(self.db, f"big@{DOMAIN}", name)
        self.settle()
        try:
            rec = self.biglist(s, name, 1)
        finally:
            pgstore.drop_mailbox(self.db, name)
        rec["copy_s"] = round(secs, 1)
        return rec

    def pg_triple(self):
        return (self.pg, self.popgate, self.dovecot)

    def sc_lmtp(self) -> None:
        n, d = self.p["lmtp_n"], self.p["lmtp_d"]
        servers = [self.pg, self.popgate] + ([self.dovecot_lmtp] if self.dovecot_lmtp else [])

        def stored(s) -> int:
            if s.kind == "pg":
                (c,) = self.db.query("SELECT count(*) FROM popgate_messages m JOIN popgate_mailboxes b "
                                     "ON b.id = m.mailbox_id WHERE b.name LIKE 'l%%'")[0]
                return int(c)
            root = self.files[f"root-{s.kind}"]
            return sum(len(os.listdir(root / f"l{i:03d}" / sub)) for i in range(1, N_LMTP + 1)
                       for sub in ("new", "cur"))

        def measure(s, rep):
            before = stored(s)
            self.counter += 1
            out = self.rawdir / f"{self.counter:03d}-lmtp-{s.name}.json"
            cmd = [PY, str(LMTPLOAD), "--host", s.host, "--port", str(s.lmtp_port), "-c", "4",
                   "-n", str(n), "-d", str(d), "--users", str(N_LMTP), "--json", str(out)]
            rec = self.add_pg_figures(self.metered(cmd, d + 90, out, "lmtpload", s), s)
            if "error" not in rec:
                rec["stored"] = stored(s) - before
                if rec["stored"] != rec["deliveries"]:
                    rec["error"] = f"{rec['deliveries']} answered 250 but {rec['stored']} stored"
            return rec
        self.ab("lmtp", tuple(servers), measure)

    def sc_pg_2nodes(self) -> None:
        """Two popgate-pg processes (127.0.0.2, 127.0.0.3) on the one database
        vs one, under the same load: two load generators of 10 clients, each
        over its own half of the 500 users (the same user on both nodes at
        once would be [IN-USE]).  "one": both load generators on node A;
        "two": one on each node.  Server CPU per login per node includes the
        PostgreSQL backends of that node (by application_name)."""
        d, w = self.p["nodes"], self.p["warm"]
        halves = []
        users = self.files["users-login"].read_text().splitlines()
        for i, part in enumerate((users[:len(users) // 2], users[len(users) // 2:])):
            f = self.rundir / f"users-login-half{i}.txt"
            f.write_text("\n".join(part) + "\n")
            halves.append(f)
        nodes = [Popgate(f"popgate-pg-{x}", self.twistd, self.rundir, self.files["passwd"],
                         self.files["root-popgate"], extra=self.nocache, kind="pg", host=host,
                         store=self.db.store(f"popgate-bench-node-{x}", self.pg_store_extra))
                 for x, host in (("a", "127.0.0.2"), ("b", "127.0.0.3"))]

        def run(targets, dur):
            cmds, outs = [], []
            for half, node in zip(halves, targets):
                c, o = self.popbench_cmd("login", node, [
                    "--users-file", str(half), "-c", "10", "-d", str(dur), "--server-pid", str(node.pid),
                    "--grace", "10", "--session-timeout", "30"])
                cmds.append(c)
                outs.append(o)
            rec = self.metered(cmds, dur + 60, outs, "popbench")
            if "error" in rec:
                return rec
            parts = rec.pop("parts")
            rec["sessions"] = sum(p["sessions"] for p in parts)
            rec["sessions_per_s"] = round(sum(p["sessions_per_s"] for p in parts), 1)
            rec["errors"] = sum(p["errors"] for p in parts)
            rec["client_cpu_pct"] = round(sum(p["client_cpu_pct"] for p in parts), 1)
            rec["lat_ms_p99"] = max(p["lat_ms_p99"] for p in parts)
            per_node = {}
            for node in nodes:
                own = rec["_server_cpu_s_by_name"].get(node.name, 0.0)
                pg_s = rec.get("pg_cpu_by_app", {}).get(f"popgate-bench-node-{node.name[-1]}", 0.0)
                n = sum(p["sessions"] for p, t in zip(parts, targets) if t is node)
                per_node[node.name] = {
                    "sessions": n, "popgate_cpu_s": own, "pg_cpu_s": pg_s,
                    "cpu_ms_per_session": round(1e3 * (own + pg_s) / n, 3) if n else None}
            rec["per_node"] = per_node
            total = sum(v["popgate_cpu_s"] + v["pg_cpu_s"] for v in per_node.values())
            rec["server_cpu_ms_per_session"] = round(1e3 * sum(v["popgate_cpu_s"] for v in per_node.values())
                                                     / max(1, rec["sessions"]), 3)
            rec["pg_ms_per_session"] = round(1e3 * rec.get("pg_cpu_s", 0.0) / max(1, rec["sessions"]), 3)
            rec["total_cpu_ms_per_session"] = round(1e3 * total / max(1, rec["sessions"]), 3)
            rec["server_cpu_pct"] = round(100 * total / rec["_wall_s"], 1)
            return rec

        try:
            for node in nodes:
                self.start(node)
            run(nodes, w)                     # warm both (imports, connections, caches)
            self.settle()
            runs: dict[str, list] = {"one": [], "two": []}
            for rep in range(self.p["reps"]):
                for label, targets in (("one", [nodes[0], nodes[0]]), ("two", nodes)):
                    self.check_alive(*nodes)
                    rec = run(targets, d)
                    rec["_server"] = label
                    runs[label].append(rec)
                    log(f"  pg_2nodes {label} node(s) #{rep + 1}: {brief('pg_login', rec)}; "
                        f"CPU ms/login {rec.get('total_cpu_ms_per_session')}, "
                        f"server CPU {rec.get('server_cpu_pct')}%, other {rec.get('_other_cpu_pct')}%")
                    self.settle()
            self.results["scenarios"]["pg_2nodes"] = {"runs": runs, "servers": {"one": "popgate-pg-a",
                                                                                "two": "popgate-pg-a+b"}}
        finally:
            for node in nodes:
                self.stop(node)

    def setup_pg(self, selected: list[str]) -> None:
        """The throwaway database, its schema, the data (popgate migrate from a
        hard-link copy of the sources: migrate writes lock and size-cache files
        beside the mail), and popgate on the PostgreSQL store."""
        import pgstore
        self.db = pgstore.BenchDatabase()
        log(f"PostgreSQL: throwaway database {self.db.name} ({self.db.settings})")
        self.results["meta"]["postgresql"] = dict(self.db.settings, database=self.db.name)
        log("  " + pgstore.db_init(self.db, self.twistd))
        need = set()
        if {"pg_login10", "pg_2nodes"} & set(selected):
            need.add("login")
        if "pg_retr100k" in selected:
            need.add("r100k")
        if "pg_retr10m" in selected:
            need.add("r10m")
        if {"pg_big_warm", "pg_big_fresh"} & set(selected):
            need.add("big")
        src = self.rundir / "mail-pgsrc"
        src.mkdir()
        migrations = []
        for name in DATASETS:
            if name not in need:
                continue
            users = [ln.split()[0] for ln in (self.data[name] / "users.txt").read_text().splitlines() if ln]
            subprocess.run(["cp", "-al", *[str(p) for p in maildirs(self.data[name])], str(src)], check=True)
            if name == "big" and self.a.pg_big_load == "copy":
                log("  loading the 100k mailbox with COPY (--pg-big-load copy)")
                rec = pgstore.bulk_load(self.db, src / "big", f"big@{DOMAIN}")
            else:
                log(f"  popgate migrate: data set {name} ({len(users)} users)")
                rec = pgstore.migrate(self.db, self.twistd, src, users, self.rundir, name, run_bounded)
            log(f"  {rec}")
            migrations.append(rec)
        self.results["migrations"] = migrations
        self.pg_loaded = need
        shutil.rmtree(src, ignore_errors=True)
        self.db.query("VACUUM ANALYZE")  # as autovacuum would soon; keeps it out of the runs
        self.pg_store_extra = self.a.pg_store_args or ""
        self.pg = Popgate("popgate-pg", self.twistd, self.rundir, self.files["passwd"],
                          self.files["root-popgate"], extra=self.nocache, kind="pg",
                          store=self.db.store("popgate-bench-pg", self.pg_store_extra),
                          lmtp="lmtp" in selected)
        self.start(self.pg)
        self.results["meta"]["popgate_pg_cmd"] = " ".join(self.pg.cmd)
        if "lmtp" in selected and ensure_dovecot_lmtp():
            self.dovecot_lmtp = Dovecot("dovecot-lmtp", self.rundir, self.files["passwd"],
                                        self.files["root-dovecot"], lmtp=True)
            self.start(self.dovecot_lmtp)

    def sc_idle(self) -> None:
        k, hold = self.p["idle_k"], self.p["hold"]

        def measure(s, rep):
            # A freshly started server, so memory freed by earlier scenarios
            # cannot be reused for these sessions and hide their cost; then a
            # few logins at the same concurrency, so lazy imports and the
            # thread pool are not counted as per-session memory.
            self.stop(s)
            self.start(s)
            self.popbench("login", s, self.login_args(25, 5.0, s) + ["-n", "25"], 60)
            self.settle()
            return self.popbench("idle", s, [
                "--users-file", str(self.files["users-login"]), "-n", str(k), "-c", "25",
                "--hold", str(hold), "--server-pid", str(s.pid), "-d", "30", "--grace", "10",
                "--session-timeout", "30"], 120)
        self.ab("idle", (self.popgate, self.dovecot), measure)

    def sc_nooplat(self) -> None:
        d = self.p["noop"]
        self.ab("nooplat", (self.popgate, self.dovecot), lambda s, rep: self.nooplat(s, d))

    def sc_authcache(self) -> None:
        d = self.p["poll"]

        def args(s, dur, n=1000000, clients=2):
            return ["--users-file", str(self.files["users-bcrypt"]), "--users", "10", "-c", str(clients),
                    "-d", str(dur), "-n", str(n), "--server-pid", str(s.pid),
                    "--grace", "20", "--session-timeout", "60"]
        dc = Dovecot("dovecot-cache", self.rundir, self.files["passwd"], self.files["root-dovecot"],
                     extra="auth_cache_size = 10M\nauth_cache_ttl = 1 hour\n"
                           "auth_cache_negative_ttl = 1 hour\n"
                           "auth_cache_verify_password_with_worker = yes\n")
        pc = None
        if self.caps["auth_cache"]:
            pc = Popgate("popgate-cache", self.twistd, self.rundir, self.files["passwd"],
                         self.files["root-popgate"], extra=["--auth-cache-ttl", "3600"])
        try:
            self.start(dc)
            if pc is not None:
                self.start(pc)
            pair = (pc, dc) if pc is not None else (None, dc)
            runs: dict[str, list] = {"popgate": [], "dovecot": []}
            for s in pair:  # prime the caches: each of the 10 users logs in once
                if s is not None:
                    self.popbench("login", s, args(s, 30, 10, 10), 120)
            self.settle()
            for rep in range(self.p["reps"]):
                for s in pair:
                    if s is None:
                        continue
                    self.check_alive(s)
                    rec = self.popbench("login", s, args(s, d), d + 90)
                    rec["_server"] = s.name
                    runs[s.kind].append(rec)
                    log(f"  authcache {s.name} #{rep + 1}: {brief('authcache', rec)}")
                    self.settle()
            self.results["scenarios"]["authcache"] = {
                "runs": runs, "servers": {"popgate": pc.name if pc else None, "dovecot": dc.name}}
            if pc is None:
                self.results["scenarios"]["authcache"]["na"] = "n/a (not wired: no --auth-cache-ttl)"
        finally:
            for s in (pc, dc):
                if s is not None:
                    self.stop(s)

    def sc_login50w2(self) -> None:
        if not self.caps["workers"]:
            raise Skip("n/a (no --workers in twistd popgate --help)")
        pw = Popgate("popgate-w2", self.twistd, self.rundir, self.files["passwd"],
                     self.files["root-popgate"], extra=["--workers", "2", *self.nocache])
        # one worker in the same runs (its own instance: runs are kept by kind)
        p1 = Popgate("popgate-w1", self.twistd, self.rundir, self.files["passwd"],
                     self.files["root-popgate"], extra=self.nocache, kind="w1")
        try:
            self.start(pw)
            self.start(p1)
            self.sc_login("login50w2", 50, pw, (p1, self.dovecot))
        finally:
            self.stop(pw)
            self.stop(p1)

    def sc_retr10m_w2(self) -> None:
        if not self.caps["workers"]:
            raise Skip("n/a (no --workers in twistd popgate --help)")
        pw = Popgate("popgate-w2", self.twistd, self.rundir, self.files["passwd"],
                     self.files["root-popgate"], extra=["--workers", "2", *self.nocache])
        try:
            self.start(pw)
            self.sc_retr("retr10m_w2", "users-r10m", self.p["r10m"], (pw, self.dovecot))
        finally:
            self.stop(pw)

    # -- profiling (separate from the measured runs: py-spy slows the target)
    def profile(self) -> None:
        spy = shutil.which("py-spy", path=str(Path(self.twistd).parent)) or shutil.which("py-spy")
        if not spy:
            r = subprocess.run([PY, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, text=True)
            spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
            if not spy:
                self.results["profiles"]["error"] = f"py-spy not available: {r.stderr[-300:]}"
                return
        pdir = self.outdir / "profiles"
        pdir.mkdir(parents=True, exist_ok=True)
        rate = 250
        s = self.popgate
        jobs = [
            ("login50", lambda: self.popbench("login", s, self.login_args(50, 8, s), 70)),
            ("retr100k", lambda: self.popbench("retr", s, [
                "--users-file", str(self.files["users-r100k"]), "-c", "4", "-d", "8", "--verify", "hash",
                "--server-pid", str(s.pid), "--grace", "20"], 100)),
            ("big_warm", lambda: self.biglist(s, f"big@{DOMAIN}", 5)),
        ]
        if self.pg is not None and self.pg.running:
            pg = self.pg
            jobs += [
                ("pg_login10", lambda: self.popbench("login", pg, self.login_args(10, 8, pg), 70)),
                ("pg_retr100k", lambda: self.popbench("retr", pg, [
                    "--users-file", str(self.files["users-r100k"]), "-c", "4", "-d", "8", "--verify", "hash",
                    "--server-pid", str(pg.pid), "--grace", "20"], 100)),
            ][:2 if "r100k" in self.pg_loaded else 1]
        targets = {}
        for name, job, target in self.tls.profile_jobs():
            jobs.append((name, job))
            targets[name] = target
        if self.a.profile_only:
            jobs = [j for j in jobs if j[0] in self.a.profile_only.split(",")]
        fresh_name = None
        if self.fresh < N_FRESH and not self.a.profile_only:
            fresh_name = self.fresh_copy(s)
            jobs.append(("big_fresh", lambda: self.biglist(s, f"{fresh_name}@{DOMAIN}", 1)))
        for name, job in jobs:
            raw = pdir / f"popgate-{name}.txt"
            target = targets.get(name) or (self.pg if name.startswith("pg_") else s)
            log(f"profiling {target.name} during {name} (py-spy, {rate} Hz)")
            spy_p = subprocess.Popen([spy, "record", "--pid", str(target.pid), "-F", "-t", "-r", str(rate),
                                      "-f", "raw", "-o", str(raw), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
            try:
                time.sleep(1.0)
                t0 = time.monotonic()
                rec = job()
                secs = time.monotonic() - t0
            finally:
                spy_p.send_signal(signal.SIGINT)
                try:
                    _, err = spy_p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(spy_p.pid, signal.SIGKILL)
                    err = b"py-spy did not stop"
            if not raw.exists():
                self.results["profiles"][name] = {"error": err.decode(errors="replace")[-300:]}
                continue
            summ = hotspots.summarize(str(raw), 12, rate, secs + 1.0)
            summ["workload"] = brief(name, rec)
            self.results["profiles"][name] = summ
            self.settle()
        if fresh_name:
            shutil.rmtree(self.files["root-popgate"] / fresh_name, ignore_errors=True)

    # -- main
    def run(self) -> int:
        a = self.a
        if os.geteuid() != 0:
            raise SystemExit("run as root: Dovecot's throwaway instance needs it")
        for f in (POPBENCH, MKMAIL):
            if not f.exists():
                raise SystemExit(f"{f} not found: set POPGATE_SHARED_BENCH to the shared bench kit")
        self.twistd = a.twistd or str(REPO / ".venv" / "bin" / "twistd")
        if not Path(self.twistd).exists():
            self.twistd = shutil.which("twistd") or self.twistd
        help_text = subprocess.run([self.twistd, "popgate", "--help"], capture_output=True,
                                   text=True, timeout=60).stdout
        self.caps = {"workers": "--workers" in help_text, "auth_cache": "--auth-cache-ttl" in help_text,
                     "auth_cache_negative": "--auth-cache-negative-ttl" in help_text}
        t_start = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.outdir = Path(a.out or (BENCH / "results")) / stamp
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.rawdir = self.outdir / "raw"
        self.rawdir.mkdir()
        workdir = Path(a.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)
        selected = [s for s in SCENARIOS if (s in a.only.split(",") if a.only else
                                             (s not in PG_SCENARIOS or a.pg or not a.quick))]
        if a.quick and "big_fresh" in selected and "big_warm" in selected:
            # fresh first: its one visit of the big mailbox warms it for big_warm
            selected.remove("big_fresh")
            selected.insert(selected.index("big_warm"), "big_fresh")
        log(f"popgate vs Dovecot: {'quick' if a.quick else 'full'} run, {self.p['reps']} reps, "
            f"scenarios {','.join(selected)}; capabilities {self.caps}")
        dovecot_version = ensure_dovecot()
        self.data = ensure_data(workdir)
        self.rundir = workdir / f"run-{stamp}-{os.getpid()}"
        self.rundir.mkdir()
        os.chmod(self.rundir, 0o755)
        self.results["meta"] = machine_info(self.twistd, dovecot_version, self.p, self.caps,
                                            " ".join(sys.argv))
        try:
            log("building mail roots (hard-link copies)")
            self.files = build_run(self.rundir, self.data)
            # popgate's auth cache (on by default once wired) stays off here: Dovecot
            # "tuned" has none; the authcache scenario runs its own instances.
            self.nocache = nocache = (["--auth-cache-ttl", "0"] if self.caps["auth_cache"] else []) + \
                (["--auth-cache-negative-ttl", "0"] if self.caps["auth_cache_negative"] else [])
            self.popgate = Popgate("popgate", self.twistd, self.rundir, self.files["passwd"],
                                   self.files["root-popgate"], extra=nocache, lmtp="lmtp" in selected)
            self.dovecot = Dovecot("dovecot", self.rundir, self.files["passwd"], self.files["root-dovecot"])
            self.start(self.popgate)
            self.start(self.dovecot)
            self.results["meta"]["popgate_cmd"] = " ".join(self.popgate.cmd)
            self.results["meta"]["dovecot_conf"] = self.dovecot.conf.read_text()
            if set(selected) & set(PG_SCENARIOS):
                self.setup_pg(selected)
            plan = {
                "login10": lambda: self.sc_login("login10", 10, self.popgate),
                "login50": lambda: self.sc_login("login50", 50, self.popgate),
                "login50w2": self.sc_login50w2,
                "retr100k": lambda: self.sc_retr("retr100k", "users-r100k", self.p["retr"]),
                "retr10m": lambda: self.sc_retr("retr10m", "users-r10m", self.p["r10m"]),
                "retr10m_w2": self.sc_retr10m_w2,
                "coldretr": lambda: coldretr.scenario(self, self.p["cold"],
                                                      self.files["users-r10m"], f"u0500@{DOMAIN}"),
                "big_warm": self.sc_big_warm,
                "big_fresh": self.sc_big_fresh,
                "idle": self.sc_idle,
                "nooplat": self.sc_nooplat,
                "authcache": self.sc_authcache,
                "pg_login10": lambda: self.sc_login("pg_login10", 10, self.pg, (self.popgate, self.dovecot)),
                "pg_retr100k": lambda: self.sc_retr("pg_retr100k", "users-r100k", self.p["retr"],
                                                    self.pg_triple()),
                "pg_retr10m": lambda: self.sc_retr("pg_retr10m", "users-r10m", self.p["r10m"],
                                                   self.pg_triple()),
                "pg_big_warm": lambda: self.sc_big_warm("pg_big_warm", self.pg_triple()),
                "pg_big_fresh": lambda: self.sc_big_fresh("pg_big_fresh", self.pg_triple()),
                "lmtp": self.sc_lmtp,
                "pg_2nodes": self.sc_pg_2nodes,
                **self.tls.plan(),
                "scale": lambda: scale.scenario(self, self.p["scale_n"], self.p["scale_noop"],
                                                PASSWORD, DOMAIN, log),
            }
            for sid in selected:
                log(f"scenario {sid}")
                try:
                    plan[sid]()
                except Skip as e:
                    self.results["scenarios"][sid] = {"na": str(e), "runs": {}}
                    log(f"  {sid}: {e}")
                except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as e:
                    self.results["scenarios"][sid] = {"na": f"error: {e}", "runs": {}}
                    log(f"  {sid}: ERROR {e}")
                    for s in (self.popgate, self.dovecot, self.pg):  # a crashed server: restart
                        if s is not None and not s.running:
                            self.stop(s)
                            self.start(s)
            if a.profile if a.profile is not None else not a.quick:
                self.profile()
            problems = self.dovecot.log_problems()
            if problems:
                self.results["meta"]["dovecot_log_problems"] = problems
        finally:
            self.stop_all()
            if self.db is not None:
                log(f"dropping database {self.db.name}")
                self.db.drop()
            if not a.keep:  # (rm: hundreds of thousands of links, twice as fast as rmtree)
                subprocess.run(["rm", "-rf", "--one-file-system", str(self.rundir)], timeout=600)
        self.results["meta"]["wall_s"] = round(time.monotonic() - t_start, 1)
        table = summarize(self.results)
        self.results["table"] = table
        self.results["pg_table"] = summarize_pg(self.results)
        md = render_markdown(self.results)
        (self.outdir / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.outdir / "results.md").write_text(md)
        for ext, text in (("json", json.dumps(self.results, indent=1, default=str)), ("md", md)):
            (self.outdir.parent / f"latest.{ext}").write_text(text)
        print()
        print(md)
        log(f"results: {self.outdir}/results.md (and .json); latest: {self.outdir.parent}/latest.md")
        if a.update_docs:
            update_docs(render_markdown(self.results, top=6))
        return 0


# ------------------------------------------------------------------ reporting
def brief(sid: str, rec: dict) -> str:
    if sid.startswith("tls_"):
        return tlsbench.brief(rec)
    sid = sid.removeprefix("pg_")
    if "error" in rec:
        return "ERROR " + rec["error"][:200]
    if sid.startswith("login") or sid == "authcache":
        return (f"{rec.get('sessions_per_s')} logins/s, p99 {rec.get('lat_ms_p99')} ms, "
                f"errors {rec.get('errors')}, server CPU {rec.get('server_cpu_pct')}%"
                + (f", {rec['server_cpu_ms_per_session']} + PG {rec['pg_ms_per_session']} ms/login"
                   if "pg_cpu_s" in rec and "server_cpu_ms_per_session" in rec else ""))
    if sid.startswith("retr"):
        return (f"{rec.get('MB_per_s')} MB/s, {rec.get('server_cpu_ms_per_MB')} ms CPU/MB"
                + (f" + PG {rec['pg_ms_per_MB']}" if "pg_ms_per_MB" in rec and "pg_cpu_s" in rec else "")
                + ", "
                f"hash ok {rec.get('hash_ok')} bad {rec.get('hash_bad')} missing {rec.get('hash_missing')}, "
                f"size bad {rec.get('size_bad')}, errors {rec.get('errors')}")
    if sid.startswith("big"):
        return (f"{rec.get('session_ms')} ms ({rec.get('stat')}; USER+PASS {rec.get('user_pass_ms')}, "
                f"STAT {rec.get('stat_ms')}, UIDL {rec.get('uidl_ms')}, LIST {rec.get('list_ms')} ms)"
                + (f", PG CPU {rec['pg_ms_per_session']} ms/session" if "pg_cpu_s" in rec else ""))
    if sid == "lmtp":
        return (f"{rec.get('deliveries_per_s')} deliveries/s ({rec.get('deliveries')}, stored "
                f"{rec.get('stored')}), p99 {rec.get('lat_ms_p99')} ms, server CPU "
                f"{rec.get('server_cpu_ms_per_delivery')} + PG {rec.get('pg_ms_per_delivery')} ms/delivery, "
                f"errors {rec.get('errors')} {rec.get('errmsgs') or ''}")
    if sid == "idle":
        return (f"{rec.get('pss_KiB_per_session')} KiB PSS/session, opened {rec.get('opened')}/"
                f"{rec.get('requested')}, procs {rec.get('server_procs_at_K')}")
    if sid == "nooplat":
        return (f"NOOP p99 {rec.get('noop_p99_ms')} ms (baseline p99 "
                f"{(rec.get('noop_baseline_ms') or {}).get('p99')} ms), {rec.get('logins_in_window')} "
                f"bcrypt logins, server CPU {rec.get('server_cpu_pct')}%, errors {rec.get('loader_errors')}")
    if sid == "coldretr":
        return coldretr.brief(rec)
    if sid == "scale":
        return (f"{rec.get('opened')}/{rec.get('requested')} open in {rec.get('open_s')} s, PSS "
                f"{rec.get('pss_MiB_at_N')} MiB ({rec.get('pss_KiB_per_session')} KiB/session, "
                f"{rec.get('server_procs_at_N')} procs), NOOP p50 "
                f"{(rec.get('noop_ms') or {}).get('p50')} p99 {rec.get('noop_p99_ms')} ms, "
                f"errors {rec.get('errors')}+{rec.get('noop_errors')}")
    return json.dumps(rec)[:200]


def invalid(sid: str, rec: dict) -> str | None:
    """Why a run does not count, or None."""
    if sid.startswith("tls_"):
        return tlsbench.invalid(rec)
    sid = sid.removeprefix("pg_")
    if "error" in rec:
        return rec["error"][:120]
    if sid.startswith("retr"):
        bad = (rec.get("hash_bad") or 0) + (rec.get("size_bad") or 0) + (rec.get("hash_missing") or 0)
        if bad:
            return f"verification failed ({bad} messages)"
    if sid in ("idle", "scale") and rec.get("opened") != rec.get("requested"):
        return f"only {rec.get('opened')}/{rec.get('requested')} sessions opened"
    if sid == "coldretr" and (rec.get("loader_errors") or rec.get("probe_error")):
        return (f"loaders: {rec.get('loader_errors')} errors {rec.get('errmsgs')}; "
                f"probe: {rec.get('probe_error')}")
    if sid == "scale" and rec.get("noop_errors"):
        return f"{rec['noop_errors']} sessions did not answer NOOP"
    if sid == "nooplat" and rec.get("probe_error"):
        return "probe: " + rec["probe_error"]
    return None


def summarize(results: dict) -> list[dict]:
    table = []
    for sid, metric, title, better, tkind, tval, *against in ROWS:
        other_kind = against[0] if against else "dovecot"
        sc = results["scenarios"].get(sid)
        row = {"id": sid, "metric": metric, "title": title, "better": better,
               "target": "-" if tkind is None else
               f"{tkind.replace('abs', 'popgate ').replace('ratio', 'ratio ')} {tval:g}",
               "popgate": None, "dovecot": None, "ratio": None, "verdict": "not run", "notes": []}
        table.append(row)
        if sc is None:
            continue
        runs = sc.get("runs", {})
        notes = row["notes"]
        vals = {}
        for kind in ("popgate", other_kind):
            recs = runs.get(kind, [])
            bad = [invalid(sid, r) for r in recs]
            for why in bad:
                if why and why not in notes:
                    notes.append(f"{kind}: {why}")
            errs = sum((r.get("errors") or r.get("loader_errors") or 0) for r in recs)
            if errs and metric in ("sessions_per_s", "MB_per_s", "noop_p99_ms"):
                notes.append(f"{kind}: {errs} session errors")
            kind = "dovecot" if kind == other_kind else kind  # the column it is shown in
            vals[kind] = median([dig(r, metric) for r, why in zip(recs, bad) if not why])
            row[kind] = vals[kind]
            row[f"{kind}_runs"] = [dig(r, metric) for r in recs]
        row["other_cpu_pct"] = median([r.get("_other_cpu_pct") for k in runs for r in runs[k]])
        if sc.get("na") and vals.get("popgate") is None:
            row["verdict"] = sc["na"]
            continue
        p, d = vals.get("popgate"), vals.get("dovecot")
        if p is not None and d:
            row["ratio"] = round(p / d, 3)
        if any("verification failed" in n or "sessions opened" in n for n in notes if n.startswith("popgate")):
            row["verdict"] = "FAIL (invalid run)"
        elif tkind is None:
            row["verdict"] = "-"
        elif tkind == "abs<=":
            row["verdict"] = "n/a" if p is None else ("pass" if p <= tval else "FAIL")
        elif row["ratio"] is None:
            row["verdict"] = "n/a"
        elif tkind == "ratio>=":
            row["verdict"] = "pass" if row["ratio"] >= tval else "FAIL"
        else:
            row["verdict"] = "pass" if row["ratio"] <= tval else "FAIL"
    return table


def summarize_pg(results: dict) -> list[dict]:
    """The PostgreSQL rows: popgate-pg beside popgate-maildir and Dovecot
    (medians of valid runs), pg/maildir and pg/Dovecot, the target."""
    table = []
    for sid, metric, title, tkind, tval, against in PG_ROWS:
        sc = results["scenarios"].get(sid)
        row = {"id": sid, "metric": metric, "title": title, "against": against, "notes": [],
               "target": "-" if tkind is None else
               f"{'two/one' if against == 'nodes' else 'pg/' + against} {tkind[5:]} {tval:g}",
               "verdict": "not run" if sc is None else ("-" if tkind is None else "n/a")}
        table.append(row)
        if sc is None:
            continue
        if sc.get("na"):
            row["verdict"] = sc["na"]
        runs = sc.get("runs", {})
        kinds = ("one", "two") if against == "nodes" else ("pg", "popgate", "dovecot")
        for kind in kinds:
            recs = runs.get(kind, [])
            bad = [invalid(sid, r) for r in recs]
            for why in bad:
                if why and f"{kind}: {why}" not in row["notes"]:
                    row["notes"].append(f"{kind}: {why}")
            errs = sum((r.get("errors") or 0) for r in recs)
            if errs:
                row["notes"].append(f"{kind}: {errs} errors")
            row[kind] = median([r.get(metric) for r, why in zip(recs, bad) if not why])
            row[f"{kind}_runs"] = [r.get(metric) for r in recs]
        row["other_cpu_pct"] = median([r.get("_other_cpu_pct") for k in runs for r in runs[k]])
        if against == "nodes":
            row["ratio"] = round(row["two"] / row["one"], 3) if row.get("one") and row.get("two") else None
            ratios = [row["ratio"]]
        else:
            for k in ("popgate", "dovecot"):
                row[f"ratio_{k}"] = round(row["pg"] / row[k], 3) if row.get("pg") is not None and row.get(k) \
                    else None
            ratios = [row["ratio_popgate" if against == "maildir" else "ratio_dovecot"]]
        if tkind and ratios[0] is not None:
            ok = ratios[0] >= tval if tkind == "ratio>=" else ratios[0] <= tval
            row["verdict"] = "pass" if ok else "FAIL"
    return table


def render_pg(results: dict) -> list[str]:
    table = results.get("pg_table") or summarize_pg(results)
    if all(r["verdict"] == "not run" for r in table):
        return []
    m = results["meta"].get("postgresql", {})
    out = ["### PostgreSQL store beside Maildir and Dovecot", "",
           f"PostgreSQL {m.get('server_version')} (the machine's server, shared; shared_buffers "
           f"{m.get('shared_buffers')}, synchronous_commit {m.get('synchronous_commit')}, fsync "
           f"{m.get('fsync')}); throwaway database {m.get('database')}. popgate-pg: "
           f"`{results['meta'].get('popgate_pg_cmd', '?')}`. Server CPU of popgate-pg includes "
           "the CPU of the PostgreSQL backends serving it.", "",
           "| scenario | popgate-pg | popgate-maildir | Dovecot | pg/maildir | pg/Dovecot | target | verdict "
           "| other load |", "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in table:
        if r["verdict"] == "not run" or r["against"] == "nodes":
            continue
        verdict = r["verdict"] + ("; " + "; ".join(r["notes"]) if r["notes"] else "")
        other = r.get("other_cpu_pct")
        rp, rd = r.get("ratio_popgate"), r.get("ratio_dovecot")
        out.append(f"| {r['title']} | {fmt(r.get('pg'))} | {fmt(r.get('popgate'))} | {fmt(r.get('dovecot'))} "
                   f"| {'-' if rp is None else f'{rp:.3g}'} | {'-' if rd is None else f'{rd:.3g}'} "
                   f"| {r['target']} | {verdict} | {'-' if other is None else f'{max(other, 0):.0f}%'} |")
    nodes = [r for r in table if r["against"] == "nodes" and r["verdict"] != "not run"]
    if nodes:
        out += ["", "| pg_2nodes | one node (A) | two nodes (A + B) | two/one | target | verdict | other load |",
                "|---|---:|---:|---:|---|---|---:|"]
        for r in nodes:
            verdict = r["verdict"] + ("; " + "; ".join(r["notes"]) if r["notes"] else "")
            other = r.get("other_cpu_pct")
            ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.3g}"
            out.append(f"| {r['title']} | {fmt(r.get('one'))} | {fmt(r.get('two'))} | {ratio} "
                       f"| {r['target']} | {verdict} | {'-' if other is None else f'{max(other, 0):.0f}%'} |")
        runs = results["scenarios"]["pg_2nodes"].get("runs", {})
        out += ["", "| pg_2nodes figure | one node | two nodes |", "|---|---:|---:|"]
        for key, label in (("client_cpu_pct", "load generators CPU % (both)"),
                           ("server_cpu_pct", "servers CPU % incl. PG backends"),
                           ("pg_ms_per_session", "PostgreSQL backends CPU ms per login"),
                           ("lat_ms_p99", "session latency p99, ms (worse of the two)"),
                           ("_other_cpu_pct", "other load %")):
            vals = [median([dig(x, key) for x in runs.get(k, []) if "error" not in x]) for k in ("one", "two")]
            out.append(f"| {label} | {fmt(vals[0])} | {fmt(vals[1])} |")
        for node in ("popgate-pg-a", "popgate-pg-b"):
            vals = [median([dig(x, f"per_node.{node}.cpu_ms_per_session") for x in runs.get(k, [])
                            if "error" not in x]) for k in ("one", "two")]
            out.append(f"| {node}: CPU ms per login incl. its PG backends | {fmt(vals[0])} | {fmt(vals[1])} |")
    out += ["", "Supporting figures (medians):", "",
            "| scenario | figure | popgate-pg | popgate-maildir | Dovecot |", "|---|---|---:|---:|---:|"]
    for sid, items in PG_DETAILS.items():
        runs = (results["scenarios"].get(sid) or {}).get("runs") or {}
        if not any(runs.values()):
            continue
        for key, label in items:
            vals = [median([dig(x, key) for x in runs.get(k, []) if "error" not in x])
                    for k in ("pg", "popgate", "dovecot")]
            out.append(f"| {sid} | {label} | {' | '.join(fmt(v) for v in vals)} |")
    migs = results.get("migrations") or []
    if migs:
        out += ["", "Loading the data into PostgreSQL (`popgate migrate` from the generated Maildirs; "
                "CPU: popgate migrate + its PG backend):", "",
                "| data set | users | messages | MB | seconds | messages/s | MB/s | CPU ms per message |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for g in migs:
            out.append(f"| {g['set']} | {fmt(g.get('users'))} | {fmt(g.get('messages'))} | {fmt(g.get('MB'))} "
                       f"| {fmt(g.get('wall_s'))} | {fmt(g.get('messages_per_s'))} | {fmt(g.get('MB_per_s'))} "
                       f"| {fmt(g.get('cpu_ms_per_message'))} |")
    return out + [""]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def render_markdown(results: dict, top: int = 0) -> str:
    """The report; `top` > 0 shortens each profile table to that many rows."""
    m = results["meta"]
    out = [f"## Results {m['date']}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem']}; {m['os']}, kernel {m['kernel']}.  ",
           f"popgate {m['popgate_rev']} on Python {m['python']}, Twisted {m['twisted']}; "
           f"Dovecot {m['dovecot']} (tuned).  ",
           f"Medians of {m['profile']['reps']} alternating runs per server; run took {m.get('wall_s')} s "
           f"(`{m['command']}`).", "",
           "| scenario | popgate | Dovecot | popgate/Dovecot | target | verdict | other load |",
           "|---|---:|---:|---:|---|---|---:|"]
    for r in results["table"]:
        verdict = r["verdict"] + ("; " + "; ".join(r["notes"]) if r["notes"] else "")
        other = r.get("other_cpu_pct")
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
        out.append(f"| {r['title']} | {fmt(r['popgate'])} | {fmt(r['dovecot'])} | "
                   f"{ratio} | {r['target']} | {verdict} | "
                   f"{'-' if other is None else f'{max(other, 0):.0f}%'} |")
    out += ["", *tlsbench.render_meta(results)]
    out += ["\"other load\": median CPU (% of one core) used during the runs by processes other "
            "than the servers and the load generator; high values mean the figures are noisy.", ""]
    out += ["Supporting figures (medians):", "",
            "| scenario | figure | popgate | Dovecot |", "|---|---|---:|---:|"]
    for sid, items in DETAILS.items():
        sc = results["scenarios"].get(sid) or {}
        runs = sc.get("runs") or {}
        if not any(runs.values()):
            continue
        for key, label in items:
            vals = [median([dig(r, key) for r in runs.get(k, []) if "error" not in r])
                    for k in ("popgate", "dovecot")]
            out.append(f"| {sid} | {label} | {fmt(vals[0])} | {fmt(vals[1])} |")
    out.append("")
    out += render_pg(results)
    if m.get("dovecot_log_problems"):
        out += ["Dovecot log problems:", "", *[f"    {ln}" for ln in m["dovecot_log_problems"]], ""]
    profs = results.get("profiles") or {}
    if profs:
        out += ["### popgate profiles (py-spy, separate runs after the measurements)", "",
                "The workload figures in the headings are lower than in the table: py-spy "
                "competes for the same two cores.", ""]
        for name, s in profs.items():
            if not isinstance(s, dict) or "self" not in s:
                out += [f"{name}: {s}", ""]
                continue
            out.append(hotspots.to_text(s, f"{name}: {s.get('workload', '')}", top).replace("### ", "#### "))
    return "\n".join(out) + "\n"


def dig(rec: dict, key: str):
    for part in key.split("."):
        rec = rec.get(part) if isinstance(rec, dict) else None
    return rec


def machine_info(twistd: str, dovecot: str, prof: dict, caps: dict, command: str) -> dict:
    cpu = "?"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        mem = next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
        mem = f"{int(mem) / 1048576:.0f} GiB RAM"
    except OSError:
        mem = "?"
    osname = "?"
    try:
        osname = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    tw = subprocess.run([twistd, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu, "cores": os.cpu_count(), "mem": mem,
            "os": osname, "kernel": platform.release(), "python": platform.python_version(),
            "twisted": tw.split()[-1] if tw else "?", "dovecot": dovecot, "popgate_rev": rev,
            "profile": prof, "capabilities": caps, "command": command}


def update_docs(md: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    doc.write_text(f"{head}{begin}\n{md}{end}{tail}")
    log(f"updated {doc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, short windows, no profiling")
    ap.add_argument("--reps", type=int, default=0, help="repetitions per server (default 3; quick 1)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument("--profile", dest="profile", action="store_true", default=None,
                      help="profile popgate with py-spy (default in the full run)")
    prof.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--profile-only", metavar="JOBS",
                    help="profile only these workloads (login50,retr100k,big_warm,pg_login10,pg_retr100k)")
    ap.add_argument("--workdir", default=os.environ.get("POPGATE_BENCH_DIR", "/tmp/popgate-bench"),
                    help="generated data (kept) and per-run mail roots (removed) (default %(default)s)")
    ap.add_argument("--out", help="results directory (default bench/results)")
    ap.add_argument("--twistd", help="twistd to run popgate with (default .venv/bin/twistd)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (mail roots, logs)")
    ap.add_argument("--pg-big-load", choices=["migrate", "copy"],
                    help="how the 100k mailbox gets into PostgreSQL: popgate migrate (a migration "
                         "figure; about 2-3 minutes) or COPY by the harness (default: migrate; copy "
                         "with --quick)")
    ap.add_argument("--pg", action="store_true",
                    help="with --quick, run the PostgreSQL scenarios too (they add about 2.5 minutes; "
                         "the full run always has them)")
    ap.add_argument("--pg-store-args", default="",
                    help="extra postgresql: store arguments for popgate-pg, e.g. pool_size=16")
    ap.add_argument("--update-docs", action="store_true",
                    help="replace the results section of docs/benchmarks.md with this run's")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="only print the report of an earlier run (with --update-docs: put it in the docs)")
    a = ap.parse_args(argv)
    if a.pg_big_load is None:
        a.pg_big_load = "copy" if a.quick else "migrate"
    if a.render:
        results = json.loads(Path(a.render).read_text())
        print(render_markdown(results))
        if a.update_docs:
            update_docs(render_markdown(results, top=6))
        return 0
    if a.only:
        unknown = set(a.only.split(",")) - set(SCENARIOS)
        if unknown:
            ap.error(f"unknown scenarios {sorted(unknown)}; known: {','.join(SCENARIOS)}")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    bench = Bench(a)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
