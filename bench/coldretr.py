#!/usr/bin/env python3
"""coldretr.py - reactor responsiveness while RETR reads a cold disk (stdlib only).

One "probe" session logs in, then sends NOOP every --interval seconds and
times each reply: first for --baseline seconds with no other load, then
while --concurrency sessions (each its own user, from --users-file) RETR
every message of their maildrop once (10 MiB messages in bench/run.py),
right after the page cache was dropped (`sync; echo 3 >
/proc/sys/vm/drop_caches`, with --drop-caches; needs root).  A server that
reads message files on the thread that also serves open sessions shows
every disk wait here as NOOP latency.

The loaders run in a child process, so their work does not delay the
probe's event loop.  The window ends when every loader has read its
maildrop, or after --duration seconds.

Prints one JSON object (and appends it to --json FILE).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nooplat import Pop, probe_loop, stats_ms, tree_cpu  # noqa: E402

now = time.monotonic
_TERMINATOR = b"\r\n.\r\n"


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ------------------------------------------------------------------ loader (child)
async def retr_all(a, user, pw, deadline, res):
    """Log in as USER, RETR every message once (read and thrown away), QUIT."""
    p = None
    try:
        p = await asyncio.wait_for(Pop.connect(a.host, a.port), a.session_timeout)
        await asyncio.wait_for(p.cmd(b"USER " + user), a.session_timeout)
        await asyncio.wait_for(p.cmd(b"PASS " + pw, "PASS"), a.session_timeout)
        stat = await asyncio.wait_for(p.cmd(b"STAT"), a.session_timeout)
        count = int(stat.split()[1])
        for i in range(1, count + 1):
            if now() >= deadline:
                break
            t0 = now()
            first = await asyncio.wait_for(p.cmd(b"RETR %d" % i, "RETR"), a.session_timeout)
            expected = int(first.split()[1])
            got, tail = 0, b""
            while True:
                chunk = await asyncio.wait_for(p.r.read(1 << 20), a.session_timeout)
                if not chunk:
                    raise RuntimeError("connection closed during RETR")
                got += len(chunk)
                tail = (tail + chunk)[-len(_TERMINATOR):]
                if tail == _TERMINATOR:
                    break
            if got < expected:
                raise RuntimeError("RETR %d: %d octets, LIST said %d" % (i, got, expected))
            res["octets"] += got
            res["retrs"] += 1
            res["retr_s"].append(now() - t0)
        await asyncio.wait_for(p.cmd(b"QUIT"), a.session_timeout)
    except Exception as e:  # noqa: BLE001 - report, the others go on
        res["errors"] += 1
        if len(res["errmsgs"]) < 5:
            res["errmsgs"].append("%s: %s" % (type(e).__name__, e))
    finally:
        if p is not None:
            p.abort()


async def loader_main(a):
    users = []
    with open(a.users_file) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) >= 2:
                users.append((parts[0].encode(), parts[1].encode()))
    users = users[:a.concurrency]
    if len(users) < a.concurrency:
        raise SystemExit("need %d users in %s" % (a.concurrency, a.users_file))
    res = {"octets": 0, "retrs": 0, "errors": 0, "errmsgs": [], "retr_s": []}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    t0 = now()
    deadline = t0 + a.duration
    await asyncio.gather(*(retr_all(a, u, pw, deadline, res) for u, pw in users))
    res["elapsed_s"] = now() - t0
    print(json.dumps(res), flush=True)


# ------------------------------------------------------------------ probe (parent)
async def main_async(a):
    probe = await asyncio.wait_for(Pop.connect(a.host, a.port), a.session_timeout)
    await asyncio.wait_for(probe.cmd(b"USER " + a.probe_user.encode()), a.session_timeout)
    await asyncio.wait_for(probe.cmd(b"PASS " + a.probe_password.encode(), "PASS"), a.session_timeout)
    base = []
    await probe_loop(probe, now() + a.baseline, a.interval, a.session_timeout, base)

    child = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--loader", "--host", a.host, "--port", str(a.port),
        "--users-file", a.users_file, "-c", str(a.concurrency), "-d", str(a.duration),
        "--session-timeout", str(a.session_timeout),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        if (await child.stdout.readline()).strip() != b"ready":
            raise SystemExit("the loader did not start")
        if a.drop_caches:
            drop_caches()
        c0 = tree_cpu(a.server_pid)
        t_start = now()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        loaded = []
        probe_err = None
        done = asyncio.ensure_future(child.stdout.readline())
        try:
            while not done.done() and now() < t_start + a.duration + a.grace:
                t0 = now()
                await asyncio.wait_for(probe.cmd(b"NOOP"), a.session_timeout)
                loaded.append(now() - t0)
                await asyncio.sleep(a.interval)
        except Exception as e:  # noqa: BLE001
            probe_err = "%s: %s" % (type(e).__name__, e)
        elapsed = now() - t_start
        server_cpu = tree_cpu(a.server_pid) - c0
        line = await asyncio.wait_for(done, a.grace)
        res = json.loads(line) if line else {"errors": 1, "errmsgs": ["no loader report"]}
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    try:
        await asyncio.wait_for(probe.cmd(b"QUIT"), 5)
    except Exception:  # noqa: BLE001
        pass
    probe.abort()
    mb = res.get("octets", 0) / 1e6
    return {
        "scenario": "coldretr", "port": a.port, "concurrency": a.concurrency,
        "dropped_caches": a.drop_caches, "duration_s": round(elapsed, 3), "interval_s": a.interval,
        "noop_baseline_ms": stats_ms(base),
        "noop_ms": stats_ms(loaded),
        "noop_p99_ms": stats_ms(loaded)["p99"],
        "retrs": res.get("retrs"), "MB": round(mb, 1),
        "MB_per_s": round(mb / max(res.get("elapsed_s", elapsed), 1e-9), 1),
        "retr_ms": stats_ms(res.get("retr_s", [])),
        "server_cpu_pct": round(100 * server_cpu / max(elapsed, 1e-9), 1) if a.server_pid else None,
        "server_cpu_ms_per_MB": round(1e3 * server_cpu / mb, 2) if a.server_pid and mb else None,
        "loader_errors": res.get("errors"), "errmsgs": res.get("errmsgs"), "probe_error": probe_err,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--probe-user")
    ap.add_argument("--probe-password")
    ap.add_argument("--users-file", required=True,
                    help='"login password" lines: the loaders (first --concurrency)')
    ap.add_argument("--concurrency", "-c", type=int, default=20)
    ap.add_argument("--duration", "-d", type=float, default=30.0, help="longest window, s")
    ap.add_argument("--baseline", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--session-timeout", type=float, default=60.0)
    ap.add_argument("--grace", type=float, default=30.0)
    ap.add_argument("--drop-caches", action="store_true",
                    help="sync and drop the page cache before the loaders start (root)")
    ap.add_argument("--server-pid", type=int, default=0, help="report the server's CPU use")
    ap.add_argument("--json")
    ap.add_argument("--loader", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.loader:
        asyncio.run(loader_main(a))
        return 0
    if not (a.probe_user and a.probe_password):
        ap.error("--probe-user and --probe-password are required")
    rec = asyncio.run(main_async(a))
    rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(rec))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
