#!/usr/bin/env python3
"""coldretr.py - does an open session stay responsive while RETR reads a cold disk?

    sudo .venv/bin/python bench/coldretr.py                     # popgate, Maildir, 3 runs
    sudo .venv/bin/python bench/coldretr.py --server both       # popgate and Dovecot, A B A B
    sudo .venv/bin/python bench/coldretr.py --store mbox        # popgate serving mbox spools
    sudo .venv/bin/python bench/coldretr.py --popgate-path /tmp/old --popgate-path .

Starts popgate (twistd, one process) and, with --server both, a throwaway
Dovecot on loopback ports, both reading the same generated mail (--sessions
users with --messages messages of --size octets each, plus one probe user).
Each run then:

  1. logs the probe session in, and times a NOOP every --interval seconds
     for --baseline seconds (no load);
  2. logs --sessions sessions in, one per user (not measured);
  3. syncs and drops the page cache (`echo 3 > /proc/sys/vm/drop_caches`),
     so every message, directory and index comes from the disk;
  4. has every session RETR every message of its maildrop once (read and
     counted, not kept), while the probe keeps timing NOOPs.  The window
     ends when all are read or after --duration s.

It prints, per run and as medians per server: NOOP p50/p99/max under load,
MB/s, and the server's CPU per MB (utime+stime of its process tree, from
/proc/PID/stat).  A server that reads message files on the thread that also
serves the open sessions shows every disk wait as NOOP latency.  Target
(issue 11): NOOP p99 under 20 ms.

The loaders run in a child process so their work does not delay the probe's
event loop.  Everything is bounded: --duration per window, --session-timeout
per command, a hard timeout per child, and the servers are stopped by their
pid (and process group) on exit, Ctrl-C or error.  Needs root (drop_caches,
Dovecot).  Generated mail is kept under --workdir/src/cold* between runs.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
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
from nooplat import Pop, probe_loop, stats_ms  # noqa: E402
from servers import MAIL_GID, MAIL_UID, Dovecot, Popgate, ensure_dovecot, proc_tree, tree_cpu  # noqa: E402

SHARED = Path(os.environ.get("POPGATE_SHARED_BENCH")
              or (REPO.parent / "shared" / "bench")).resolve()
MKMAIL = SHARED / "mkmail.py"
PASSWORD = "benchpw"
DOMAIN = "bench.test"
now = time.monotonic
_TERMINATOR = b"\r\n.\r\n"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ------------------------------------------------------------------ loaders (child process)
def _note(res: dict, e: Exception) -> None:
    res["errors"] += 1
    if len(res["errmsgs"]) < 5:
        res["errmsgs"].append(f"{type(e).__name__}: {e}")


async def login(a, user: bytes, pw: bytes) -> tuple[Pop, int]:
    """A session logged in as USER, and its message count."""
    t = a.session_timeout
    p = await asyncio.wait_for(Pop.connect(a.host, a.port), t)
    try:
        await asyncio.wait_for(p.cmd(b"USER " + user), t)
        await asyncio.wait_for(p.cmd(b"PASS " + pw, "PASS"), t)
        return p, int((await asyncio.wait_for(p.cmd(b"STAT"), t)).split()[1])
    except BaseException:
        p.abort()
        raise


async def retr_all(a, p: Pop, count: int, deadline: float, res: dict) -> None:
    """RETR every message once (counted, thrown away), then QUIT."""
    t = a.session_timeout
    try:
        for i in range(1, count + 1):
            if now() >= deadline:
                break
            t0 = now()
            expected = int((await asyncio.wait_for(p.cmd(b"RETR %d" % i, "RETR"), t)).split()[1])
            got, tail = 0, b""
            while tail != _TERMINATOR:
                chunk = await asyncio.wait_for(p.r.read(1 << 20), t)
                if not chunk:
                    raise RuntimeError("connection closed during RETR")
                got += len(chunk)
                tail = (tail + chunk)[-len(_TERMINATOR):]
            if got < expected:
                raise RuntimeError(f"RETR {i}: {got} octets, LIST said {expected}")
            res["octets"] += got
            res["retrs"] += 1
            res["retr_s"].append(now() - t0)
        await asyncio.wait_for(p.cmd(b"QUIT"), t)
        res["sessions_s"].append(now() - res["t0"])
    except Exception as e:
        _note(res, e)
    finally:
        p.abort()


async def loader_main(a) -> None:
    """Log every user in (one at a time: popgate limits the logins in
    progress from one address, and logins are not what is measured), say
    "ready", and on "go" have every session RETR its maildrop."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # the probe may run at --nice; loaders do not
    users = [ln.split()[:2] for ln in Path(a.users_file).read_text().splitlines() if ln.strip()]
    res = {"octets": 0, "retrs": 0, "errors": 0, "errmsgs": [], "retr_s": [], "sessions_s": []}
    sessions = []
    for u, pw in users:
        try:
            sessions.append(await login(a, u.encode(), pw.encode()))
        except Exception as e:
            _note(res, e)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    res["t0"] = t0 = now()
    await asyncio.gather(*(retr_all(a, p, n, t0 + a.duration, res) for p, n in sessions))
    res["elapsed_s"] = now() - t0
    print(json.dumps(res), flush=True)


