#!/usr/bin/env python3
"""scale.py - thousands of open authenticated sessions: memory, open time, NOOP latency.

The `scale` scenario of bench/run.py (issue 16): N users (10,000; 300
with --quick), each with its own small Maildir, log in once and stay
logged in.  For each server, freshly started with its limits raised for
the bench only (below), the harness measures

  - the time to open all N sessions (connect, USER, PASS, STAT; at most
    --concurrency logins in flight) and the server's CPU meanwhile;
  - the total memory of the server's process tree with N open (PSS summed
    over every process: popgate's one, or Dovecot's master, login, auth,
    anvil, log, stats and N pop3 processes), against the same tree before;
  - then one NOOP on every session, paced evenly over --noop-window
    seconds (an open loop: each is sent at its time whatever the others
    do), each timed from send to +OK: p50/p99/max over all N.

The client is one asyncio process (this file with --client) holding all N
sockets, spread over --sources loopback addresses (127.0.0.2, .3, ...) so
ephemeral ports never run short.  It talks to the harness over its stdin
and stdout: "opened" (a JSON line) after the logins, then "noop" -> the
NOOP figures, then "quit" -> QUIT on every session.  Bounded: every step
has a deadline, every command --session-timeout.

Limits raised for this scenario only (servers of its own, not the others'):
RLIMIT_NOFILE up to 65536 for the harness, so for both servers and the
client (where the hard limit may not be raised, popgate gets as many
--workers as its descriptor budget needs: workers_needed); popgate
--max-connections N/workers+1000 and --exempt-networks 127.0.0.0/8 (no
per-address connection limit, no login penalty); Dovecot
default_process_limit, service pop3 process_limit, default_client_limit
(anvil, auth, log, stats, login processes) and mail_max_userip_connections
above N.  Logins do not fail here, so auth_failure_delay never applies.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

now = time.monotonic
NOFILE = 65536
MESSAGE = (b"From: scale@bench.test\nTo: user@bench.test\nSubject: scale bench\n"
           b"Message-ID: <scale@bench.test>\n\n" + b"All work and no play makes a mailbox.\n" * 40)

# Dovecot beside bench/servers.py's tuned config: limits for N sessions.
DOVECOT_EXTRA = """
# bench/scale.py: limits raised for {n} open sessions (one pop3 process each)
default_process_limit = {procs}
service anvil {{
  client_limit = {clients}
}}
service stats {{
  client_limit = {clients}
}}
"""


# ------------------------------------------------------------------ memory
def tree_mem(pids: list[int]) -> tuple[int, int]:
    """(processes, PSS KiB summed) of the given processes."""
    n = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for ln in f:
                    if ln.startswith("Pss:"):
                        pss += int(ln.split()[1])
                        break
            n += 1
        except (OSError, ValueError):
            continue
    return n, pss


def raise_nofile(limit: int = NOFILE) -> tuple[int, int]:
    """Soft and hard RLIMIT_NOFILE to C{limit} (root may raise the hard
    one); children started later inherit it.  Returns the old limits."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, old[1])))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
    return old


