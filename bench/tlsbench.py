#!/usr/bin/env python3
"""POP3S beside plain POP3: popgate vs Dovecot, same certificate, same run.

Two halves:

* a load generator (stdlib only; run as `tlsbench.py load ...`): P client
  processes, each running sessions one after another with blocking sockets
  and Python's ssl module (the client costs less CPU per session than an
  asyncio one, and P processes use both cores).  `session` mode: connect,
  TLS handshake, greeting, USER, PASS, STAT, QUIT; with --resume each
  process offers the session (ticket) of its previous connection and
  counts how many the server resumed.  `retr` mode: login, LIST, RETR of
  every message (size and body SHA-256 checked), QUIT.  The server's CPU
  is its process tree's, read right before the clients start and after
  the last one ended (every session counted whole); the clients' CPU is
  their own rusage.  One JSON line out.
* the scenarios bench/run.py runs (`ROWS`, `DETAILS`, `plan`): a popgate
  with --pop3 and --pop3s and a Dovecot with pop3 and pop3s listeners on
  one self-signed ECDSA P-256 certificate, A B A B as every scenario.

    sudo .venv/bin/python bench/run.py --only tls_full,tls_resume,tls_retr10m,tls_retr_w2

See docs/benchmarks.md ("TLS").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CLK = os.sysconf("SC_CLK_TCK")

# id, metric, title, better, target kind, target value (as run.py's ROWS)
ROWS = [
    (
        "tls_full",
        "server_cpu_ms_per_session",
        "POP3S full handshake + USER/PASS/STAT/QUIT, server CPU ms/session",
        "lower",
        "ratio<=",
        0.4,
    ),
    (
        "tls_resume",
        "server_cpu_ms_per_session",
        "the same, TLS session resumed (ticket), server CPU ms/session",
        "lower",
        "ratio<=",
        0.35,
    ),
    (
        "tls_retr10m",
        "tls_overhead_ms_per_MB",
        "RETR 10 x 10 MiB: TLS overhead, POP3S minus plain server CPU, ms/MB",
        "lower",
        "abs<=",
        1.0,
    ),
    (
        "tls_retr_w2",
        "MB_per_s",
        "RETR 10 x 10 MiB over POP3S, popgate --workers 2, MB/s",
        "higher",
        "ratio>=",
        1.0,
    ),
    (
        "tls_retr_w2",
        "server_cpu_ms_per_MB",
        "RETR 10 x 10 MiB over POP3S, popgate --workers 2, server CPU ms/MB",
        "lower",
        "ratio<=",
        0.7,
    ),
]
_SESSION = [
    ("sessions_per_s", "sessions/s"),
    ("resumed_pct", "sessions resumed, % of offered"),
    ("client_cpu_ms_per_session", "load generator CPU ms/session"),
    ("client_cpu_pct", "load generator CPU %"),
]
DETAILS = {
    "tls_full": [
        *_SESSION,
        ("plain.server_cpu_ms_per_session", "the same logins in clear, server CPU ms/session"),
        ("tls_ms_per_session", "TLS part: POP3S minus clear, server CPU ms/session"),
    ],
    "tls_resume": _SESSION,
    "tls_retr10m": [
        ("tls.server_cpu_ms_per_MB", "POP3S server CPU ms/MB"),
        ("plain.server_cpu_ms_per_MB", "plain server CPU ms/MB"),
        ("tls.MB_per_s", "POP3S MB/s"),
        ("plain.MB_per_s", "plain MB/s"),
        ("tls.client_cpu_ms_per_MB", "load generator CPU ms/MB, POP3S"),
        ("plain.client_cpu_ms_per_MB", "load generator CPU ms/MB, plain"),
        ("aes_floor_ratio", "TLS overhead / AES-256-GCM floor (openssl speed)"),
    ],
    "tls_retr_w2": [
        ("plain.MB_per_s", "plain MB/s"),
        ("plain.server_cpu_ms_per_MB", "plain server CPU ms/MB"),
        ("client_cpu_ms_per_MB", "load generator CPU ms/MB, POP3S"),
        ("server_cpu_pct", "server CPU % (POP3S)"),
    ],
}
SCENARIOS = list(DETAILS)
PROFILE = {  # seconds of load per measured run, client processes
    "full": dict(session=5.0, retr=6.0, warm=1.5, procs=4, max_msgs=0, plain_sessions=True),
    "quick": dict(session=1.0, retr=0.5, warm=0.3, procs=4, max_msgs=2, plain_sessions=False),
}


# ------------------------------------------------------------------ load generator
def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree (children reaped included)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    s = f.read()
                kids.setdefault(int(s[s.rfind(b")") + 2 :].split()[1]), []).append(int(d))
            except OSError:
                pass
    tot, todo = 0, [root]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, ()))
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                s = f.read()
            v = s[s.rfind(b")") + 2 :].split()
            tot += int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])
        except (OSError, IndexError):
            pass
    return tot / CLK


class Pop:
    """A blocking POP3 client over a plain or TLS socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self._fill()

    def ok(self, command: bytes | None, what: str) -> bytes:
        if command is not None:
            self.sock.sendall(command + b"\r\n")
        line = self.line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{what}: {line[:120]!r}")
        return line

    def multi(self) -> bytes:
        """The rest of a multi-line answer (still dot-stuffed), without the
        final '.' line."""
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return b""
        scan = 0
        while True:
            j = self.buf.find(b"\r\n.\r\n", scan)
            if j >= 0:
                body = bytes(self.buf[: j + 2])
                del self.buf[: j + 5]
                return body
            scan = max(0, len(self.buf) - 4)
            self._fill()


