#!/usr/bin/env python3
"""nooplat.py - reactor responsiveness under expensive logins (stdlib only).

One "probe" session logs in (a cheap password), then sends NOOP every
--interval seconds and times each reply, first for --baseline seconds with no
other load, then for --duration seconds while --concurrency clients log in
over and over (connect, USER, PASS, QUIT) as users whose passwords are
expensive hashes (bcrypt cost 12 in bench/run.py).  A server that checks
passwords on the thread that also serves open sessions shows it here as NOOP
latency.

Bounded: loaders stop starting logins at the deadline and are aborted
--grace seconds later; every session step has --session-timeout.

Prints one JSON object (and appends it to --json FILE).
"""
import argparse
import asyncio
import json
import os
import sys
import time

now = time.monotonic
CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root):
    """CPU seconds of a process tree (0 without a pid)."""
    if not root:
        return 0.0
    kids, tot = {}, 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d, "rb") as f:
                    st = f.read()
                kids.setdefault(int(st[st.rfind(b")") + 2:].split()[1]), []).append(int(d))
            except (OSError, IndexError):
                pass
    todo = [root]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, ()))
        try:
            with open("/proc/%d/stat" % p, "rb") as f:
                st = f.read()
            v = st[st.rfind(b")") + 2:].split()
            tot += int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])
        except (OSError, IndexError):
            pass
    return tot / CLK


class Pop:
    """A minimal sequential POP3 client: single-line replies only."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        p = cls(reader, writer)
        await p.expect_ok("greeting")
        return p

    async def expect_ok(self, what):
        line = await self.r.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError("%s: %r" % (what, line[:120]))
        return line

    async def cmd(self, line, what=None):
        self.w.write(line + b"\r\n")
        return await self.expect_ok(what or line.split()[0].decode())

    def abort(self):
        try:
            self.w.transport.abort()
        except Exception:
            pass


def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))]


def stats_ms(v):
    return {k: (round(x * 1e3, 2) if x is not None else None) for k, x in (
        ("p50", pct(v, 50)), ("p90", pct(v, 90)), ("p99", pct(v, 99)),
        ("max", max(v) if v else None))} | {"n": len(v)}


async def probe_loop(p, until, interval, timeout, out):
    while now() < until:
        t0 = now()
        await asyncio.wait_for(p.cmd(b"NOOP"), timeout)
        out.append(now() - t0)
        await asyncio.sleep(interval)


async def loader(a, user, pw, deadline, res):
    while now() < deadline:
        t0 = now()
        p = None
        try:
            p = await asyncio.wait_for(Pop.connect(a.host, a.port), a.session_timeout)
            await asyncio.wait_for(p.cmd(b"USER " + user), a.session_timeout)
            await asyncio.wait_for(p.cmd(b"PASS " + pw, "PASS"), a.session_timeout)
            await asyncio.wait_for(p.cmd(b"QUIT"), a.session_timeout)
            res["logins"] += 1
            res["login_lat"].append(now() - t0)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - report, keep going
            res["errors"] += 1
            if len(res["errmsgs"]) < 5:
                res["errmsgs"].append("%s: %s" % (type(e).__name__, e))
            await asyncio.sleep(0.1)
        finally:
            if p is not None:
                p.abort()


async def main_async(a):
    users = []
    with open(a.users_file) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) >= 2:
                users.append((parts[0].encode(), parts[1].encode()))
    users = users[:a.concurrency]
    if len(users) < a.concurrency:
        raise SystemExit("need %d users in %s" % (a.concurrency, a.users_file))

    probe = await asyncio.wait_for(Pop.connect(a.host, a.port), a.session_timeout)
    await asyncio.wait_for(probe.cmd(b"USER " + a.probe_user.encode()), a.session_timeout)
    await asyncio.wait_for(probe.cmd(b"PASS " + a.probe_password.encode(), "PASS"), a.session_timeout)

    base = []
    await probe_loop(probe, now() + a.baseline, a.interval, a.session_timeout, base)

    res = {"logins": 0, "errors": 0, "errmsgs": [], "login_lat": []}
    c0 = tree_cpu(a.server_pid)
    t_start = now()
    deadline = t_start + a.duration
    tasks = [asyncio.ensure_future(loader(a, u, pw, deadline, res)) for u, pw in users]
    loaded = []
    probe_err = None
    try:
        await probe_loop(probe, deadline, a.interval, a.session_timeout, loaded)
    except Exception as e:  # noqa: BLE001
        probe_err = "%s: %s" % (type(e).__name__, e)
    elapsed = now() - t_start
    server_cpu = tree_cpu(a.server_pid) - c0
    logins_in_window = res["logins"]
    # Let in-flight logins finish for at most --grace, then abort them.
    done, pending = await asyncio.wait(tasks, timeout=a.grace)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    try:
        await asyncio.wait_for(probe.cmd(b"QUIT"), 5)
    except Exception:  # noqa: BLE001
        pass
    probe.abort()
    return {
        "scenario": "nooplat", "port": a.port, "concurrency": a.concurrency,
        "duration_s": round(elapsed, 3), "interval_s": a.interval,
        "noop_baseline_ms": stats_ms(base),
        "noop_ms": stats_ms(loaded),
        "noop_p99_ms": stats_ms(loaded)["p99"],
        "logins_in_window": logins_in_window,
        "logins_per_s": round(logins_in_window / max(elapsed, 1e-9), 2),
        "login_ms": stats_ms(res["login_lat"]),
        "server_cpu_pct": round(100 * server_cpu / max(elapsed, 1e-9), 1) if a.server_pid else None,
        "loader_errors": res["errors"], "errmsgs": res["errmsgs"],
        "aborted_in_flight": len(pending), "probe_error": probe_err,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--probe-user", required=True)
    ap.add_argument("--probe-password", required=True)
    ap.add_argument("--users-file", required=True,
                    help='"login password" lines: the loaders (first --concurrency)')
    ap.add_argument("--concurrency", "-c", type=int, default=50)
    ap.add_argument("--duration", "-d", type=float, default=6.0)
    ap.add_argument("--baseline", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--session-timeout", type=float, default=60.0)
    ap.add_argument("--grace", type=float, default=15.0)
    ap.add_argument("--server-pid", type=int, default=0, help="report the server's CPU use")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rec = asyncio.run(main_async(a))
    rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(rec))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