def workers_needed(n: int) -> int:
    """popgate processes for N sessions under this process's hard
    RLIMIT_NOFILE: a session may hold 3 descriptors (socket, maildrop lock,
    the message being sent; popgate.limits.budget), and 192 stay in reserve."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1
    per_process = max(1, (min(hard, NOFILE) - 192) // 3)
    return -(-n // per_process)


# ------------------------------------------------------------------ data
def make_users(rundir: Path, roots: list[Path], n: int, uid: int, gid: int,
               password: str, domain: str) -> tuple[Path, Path]:
    """N users s00001..sNNNNN: a passwd-file ({PLAIN}), a users file, and in
    each mail root a Maildir per user holding one small message (hard
    links of one file).  Returns (passwd, users file)."""
    names = [f"s{i:05d}" for i in range(1, n + 1)]
    passwd = rundir / "passwd-scale"
    passwd.write_text("".join(f"{u}@{domain}:{{PLAIN}}{password}::::::\n" for u in names))
    os.chmod(passwd, 0o644)
    users = rundir / "users-scale.txt"
    users.write_text("".join(f"{u}@{domain} {password}\n" for u in names))
    template = rundir / "scale-message"
    template.write_bytes(MESSAGE)
    os.chown(template, uid, gid)
    for root in roots:
        root.mkdir(exist_ok=True)
        os.chown(root, uid, gid)
        for u in names:
            d = root / u
            d.mkdir()
            for sub in ("cur", "new", "tmp"):
                (d / sub).mkdir()
                os.chown(d / sub, uid, gid)
            os.chown(d, uid, gid)
            os.link(template, d / "cur" / "1767225600.M0P1Q1.scale:2,")
    return passwd, users


# ------------------------------------------------------------------ the client (child process)
class Session(asyncio.Protocol):
    """One POP3 session: single-line replies only, one command at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiter is not None and b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            w, self.waiter = self.waiter, None
            if not w.done():
                w.set_result(line)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def reply(self) -> asyncio.Future:
        """The next line (perhaps already buffered)."""
        w = self.waiter = asyncio.get_running_loop().create_future()
        self.data_received(b"")
        return w

    async def cmd(self, line: bytes | None, timeout: float) -> bytes:
        w = self.reply()
        if line is not None:
            self.transport.write(line + b"\r\n")
        got = await asyncio.wait_for(w, timeout)
        if not got.startswith(b"+OK"):
            raise RuntimeError(f"{(line or b'greeting').split()[0].decode()}: {got[:100]!r}")
        return got


def _pct(v: list[float], q: float):
    if not v:
        return None
    v = sorted(v)
    return round(1e3 * v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))], 2)


def _stats(v: list[float]) -> dict:
    return {"p50": _pct(v, 50), "p90": _pct(v, 90), "p99": _pct(v, 99),
            "max": round(1e3 * max(v), 2) if v else None, "n": len(v)}


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def client_main(a) -> None:
    loop = asyncio.get_running_loop()
    users = [ln.split()[:2] for ln in Path(a.users_file).read_text().splitlines() if ln.strip()]
    users = users[:a.sessions]
    sources = [f"127.0.0.{2 + i}" for i in range(a.sources)]
    t = a.session_timeout
    errors: list[str] = []
    sessions: list[Session] = []
    open_lat: list[float] = []
    sem = asyncio.Semaphore(a.concurrency)
    t0, c0 = now(), _self_cpu()
    deadline = t0 + a.open_deadline

    async def one(i: int, user: str, pw: str) -> None:
        async with sem:
            if now() > deadline:
                raise TimeoutError("open deadline passed")
            ts = now()
            _, s = await asyncio.wait_for(loop.create_connection(
                Session, a.host, a.port, local_addr=(sources[i % len(sources)], 0)), t)
            try:
                await s.cmd(None, t)
                await s.cmd(b"USER " + user.encode(), t)
                await s.cmd(b"PASS " + pw.encode(), t)
                await s.cmd(b"STAT", t)
            except BaseException:
                s.transport.abort()
                raise
            sessions.append(s)
            open_lat.append(now() - ts)

    res = await asyncio.gather(*(one(i, u, p) for i, (u, p) in enumerate(users)),
                               return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException) and len(errors) < 5:
            errors.append(f"{type(r).__name__}: {r}")
    open_s = now() - t0
    print(json.dumps({
        "requested": len(users), "opened": len(sessions), "errmsgs": errors,
        "errors": sum(isinstance(r, BaseException) for r in res),
        "open_s": round(open_s, 3), "sessions_per_s": round(len(sessions) / open_s, 1),
        "open_ms": _stats(open_lat), "client_cpu_s_open": round(_self_cpu() - c0, 2)}), flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while (await stdin.readline()).strip() == b"noop":
        print(json.dumps(await noop_pass(a, sessions)), flush=True)
    # "quit" (or the harness went away): QUIT everywhere, a bounded wait.
    alive = [s for s in sessions if not s.closed.done()]
    for s in alive:
        s.reply()
        s.transport.write(b"QUIT\r\n")
    if alive:
        await asyncio.wait([s.closed for s in alive], timeout=a.quit_timeout)
    for s in sessions:
        if not s.closed.done():
            s.transport.abort()
    print(json.dumps({"quit": len(alive), "unclosed": sum(not s.closed.done() for s in alive)}),
          flush=True)


async def noop_pass(a, sessions: list[Session]) -> dict:
    """One NOOP per open session, sent evenly over --noop-window seconds."""
    live = [s for s in sessions if not s.closed.done()]
    lat: list[float] = []
    errs: list[str] = []
    late: list[float] = []
    step = a.noop_window / max(1, len(live))
    t0, c0 = now(), _self_cpu()

    async def one(i: int, s: Session) -> None:
        due = t0 + i * step
        await asyncio.sleep(max(0.0, due - now()))
        ts = now()
        late.append(ts - due)
        try:
            await s.cmd(b"NOOP", a.session_timeout)
            lat.append(now() - ts)
        except Exception as e:  # counted and reported
            if len(errs) < 5:
                errs.append(f"{type(e).__name__}: {e}")
    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(live)), return_exceptions=True)
    return {"noop_sessions": len(live), "noop_ms": _stats(lat), "noop_p99_ms": _pct(lat, 99),
            "noop_errors": len(live) - len(lat)
            + sum(isinstance(r, BaseException) for r in results),
            "noop_errmsgs": errs, "noop_window_s": round(now() - t0, 3),
            "noop_send_late_ms": _stats(late), "client_cpu_s_noop": round(_self_cpu() - c0, 2)}