def body_ok(stuffed: bytes, size: int) -> tuple[bool, bool | None]:
    """(size matches LIST, body SHA-256 matches mkmail's header or None)."""
    msg = stuffed.replace(b"\r\n..", b"\r\n.")
    if msg.startswith(b".."):
        msg = msg[1:]
    size_ok = len(msg) == size or len(msg) - msg.count(b"\r\n") == size
    k = msg.find(b"\r\n\r\n")
    h = msg.find(b"\nX-Popbench-Body-SHA256: ", 0, k)
    if k < 0 or h < 0:
        return size_ok, None
    want = msg[h + 25 : h + 89].decode("ascii", "replace")
    return size_ok, hashlib.sha256(msg[k + 4 :].replace(b"\r\n", b"\n")).hexdigest() == want


def client_context(version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the client's checks cost it, not the server
    ctx.verify_mode = ssl.CERT_NONE
    v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    ctx.minimum_version = ctx.maximum_version = v
    return ctx


def child(
    a: argparse.Namespace, users: list[tuple[str, str]], start_at: float, deadline: float, conn
) -> None:
    st = dict(
        sessions=0,
        errors=0,
        errmsgs=[],
        offered=0,
        resumed=0,
        octets=0,
        msgs=0,
        size_bad=0,
        hash_ok=0,
        hash_bad=0,
        hash_none=0,
        version=None,
        cipher=None,
    )
    ctx = client_context(a.tls_version) if a.tls else None
    session = None
    i = 0
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while time.monotonic() < deadline and st["sessions"] + st["errors"] < a.count:
        user, pw = users[i % len(users)]
        i += 1
        try:
            raw = socket.create_connection((a.host, a.port), timeout=a.session_timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = raw
            if ctx is not None:
                sock = ctx.wrap_socket(raw, session=session if a.resume else None)
            try:
                p = Pop(sock)
                p.ok(None, "greeting")
                if ctx is not None:
                    if session is not None and a.resume:
                        st["offered"] += 1
                        st["resumed"] += bool(sock.session_reused)
                    session = sock.session  # a TLS 1.3 ticket has come with the greeting
                    st["version"], st["cipher"] = sock.version(), sock.cipher()[0]
                p.ok(b"USER " + user.encode(), "USER")
                p.ok(b"PASS " + pw.encode(), "PASS")
                if a.mode == "retr":
                    p.ok(b"LIST", "LIST")
                    sizes = [
                        tuple(map(int, ln.split()[:2])) for ln in p.multi().split(b"\r\n") if ln
                    ]
                    for n, size in sizes[: a.max_msgs or None]:
                        p.ok(b"RETR %d" % n, "RETR")
                        body = p.multi()
                        size_ok, hash_ok = body_ok(body, size) if a.verify else (True, None)
                        st["octets"] += len(body)
                        st["msgs"] += 1
                        st["size_bad"] += not size_ok
                        st[
                            "hash_none" if hash_ok is None else "hash_ok" if hash_ok else "hash_bad"
                        ] += 1
                else:
                    p.ok(b"STAT", "STAT")
                if session is not None and ctx is not None:
                    session = sock.session  # the newest ticket
                p.ok(b"QUIT", "QUIT")
            finally:
                sock.close()
            st["sessions"] += 1
        except (OSError, RuntimeError, ssl.SSLError) as e:
            st["errors"] += 1
            if len(st["errmsgs"]) < 3:
                st["errmsgs"].append(f"{type(e).__name__}: {e}"[:200])
            session = None
            time.sleep(0.05)
    r = resource.getrusage(resource.RUSAGE_SELF)
    st["cpu_s"] = r.ru_utime + r.ru_stime
    conn.send(st)
    conn.close()


def load(a: argparse.Namespace) -> dict:
    lines = [ln.split() for ln in Path(a.users_file).read_text().splitlines() if ln.strip()]
    users = [(u, p) for u, p in lines][: a.users or None]
    procs = min(a.procs, len(users))
    parts = [users[k::procs] for k in range(procs)]  # a user in one process only ([IN-USE])
    start_at = time.monotonic() + 0.5
    deadline = start_at + a.duration
    mpc = mp.get_context("fork")
    kids = []
    for k in range(procs):
        r, w = mpc.Pipe(duplex=False)
        p = mpc.Process(target=child, args=(a, parts[k], start_at, deadline, w), daemon=True)
        p.start()
        kids.append((p, r))
    while time.monotonic() < start_at:
        time.sleep(0.0005)
    c0 = tree_cpu(a.server_pid) if a.server_pid else 0.0
    t0 = time.monotonic()
    stats = []
    for p, r in kids:
        left = deadline + a.grace - time.monotonic()
        if r.poll(max(left, 0.1)):
            stats.append(r.recv())
        p.join(5)
        if p.is_alive():
            p.kill()
    wall = time.monotonic() - t0
    time.sleep(0.2)  # work the server does after the last QUIT (process exits, logs)
    scpu = (tree_cpu(a.server_pid) - c0) if a.server_pid else 0.0
    if len(stats) != len(kids):
        raise SystemExit(f"{len(kids) - len(stats)} client processes did not finish in time")
    agg = {
        k: sum(s[k] for s in stats)
        for k in (
            "sessions",
            "errors",
            "offered",
            "resumed",
            "octets",
            "msgs",
            "size_bad",
            "hash_ok",
            "hash_bad",
            "hash_none",
            "cpu_s",
        )
    }
    n, mb = agg["sessions"], agg["octets"] / 1e6
    out = {
        "mode": a.mode,
        "tls": a.tls,
        "resume": a.resume,
        "procs": procs,
        "wall_s": round(wall, 3),
        "sessions": n,
        "errors": agg["errors"],
        "errmsgs": [m for s in stats for m in s["errmsgs"]][:5],
        "sessions_per_s": round(n / wall, 1),
        "server_cpu_s": round(scpu, 3),
        "server_cpu_pct": round(100 * scpu / wall, 1),
        "client_cpu_s": round(agg["cpu_s"], 3),
        "client_cpu_pct": round(100 * agg["cpu_s"] / wall, 1),
        "version": next((s["version"] for s in stats if s["version"]), None),
        "cipher": next((s["cipher"] for s in stats if s["cipher"]), None),
    }
    if n:
        out["server_cpu_ms_per_session"] = round(1e3 * scpu / n, 3)
        out["client_cpu_ms_per_session"] = round(1e3 * agg["cpu_s"] / n, 3)
    if a.resume:
        out["offered"], out["resumed"] = agg["offered"], agg["resumed"]
        out["resumed_pct"] = (
            round(100 * agg["resumed"] / agg["offered"], 1) if agg["offered"] else None
        )
    if a.mode == "retr":
        out.update(
            msgs=agg["msgs"],
            payload_MB=round(mb, 2),
            MB_per_s=round(mb / wall, 1),
            size_bad=agg["size_bad"],
            hash_ok=agg["hash_ok"],
            hash_bad=agg["hash_bad"],
            hash_missing=agg["hash_none"],
        )
        if mb:
            out["server_cpu_ms_per_MB"] = round(1e3 * scpu / mb, 3)
            out["client_cpu_ms_per_MB"] = round(1e3 * agg["cpu_s"] / mb, 3)
    return out


def load_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tlsbench.py load")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["session", "retr"], default="session")
    ap.add_argument("--tls", action="store_true", help="implicit TLS (POP3S)")
    ap.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")
    ap.add_argument("--resume", action="store_true", help="offer the previous session (ticket)")
    ap.add_argument("--users-file", required=True, help='lines "login password"')
    ap.add_argument("--users", type=int, default=0)
    ap.add_argument("--procs", "-P", type=int, default=4)
    ap.add_argument("--duration", "-d", type=float, default=5.0)
    ap.add_argument("--count", "-n", type=int, default=10**9, help="sessions per process at most")
    ap.add_argument("--max-msgs", type=int, default=0)
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--session-timeout", type=float, default=60.0)
    ap.add_argument("--grace", type=float, default=60.0)
    ap.add_argument("--server-pid", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    out = load(a)
    text = json.dumps(out)
    if a.json:
        with open(a.json, "a") as f:
            f.write(text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------------ floors and versions
def aes_gcm_floor() -> dict:
    """What AES-256-GCM itself costs here, per MB in 16 KiB records: Debian's
    `openssl speed` (Dovecot's library) and the OpenSSL that pyOpenSSL
    brings (popgate's), through cryptography's AESGCM."""
    out: dict = {}
    try:
        r = subprocess.run(
            ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        m = re.search(r"^aes-256-gcm\s+([\d.]+)k", r.stdout, re.M | re.I)
        if m:
            mb_s = float(m.group(1)) * 1000 / 1e6
            out["openssl_speed_MB_per_s"] = round(mb_s, 1)
            out["openssl_speed_ms_per_MB"] = round(1e3 / mb_s, 4)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead, record, nonce = AESGCM(os.urandom(32)), os.urandom(16384), os.urandom(12)
        best = 0.0
        for _ in range(5):  # the best of five windows: a floor, under other load too
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.2:
                for _ in range(64):
                    aead.encrypt(nonce, record, None)
                n += 64
            best = max(best, n * 16384 / 1e6 / (time.perf_counter() - t0))
        mb_s = best
        out["bundled_aesgcm_ms_per_MB"] = round(1e3 / mb_s, 4)
    except ImportError:
        pass
    return out


def versions() -> dict:
    out = {
        "debian_openssl": subprocess.run(
            ["openssl", "version"], capture_output=True, text=True
        ).stdout.strip()
    }
    try:
        from OpenSSL import SSL

        out["pyopenssl_openssl"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except ImportError:
        pass
    out["client_openssl"] = ssl.OPENSSL_VERSION
    return out


def make_cert(d: Path) -> tuple[Path, Path]:
    """One self-signed ECDSA P-256 certificate for both servers."""
    cert, key = d / "tls-cert.pem", d / "tls-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(key, 0o644)  # throwaway; Dovecot's master reads it as root anyway
    return cert, key


# ------------------------------------------------------------------ scenarios (bench/run.py)
DOVECOT_TLS = """
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
ssl_cipher_list = ECDHE+AESGCM:ECDHE+CHACHA20
ssl_prefer_server_ciphers = yes
service pop3-login {{
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
"""


class TLSBench:
    """The TLS scenarios of one bench/run.py run: its servers, started on
    first use and stopped with the others (Bench.stop_all)."""

    def __init__(self, bench) -> None:
        self.b = bench
        self.p = PROFILE["quick" if bench.a.quick else "full"]
        self.popgate = self.dovecot = None
        self.meta: dict = {}
        self.warmed: set[str] = set()  # servers whose login users have all logged in once

    def servers(self):
        if self.popgate is None:
            from servers import Dovecot, Popgate, free_port

            b = self.b
            self.cert, self.key = make_cert(b.rundir)
            self.meta = {
                "certificate": "self-signed ECDSA P-256 (prime256v1), both servers",
                **versions(),
                "aes_gcm_floor": aes_gcm_floor(),
            }
            b.results["meta"]["tls"] = self.meta
            pport, dport = free_port(), free_port()
            self.popgate = Popgate(
                "popgate-tls",
                b.twistd,
                b.rundir,
                b.files["passwd"],
                b.files["root-popgate"],
                extra=[
                    *b.nocache,
                    "--pop3s",
                    f"tcp:{pport}:interface=127.0.0.1",
                    "--tls-cert",
                    str(self.cert),
                    "--tls-key",
                    str(self.key),
                ],
            )
            self.popgate.tls_port = pport
            self.dovecot = Dovecot(
                "dovecot-tls",
                b.rundir,
                b.files["passwd"],
                b.files["root-dovecot"],
                extra=DOVECOT_TLS.format(cert=self.cert, key=self.key, port=dport),
            )
            self.dovecot.tls_port = dport
            b.start(self.popgate)
            b.start(self.dovecot)
            self.meta["popgate_cmd"] = " ".join(self.popgate.cmd)
        return self.popgate, self.dovecot

    def run_load(self, s, name: str, args: list[str], duration: float, tls: bool = True) -> dict:
        b = self.b
        b.counter += 1
        out = b.rawdir / f"{b.counter:03d}-{name}-{s.name}.json"
        port = s.tls_port if tls else s.port
        cmd = [
            sys.executable,
            str(Path(__file__)),
            "load",
            "--port",
            str(port),
            "--server-pid",
            str(s.pid),
            "--json",
            str(out),
            "-d",
            str(duration),
            *(["--tls"] if tls else []),
            *args,
        ]
        rec = b.metered(cmd, duration + 120, out, "tlsbench")
        if rec.get("version") and "negotiated" not in self.meta:
            self.meta["negotiated"] = f"{rec['version']} {rec.get('cipher')}"
        return rec

    def sessions(self, sid: str, resume: bool) -> None:
        pair = self.servers()
        args = [
            "--mode",
            "session",
            "--users-file",
            str(self.b.files["users-login"]),
            "-P",
            str(self.p["procs"]),
            *(["--resume"] if resume else []),
        ]

        def measure(s, rep):
            rec = self.run_load(s, sid, args, self.p["session"])
            if resume or not self.p["plain_sessions"] or "error" in rec:
                return rec
            # The same logins in clear, to tell the TLS part from the login's.
            self.b.settle()
            plain = self.run_load(s, sid, args, self.p["session"], tls=False)
            rec["plain"] = plain
            if "server_cpu_ms_per_session" in rec and "server_cpu_ms_per_session" in plain:
                rec["tls_ms_per_session"] = round(
                    rec["server_cpu_ms_per_session"] - plain["server_cpu_ms_per_session"], 3
                )
            return rec

        self.b.ab(
            sid,
            pair,
            measure,
            warm=lambda s: self.warm_sessions(s, sid, args),
        )

    def warm_sessions(self, s, sid: str, args: list[str]) -> dict:
        """Every login user once in clear (each server then holds what it
        keeps per mailbox, as after any earlier visit: popgate its
        snapshot, Dovecot its index), then a short TLS warm-up.  Without
        it a run measures the first visit of many users: after a restart
        popgate reads their Maildirs again, Dovecot its indexes on disk."""
        if s.name not in self.warmed:  # (tls_resume runs on the same servers)
            self.warmed.add(s.name)
            users = len(self.b.files["users-login"].read_text().splitlines())
            per_proc = -(-users // self.p["procs"])  # each process has its share of the users
            self.run_load(s, sid, args + ["-n", str(per_proc)], 60, tls=False)
        return self.run_load(s, sid, args, self.p["warm"])

    def retr_args(self, max_msgs: int | None = None) -> list[str]:
        n = self.p["max_msgs"] if max_msgs is None else max_msgs
        return [
            "--mode",
            "retr",
            "--users-file",
            str(self.b.files["users-r10m"]),
            "-P",
            "4",
            *(["--max-msgs", str(n)] if n else []),
        ]

    def retr(self, sid: str = "tls_retr10m", pair=None) -> None:
        pair = pair or self.servers()
        floor = (self.meta.get("aes_gcm_floor") or {}).get("openssl_speed_ms_per_MB")

        def measure(s, rep):
            if sid == "tls_retr_w2" and self.b.a.quick:  # its rows need POP3S only
                return self.run_load(s, sid, self.retr_args(), self.p["retr"])
            plain = self.run_load(s, sid, self.retr_args(), self.p["retr"], tls=False)
            self.b.settle()
            rec = self.run_load(s, sid, self.retr_args(), self.p["retr"])
            if "error" in rec or "error" in plain:
                return {"error": rec.get("error") or plain.get("error")}
            rec = dict(rec, tls=dict(rec), plain=plain)
            if (
                rec.get("server_cpu_ms_per_MB") is not None
                and plain.get("server_cpu_ms_per_MB") is not None
            ):
                rec["tls_overhead_ms_per_MB"] = round(
                    rec["server_cpu_ms_per_MB"] - plain["server_cpu_ms_per_MB"], 3
                )
                if floor:
                    rec["aes_floor_ratio"] = round(rec["tls_overhead_ms_per_MB"] / floor, 2)
            for k in ("hash_bad", "size_bad", "hash_missing"):
                rec[k] = (rec.get(k) or 0) + (plain.get(k) or 0)
            return rec

        self.b.ab(
            sid,
            pair,
            measure,
            warm=lambda s: self.run_load(s, sid, self.retr_args(1) + ["-n", "1"], 0.1),
        )

    def retr_w2(self) -> None:
        from servers import Popgate, free_port

        b = self.b
        _, dovecot = self.servers()
        pport = free_port()
        pw = Popgate(
            "popgate-tls-w2",
            b.twistd,
            b.rundir,
            b.files["passwd"],
            b.files["root-popgate"],
            extra=[
                *b.nocache,
                "--workers",
                "2",
                "--pop3s",
                f"tcp:{pport}:interface=127.0.0.1",
                "--tls-cert",
                str(self.cert),
                "--tls-key",
                str(self.key),
            ],
        )
        pw.tls_port = pport
        try:
            b.start(pw)
            self.retr("tls_retr_w2", (pw, dovecot))
        finally:
            b.stop(pw)

    def plan(self) -> dict:
        jobs = {
            "tls_full": lambda: self.sessions("tls_full", False),
            "tls_resume": lambda: self.sessions("tls_resume", True),
            "tls_retr10m": self.retr,
            "tls_retr_w2": self.retr_w2,
        }
        return {sid: self._settling(job) for sid, job in jobs.items()}

    def _settling(self, job):
        """With --quick, wait at most 5 s for the servers to go quiet between
        runs (on a busy machine the harness's 30 s made these scenarios alone
        take 4 minutes)."""
        if not self.b.a.quick:
            return job

        def run():
            settle = self.b.settle
            self.b.settle = lambda max_s=5.0: settle(min(max_s, 5.0))
            try:
                job()
            finally:
                self.b.settle = settle

        return run

    def profile_jobs(self) -> list:
        """(name, job, target) for bench/run.py's py-spy profiles."""
        if self.popgate is None or not self.popgate.running:
            return []
        s = self.popgate
        sess = ["--mode", "session", "--users-file", str(self.b.files["users-login"]), "-P", "4"]
        return [
            ("tls_full", lambda: self.run_load(s, "prof", sess, 6), s),
            ("tls_retr10m", lambda: self.run_load(s, "prof", self.retr_args(), 6), s),
        ]


def brief(rec: dict) -> str:
    if "error" in rec:
        return "ERROR " + str(rec["error"])[:200]
    if "tls_overhead_ms_per_MB" in rec or rec.get("mode") == "retr":
        plain = rec.get("plain") or {}
        return (
            f"POP3S {rec.get('MB_per_s')} MB/s {rec.get('server_cpu_ms_per_MB')} ms CPU/MB, plain "
            f"{plain.get('MB_per_s')} MB/s {plain.get('server_cpu_ms_per_MB')} ms/MB, TLS overhead "
            f"{rec.get('tls_overhead_ms_per_MB')} ms/MB; client "
            f"{rec.get('client_cpu_ms_per_MB')} ms/MB; "
            f"hash ok {rec.get('hash_ok')} bad {rec.get('hash_bad')}, errors {rec.get('errors')}"
        )
    return (
        f"{rec.get('sessions_per_s')} sessions/s, server {rec.get('server_cpu_ms_per_session')} ms "
        f"CPU/session, client {rec.get('client_cpu_ms_per_session')} ms/session "
        f"({rec.get('client_cpu_pct')}%), resumed {rec.get('resumed')}/{rec.get('offered')}, "
        f"{rec.get('version')} {rec.get('cipher')}, errors {rec.get('errors')} "
        f"{rec.get('errmsgs') or ''}"
        + (
            f"; in clear {rec['plain'].get('server_cpu_ms_per_session')} ms/session"
            if isinstance(rec.get("plain"), dict)
            else ""
        )
    )


def invalid(rec: dict) -> str | None:
    if "error" in rec:
        return str(rec["error"])[:120]
    bad = (rec.get("hash_bad") or 0) + (rec.get("size_bad") or 0) + (rec.get("hash_missing") or 0)
    if bad:
        return f"verification failed ({bad} messages)"
    if rec.get("errors"):
        return f"{rec['errors']} session errors"
    return None


def render_meta(results: dict) -> list[str]:
    """The TLS scenarios' certificate, OpenSSL versions and AES-GCM floor."""
    m = results.get("meta", {}).get("tls")
    if not m:
        return []
    f = m.get("aes_gcm_floor") or {}
    return [
        f"TLS scenarios: {m.get('certificate')}, {m.get('negotiated')}; popgate's OpenSSL "
        "(pyOpenSSL's, bundled): "
        f"{m.get('pyopenssl_openssl')}; Dovecot's (Debian's): {m.get('debian_openssl')}; the load "
        f"generator's (Python ssl): {m.get('client_openssl')}. AES-256-GCM floor, 16 KiB records: "
        f"{f.get('openssl_speed_ms_per_MB')} ms/MB (`openssl speed -evp aes-256-gcm`, Debian's), "
        f"{f.get('bundled_aesgcm_ms_per_MB')} ms/MB (the bundled OpenSSL through cryptography's "
        "AESGCM).",
        "",
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        sys.exit(load_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        print(json.dumps({**versions(), **aes_gcm_floor()}, indent=1))
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