# ------------------------------------------------------------------ one measured window (parent)
async def window(a, port: int, server_pid: int, users_file: Path, probe_user: str) -> dict:
    t = a.session_timeout
    probe = await asyncio.wait_for(Pop.connect(a.host, port), t)
    await asyncio.wait_for(probe.cmd(b"USER " + probe_user.encode()), t)
    await asyncio.wait_for(probe.cmd(b"PASS " + PASSWORD.encode(), "PASS"), t)
    base: list[float] = []
    await probe_loop(probe, now() + a.baseline, a.interval, t, base)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--loader", "--host", a.host,
        "--port", str(port), "--users-file", str(users_file), "--duration", str(a.duration),
        "--session-timeout", str(t), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        start_new_session=True)
    loaded: list[float] = []
    probe_err = None
    try:
        ready = await asyncio.wait_for(child.stdout.readline(), a.sessions * t + 30)
        if ready.strip() != b"ready":
            raise RuntimeError("the loaders did not log in")
        if a.drop_caches:
            drop_caches()
        c0 = tree_cpu(server_pid)
        t_start = now()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        done = asyncio.ensure_future(child.stdout.readline())
        try:
            while not done.done() and now() < t_start + a.duration + a.grace:
                t0 = now()
                await asyncio.wait_for(probe.cmd(b"NOOP"), t)
                loaded.append(now() - t0)
                await asyncio.sleep(a.interval)
        except Exception as e:
            probe_err = f"{type(e).__name__}: {e}"
        elapsed = now() - t_start
        server_cpu = tree_cpu(server_pid) - c0
        line = await asyncio.wait_for(done, a.grace)
        res = json.loads(line) if line else {"errors": 1, "errmsgs": ["no loader report"]}
    finally:
        if child.returncode is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await child.wait()
    try:
        await asyncio.wait_for(probe.cmd(b"QUIT"), 5)
    except Exception:
        pass
    probe.abort()
    mb = res.get("octets", 0) / 1e6
    noop = stats_ms(loaded)
    return {
        "noop_baseline_ms": stats_ms(base), "noop_ms": noop, "noop_p99_ms": noop["p99"],
        "retrs": res.get("retrs"), "MB": round(mb, 1), "window_s": round(elapsed, 2),
        "MB_per_s": round(mb / max(res.get("elapsed_s", elapsed), 1e-9), 1),
        "retr_ms": stats_ms(res.get("retr_s", [])),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100 * server_cpu / max(elapsed, 1e-9), 1),
        "server_cpu_ms_per_MB": round(1e3 * server_cpu / mb, 3) if mb else None,
        "loader_errors": res.get("errors"), "errmsgs": res.get("errmsgs"),
        "probe_error": probe_err, "dropped_caches": a.drop_caches,
    }


# ------------------------------------------------------------------ data
def ensure_data(a) -> Path:
    """The generated Maildirs (one mkmail.py run, kept while its arguments
    and mkmail.py stay the same), owned by nobody:nogroup for Dovecot."""
    args = ["--users", str(a.sessions + 1), "--messages", str(a.messages),
            "--size", f"fixed:{a.size}", "--seed", "5", "--user-fmt", "c{:04d}"]
    d = Path(a.workdir) / "src" / f"cold-{a.sessions + 1}x{a.messages}x{a.size}"
    stamp = d / ".popgate-bench-stamp"
    want = json.dumps({"args": args, "mkmail": hashlib.sha256(MKMAIL.read_bytes()).hexdigest()})
    if not (stamp.exists() and stamp.read_text() == want):
        log(f"generating {d} ({' '.join(args)})")
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run([sys.executable, str(MKMAIL), "--out", str(d), "--domain", DOMAIN,
                        "--password", PASSWORD, *args], check=True, timeout=1800,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["chown", "-R", f"{MAIL_UID}:{MAIL_GID}", str(d)], check=True)
        stamp.write_text(want)
    return d