# ------------------------------------------------------------------ the harness side
class Client:
    """The client process, driven line by line (each read bounded)."""

    def __init__(self, cmd: list[str]) -> None:
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for ln in self.p.stdout:
            self.lines.put(ln)
        self.lines.put(None)

    def read(self, timeout: float) -> dict:
        try:
            ln = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"scale client: no answer in {timeout:.0f} s") from None
        if ln is None:
            raise RuntimeError(f"scale client exited: {self.p.stderr.read()[-500:]}")
        return json.loads(ln)

    def send(self, word: str) -> None:
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()

    def cpu_s(self) -> float:
        try:
            with open(f"/proc/{self.p.pid}/stat", "rb") as f:
                v = f.read().rsplit(b")", 1)[1].split()
            return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            return 0.0

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait(10)


def measure(server, users_file: Path, n: int, *, proc_tree, tree_cpu, sources: int = 4,
            concurrency: int = 100, noop_window: float = 5.0, timeout: float = 60.0,
            log=print) -> dict:
    """One run against a started server: open N, memory, NOOP each, QUIT."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--client", "--host", server.host,
           "--port", str(server.port), "--users-file", str(users_file), "--sessions", str(n),
           "--sources", str(sources), "--concurrency", str(concurrency),
           "--noop-window", str(noop_window), "--session-timeout", str(timeout),
           "--open-deadline", str(max(60.0, n / 50))]
    procs0, pss0 = tree_mem(proc_tree(server.pid))
    c0 = tree_cpu(server.pid)
    b0 = _busy()
    client = Client(cmd)
    try:
        rec = client.read(max(90.0, n / 50) + timeout)
        c1 = tree_cpu(server.pid)
        rec["server_cpu_s_open"] = round(c1 - c0, 2)
        rec["server_cpu_ms_per_session_open"] = round(1e3 * (c1 - c0) / max(1, rec["opened"]), 3)
        rec["other_cpu_pct_open"] = round(100 * (_busy() - b0 - (c1 - c0) - client.cpu_s())
                                          / max(rec["open_s"], 1e-9), 1)
        time.sleep(1.0)  # let late frees and process start-ups settle
        pids = proc_tree(server.pid)
        procs1, pss1 = tree_mem(pids)
        k = max(1, rec["opened"])
        rec.update({"server_procs_before": procs0, "server_procs_at_N": procs1,
                    "pss_MiB_before": round(pss0 / 1024, 1), "pss_MiB_at_N": round(pss1 / 1024, 1),
                    "pss_KiB_per_session": round((pss1 - pss0) / k, 2)})
        log(f"    {rec['opened']}/{rec['requested']} open in {rec['open_s']} s, PSS "
            f"{rec['pss_MiB_at_N']} MiB ({procs1} processes); NOOP on each ...")
        c2 = tree_cpu(server.pid)
        client.send("noop")
        rec.update(client.read(noop_window + timeout + 30))
        rec["server_cpu_s_noop"] = round(tree_cpu(server.pid) - c2, 2)
        client.send("quit")
        rec.update(client.read(60))
        rec["client_cpu_s"] = round(client.cpu_s(), 2)
    finally:
        client.close()
    return rec


def scenario(bench, n: int, noop_window: float, password: str, domain: str, log=print) -> None:
    """bench/run.py's `scale`: N sessions on popgate and Dovecot instances of
    their own (limits raised for N), each freshly started per run and
    warmed by a few sessions, A B A B."""
    from servers import MAIL_GID, MAIL_UID, Dovecot, Popgate, proc_tree, tree_cpu
    old_nofile = raise_nofile()
    roots = {k: bench.rundir / f"mail-scale-{k}" for k in ("popgate", "dovecot")}
    t0 = now()
    passwd, users = make_users(bench.rundir, list(roots.values()), n, MAIL_UID, MAIL_GID,
                               password, domain)
    log(f"  {n} users with a Maildir each in {now() - t0:.1f} s; RLIMIT_NOFILE {NOFILE}")
    workers = workers_needed(n)
    per_process = -(-n // workers) + 1000
    log(f"  popgate: {workers} process(es) (RLIMIT_NOFILE "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)}), --max-connections {per_process} each")
    pop = Popgate("popgate-scale", bench.twistd, bench.rundir, passwd, roots["popgate"],
                  extra=[*bench.nocache, "--max-connections", str(per_process),
                         "--exempt-networks", "127.0.0.0/8",
                         *(["--workers", str(workers)] if workers > 1 else [])])
    clients = 2 * n + 2000
    dov = Dovecot("dovecot-scale", bench.rundir, passwd, roots["dovecot"],
                  extra=DOVECOT_EXTRA.format(n=n, procs=n + 500, clients=clients),
                  limits={"client_limit": clients, "process_limit": n + 500,
                          "userip_limit": n + 100})
    warm_file = bench.rundir / "users-scale-warm.txt"
    warm_file.write_text("".join(users.read_text().splitlines(True)[-20:]))

    def one(s, rep):
        # s was started just before (below, or by the previous run): a few
        # sessions first (lazy imports, the thread pool, Dovecot's first
        # pop3 processes), so they do not count as per-session memory
        measure(s, warm_file, 20, proc_tree=proc_tree, tree_cpu=tree_cpu, noop_window=0.2)
        bench.settle()
        rec = measure(s, users, n, proc_tree=proc_tree, tree_cpu=tree_cpu, noop_window=noop_window,
                      log=log)
        rec["total_MiB_at_N"] = rec["pss_MiB_at_N"]
        rec["popgate_workers"] = workers if s is pop else None
        rec["_other_cpu_pct"] = rec["other_cpu_pct_open"]
        bench.stop(s)  # 10,000 processes or sockets: not kept into the next run
        if rep + 1 < bench.p["reps"]:
            bench.start(s)
        return rec
    try:
        for s in (pop, dov):
            bench.start(s)  # ab() checks each is alive before its run
        bench.ab("scale", (pop, dov), one)
    finally:
        for s in (pop, dov):
            bench.stop(s)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, old_nofile)
        except (OSError, ValueError):
            pass
        for root in roots.values():
            subprocess.run(["rm", "-rf", str(root)], check=False)


def _busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", action="store_true",
                    help="run as the client (bench/run.py starts it)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--users-file", required=True, help='"login password" lines, one per session')
    ap.add_argument("--sessions", "-n", type=int, default=10000)
    ap.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2, .3, ...")
    ap.add_argument("--concurrency", "-c", type=int, default=100, help="logins in flight")
    ap.add_argument("--noop-window", type=float, default=5.0,
                    help="seconds the NOOPs are spread over")
    ap.add_argument("--session-timeout", type=float, default=60.0, help="per command, s")
    ap.add_argument("--open-deadline", type=float, default=300.0,
                    help="no login starts after it, s")
    ap.add_argument("--quit-timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    if not a.client:
        ap.error("run by bench/run.py (scenario scale); --client is the load generator")
    raise_nofile()
    # Its 10,000 sessions' objects made each full collection of the
    # client's heap a 200 ms pause, seen as late NOOPs: off (the client is
    # bounded and short-lived; reference counting frees nearly everything).
    gc.disable()
    asyncio.run(client_main(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