def to_mbox(maildir: Path, spool: Path) -> None:
    """One mbox spool (mboxrd quoting) holding the messages of a Maildir."""
    with open(spool, "wb") as out:
        for f in sorted((maildir / "cur").iterdir()):
            body = re.sub(rb"(?m)^(>*From )", rb">\1", f.read_bytes())
            out.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + body
                      + (b"" if body.endswith(b"\n") else b"\n") + b"\n")


# ------------------------------------------------------------------ the run
def renice(root: int, nice: int) -> None:
    """A server's process tree to C{nice}: its autogroup (each server runs in
    a session of its own, and with autogroups a session's weight, not a
    process's nice value, decides its share against other sessions) and
    every thread (new processes and threads inherit from their parent)."""
    set_autogroup_nice(root, nice)
    for pid in proc_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError:
                pass


def set_autogroup_nice(pid: int | str, nice: int) -> None:
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # no autogroups: the nice value of each thread is what counts


BLKIO = Path("/sys/fs/cgroup/blkio")


def whole_disk(path: str) -> str:
    """MAJOR:MINOR of the disk that holds C{path} (blkio throttles whole
    disks, not partitions)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysdir = Path("/sys/dev/block") / dev
    if (sysdir / "partition").exists():
        dev = (sysdir.resolve().parent / "dev").read_text().strip()
    return dev


class SlowDisk:
    """A blkio cgroup (cgroup v1) that holds the servers' processes and
    throttles their reads from the mail's disk to C{mbps} MB/s: a disk
    slower than this machine's, where every read the page cache misses
    waits.  Children forked later (Dovecot's) inherit it."""

    def __init__(self, path: str, mbps: float) -> None:
        if not (BLKIO / "blkio.throttle.read_bps_device").exists():
            raise SystemExit("--read-mbps needs the cgroup v1 blkio controller")
        self.dir = BLKIO / f"popgate-coldretr-{os.getpid()}"
        self.dir.mkdir()
        self.device = whole_disk(path)
        (self.dir / "blkio.throttle.read_bps_device").write_text(
            f"{self.device} {int(mbps * 1e6)}\n")

    def add(self, root: int) -> None:
        for pid in proc_tree(root):
            try:
                (self.dir / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                pass

    def remove(self) -> None:
        try:
            for pid in (self.dir / "cgroup.procs").read_text().split():
                (BLKIO / "cgroup.procs").write_text(f"{pid}\n")
            self.dir.rmdir()
        except OSError as e:
            log(f"could not remove {self.dir}: {e}")


def autogroup_nice() -> int:
    try:
        with open("/proc/self/autogroup") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return 0


def which_popgate(env: dict) -> str:
    """Where the servers' Python finds popgate (with --popgate-path, the
    other checkout: a check that the benchmark runs what it says)."""
    r = subprocess.run([sys.executable, "-c", "import popgate; print(popgate.__file__)"],
                       env=env, cwd="/", capture_output=True, text=True, timeout=60)
    return r.stdout.strip() or r.stderr.strip()[-300:]


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def brief(rec: dict) -> str:
    n = rec["noop_ms"]
    return (f"NOOP p50 {n['p50']} p99 {n['p99']} max {n['max']} ms (n {n['n']}, baseline p99 "
            f"{rec['noop_baseline_ms']['p99']}); {rec['MB']} MB in {rec['window_s']} s, "
            f"{rec['MB_per_s']} MB/s; server CPU {rec['server_cpu_ms_per_MB']} ms/MB "
            f"({rec['server_cpu_pct']}%); errors {rec['loader_errors']}"
            + (f" {rec['errmsgs']}" if rec["errmsgs"] else "")
            + (f"; probe: {rec['probe_error']}" if rec["probe_error"] else ""))


def run(a) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("run as root: drop_caches and Dovecot need it")
    if not MKMAIL.exists():
        raise SystemExit(f"{MKMAIL} not found: set POPGATE_SHARED_BENCH to the shared bench kit")
    twistd = a.twistd or str(REPO / ".venv" / "bin" / "twistd")
    data = ensure_data(a)
    paths = [os.path.abspath(p) for p in a.popgate_path or [str(REPO)]]
    names = ["popgate"] if len(paths) == 1 else [f"popgate@{i + 1}:{Path(p).name}"
                                                   for i, p in enumerate(paths)]
    kinds = (["popgate"] if a.server != "dovecot" else []) + \
        (["dovecot"] if a.server != "popgate" else [])
    if "dovecot" in kinds:
        if a.store != "maildir":
            raise SystemExit("Dovecot is set up for Maildir only")
        ensure_dovecot()
    rundir = Path(a.workdir) / f"coldrun-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    rundir.mkdir(parents=True)
    os.chmod(rundir, 0o755)
    passwd = rundir / "passwd"
    passwd.write_text((data / "passwd.dovecot").read_text())
    os.chmod(passwd, 0o644)
    logins = [ln.split()[0] for ln in (data / "users.txt").read_text().splitlines() if ln.strip()]
    probe_user, loaders = logins[-1], logins[:a.sessions]
    users_file = rundir / "users.txt"
    users_file.write_text("".join(f"{u} {PASSWORD}\n" for u in loaders))
    sources = sorted(str(p) for p in data.iterdir() if (p / "cur").is_dir())
    servers: list = []
    envs = {}
    for name, path in zip(names, paths, strict=True):
        envs[name] = env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    meta = {"command": " ".join(sys.argv), "nice": a.nice, "dropped_caches": a.drop_caches,
            "load_before": os.getloadavg(), "sessions": a.sessions, "messages": a.messages,
            "size": a.size, "store": a.store,
            "popgate": {name: which_popgate(envs[name]) for name in names}}
    for name in names:
        log(f"{name}: popgate from {meta['popgate'][name]}")
    log(f"load average {meta['load_before']}")
    runs: dict[str, list] = {}
    logs: list[Path] = []
    slow = SlowDisk(str(data), a.read_mbps) if a.read_mbps else None
    meta["slow_disk"] = f"{slow.device} {a.read_mbps} MB/s" if slow else None
    old_nice = os.getpriority(os.PRIO_PROCESS, 0)
    old_group = autogroup_nice()
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # the probe (loaders: own session, 0)
        set_autogroup_nice("self", a.nice)
    try:
        plan = [(n, "popgate") for n in names if "popgate" in kinds] + \
            [("dovecot", "dovecot") for k in kinds if k == "dovecot"]
        for i, (name, kind) in enumerate(plan):
            root = rundir / f"mail-{i}"
            root.mkdir()
            subprocess.run(["cp", "-al", *sources, str(root)], check=True)
            os.chown(root, MAIL_UID, MAIL_GID)
            if kind == "dovecot":
                s = Dovecot("dovecot", rundir, passwd, root)
            else:
                store = f"maildir:{root}/%n"
                if a.store == "mbox":
                    spools = rundir / f"spools-{i}"
                    spools.mkdir()
                    for src in sources:
                        to_mbox(Path(src), spools / Path(src).name)
                    store = f"mbox:{spools}/%n"
                s = Popgate(name, twistd, rundir, passwd, root, store=store, env=envs[name])
                if a.log_dir:
                    s.log = Path(a.log_dir) / f"coldretr-{os.getpid()}-{name}.log"
                    logs.append(s.log)
            servers.append(s)
            runs[name] = []
            log(f"starting {name}")
            s.start()
            log(f"{name}: pid {s.pid}, port {s.port}: {' '.join(getattr(s, 'cmd', []))}")
            if a.nice:
                renice(s.pid, a.nice)
            if slow:
                slow.add(s.pid)
        for rep in range(a.reps):
            for s in servers:
                if not s.running:
                    raise RuntimeError(f"{s.name} died; see {s.log}")
                rec = asyncio.run(window(a, s.port, s.pid, users_file, probe_user))
                rec["load"] = os.getloadavg()
                runs[s.name].append(rec)
                log(f"{s.name} #{rep + 1}: {brief(rec)}")
    finally:
        if a.nice:  # the autogroup is this command's whole session: give it back
            set_autogroup_nice("self", old_group)
            os.setpriority(os.PRIO_PROCESS, 0, old_nice)
        for s in servers:
            s.stop()
        if slow:
            slow.remove()
        if not a.keep:
            shutil.rmtree(rundir, ignore_errors=True)
            for f in logs:
                f.unlink(missing_ok=True)
    summary = {}
    for name, recs in runs.items():
        summary[name] = {k: median([dig(r, k) for r in recs]) for k in (
            "noop_ms.p50", "noop_ms.p99", "noop_ms.max", "noop_baseline_ms.p99", "MB_per_s",
            "server_cpu_ms_per_MB", "server_cpu_pct")}
        summary[name]["runs"] = len(recs)
        summary[name]["errors"] = sum((r.get("loader_errors") or 0) + bool(r.get("probe_error"))
                                      for r in recs)
    meta["load_after"] = os.getloadavg()
    return {"meta": meta, "runs": runs, "summary": summary}


def table(result: dict) -> str:
    m = result["meta"]
    out = [f"coldretr: {m['sessions']} sessions x {m['messages']} x {m['size']} octets, "
           f"{m['store']}, page cache {'dropped' if m.get('dropped_caches', True) else 'kept'}, "
           f"nice {m['nice']}, slow disk {m['slow_disk'] or 'no'}; load average "
           f"{' '.join(f'{x:.2f}' for x in m['load_before'])} before, "
           f"{' '.join(f'{x:.2f}' for x in m['load_after'])} after (medians of runs)",
           "| server | NOOP p50 ms | p99 ms | max ms | MB/s | server CPU ms/MB | CPU % "
           "| runs | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in result["summary"].items():
        v = {k: round(x, 2) if isinstance(x, float) else x for k, x in v.items()}
        out.append(f"| {name} | {v['noop_ms.p50']} | {v['noop_ms.p99']} | {v['noop_ms.max']} | "
                   f"{v['MB_per_s']} | {v['server_cpu_ms_per_MB']} | {v['server_cpu_pct']} | "
                   f"{v['runs']} | {v['errors']} |")
    return "\n".join(out)


def dig(rec: dict, key: str):
    for part in key.split("."):
        rec = rec.get(part) if isinstance(rec, dict) else None
    return rec


def scenario(bench, duration: float, users_file: Path, probe_user: str) -> None:
    """bench/run.py's `coldretr`: L{window} on its popgate and Dovecot, A B A
    B: the sessions of C{users_file} (the r10m set: 4 users x 10 x 10 MiB)
    RETR everything after the page cache is dropped, while the probe (a
    user of another set) times NOOPs."""
    a = argparse.Namespace(host="127.0.0.1", session_timeout=60.0, baseline=1.0, interval=0.01,
                           sessions=len(users_file.read_text().splitlines()), duration=duration,
                           grace=30.0, drop_caches=True)

    def one(s, rep):
        rec = asyncio.run(window(a, s.port, s.pid, users_file, probe_user))
        if rec.get("loader_errors"):
            rec["errors"] = rec["loader_errors"]
        return rec
    bench.ab("coldretr", (bench.popgate, bench.dovecot), one)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=("popgate", "dovecot", "both"), default="popgate")
    ap.add_argument("--store", choices=("maildir", "mbox"), default="maildir",
                    help="what popgate serves (Dovecot: Maildir only)")
    ap.add_argument("--twistd", help="twistd to run popgate with (default .venv/bin/twistd)")
    ap.add_argument("--popgate-path", metavar="DIR", action="append",
                    help="run popgate from this checkout (put first on its PYTHONPATH); "
                         "repeat it to compare checkouts, A B A B (default: this one)")
    ap.add_argument("--sessions", "-c", type=int, default=20, help="loading sessions (default 20)")
    ap.add_argument("--messages", type=int, default=5, help="messages per user (default 5)")
    ap.add_argument("--size", type=int, default=10 * 1024 * 1024,
                    help="octets per message (default 10 MiB)")
    ap.add_argument("--reps", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument("--duration", "-d", type=float, default=60.0,
                    help="longest loaded window, s; loaders start no RETR after it (default 60)")
    ap.add_argument("--baseline", type=float, default=1.0, help="unloaded NOOP timing, s")
    ap.add_argument("--interval", type=float, default=0.01, help="between probe NOOPs, s")
    ap.add_argument("--session-timeout", type=float, default=60.0, help="per command, s")
    ap.add_argument("--grace", type=float, default=30.0, help="after --duration, s")
    ap.add_argument("--no-drop-caches", dest="drop_caches", action="store_false",
                    help="keep the page cache (a warm run, for comparison)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the servers and the probe at this nice value (e.g. -10), the "
                         "loaders at 0: other jobs on a shared machine then hardly touch "
                         "the NOOP figures (default 0)")
    ap.add_argument("--read-mbps", type=float, default=0,
                    help="throttle the servers' disk reads to this many MB/s (a blkio "
                         "cgroup): a slower disk than this machine's (default: no limit)")
    ap.add_argument("--log-dir", metavar="DIR",
                    help="popgate's log file here (e.g. /dev/shm), not in the run directory "
                         "on the disk being measured")
    ap.add_argument("--workdir", default=os.environ.get("POPGATE_BENCH_DIR", "/tmp/popgate-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory (mail, logs)")
    ap.add_argument("--json", help="append the results as one JSON line to this file")
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--loader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--users-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.loader:
        asyncio.run(loader_main(a))
        return 0

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        result = run(a)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    result["meta"]["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(table(result))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    bad = any(v["errors"] for v in result["summary"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
