#!/usr/bin/env python3
"""A B of popgate source trees on a noisy machine: server CPU per session.

On a machine whose CPU speed moves within seconds (a shared VM), rounds
of a few seconds with one server at a time differ more than most changes
do.  Here every tree runs at once (each `twistd popgate` pinned to the
same core, on the same Maildirs and passwd-file), and short bursts of
load alternate between them, so neighbouring bursts see the same
machine; each burst's server CPU per session is set against the first
tree's burst next to it, and the medians of those ratios are printed.

    .venv/bin/python bench/abtrees.py --rounds 10 before=/tmp/old-checkout after=.

Sessions: connect, greeting, USER, PASS, STAT, QUIT, in clear, over POP3S
(full TLS 1.3 handshake) and resumed, from `tlsbench.py load` (stdlib
`ssl`, 3 processes on the other core).  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CLK = os.sysconf("SC_CLK_TCK")
MODES = {"plain": [], "pop3s": ["--tls"], "resumed": ["--tls", "--resume"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def make_site(root: Path, users: int) -> None:
    """A self-signed ECDSA certificate, users u001.. with {PLAIN} passwords
    and three small messages each."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(root / "key.pem"),
                    "-out", str(root / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    passwd, logins = [], []
    for i in range(1, users + 1):
        user = f"u{i:03d}"
        passwd.append(f"{user}:{{PLAIN}}pw{i}\n")
        logins.append(f"{user} pw{i}\n")
        for sub in ("cur", "new", "tmp"):
            (root / "mail" / user / sub).mkdir(parents=True)
        for j in range(3):
            (root / "mail" / user / "new" / f"{j}.{user}.bench").write_bytes(
                b"From: a@example.org\r\nSubject: m%d\r\n\r\nbody\r\n" % j)
    (root / "passwd").write_text("".join(passwd))
    (root / "users.txt").write_text("".join(logins))


def start(tree: Path, root: Path, port: int, twistd: str, core: str) -> subprocess.Popen:
    cmd = ["taskset", "-c", core, twistd, "-n", "--pidfile=", "--logfile",
           str(root / f"{port}.log"), "popgate",
           "--pop3", f"tcp:{port}:interface=127.0.0.1",
           "--pop3s", f"tcp:{port + 1}:interface=127.0.0.1",
           "--tls-cert", str(root / "cert.pem"), "--tls-key", str(root / "key.pem"),
           "--auth", f"passwd-file:{root / 'passwd'}", "--store", f"maildir:{root}/mail/%n",
           "--max-connections-per-ip", "0"]
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def burst(args: list[str], pid: int, seconds: float, root: Path, procs: int, core: str) -> float:
    """Server CPU ms per session over one burst of load."""
    cmd = ["taskset", "-c", core, sys.executable, str(BENCH / "tlsbench.py"), "load", *args,
           "--users-file", str(root / "users.txt"), "--procs", str(procs),
           "--duration", str(seconds), "--no-verify"]
    before = cpu_seconds(pid)
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if out["errors"]:
        raise SystemExit(f"load errors: {out['errmsgs'][:3]}")
    return 1000 * (cpu_seconds(pid) - before) / out["sessions"]


def wait_listening(port: int, deadline: float) -> None:
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no server on port {port}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+",
                    help="NAME=DIR: a popgate source tree (the first is the base)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--burst", type=float, default=1.5, help="seconds of load per burst")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--procs", type=int, default=3, help="load generator processes")
    ap.add_argument("--server-core", default="1")
    ap.add_argument("--client-core", default="0")
    ap.add_argument("--twistd", default=str(BENCH.parent / ".venv" / "bin" / "twistd"))
    ap.add_argument("--base-port", type=int, default=22110)
    a = ap.parse_args(argv)
    trees = [spec.split("=", 1) for spec in a.trees]
    if any(len(t) != 2 for t in trees):
        ap.error("trees are NAME=DIR")
    root = Path(tempfile.mkdtemp(prefix="popgate-abtrees-"))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        make_site(root, a.users)
        for i, (name, tree) in enumerate(trees):
            port = a.base_port + 10 * i
            servers[name] = (start(Path(tree), root, port, a.twistd, a.server_core), port)
        for proc, port in servers.values():
            wait_listening(port, time.monotonic() + 30)
            # Every user once, so no burst pays a first Maildir scan.
            burst(["--port", str(port), "--count", str(a.users)], proc.pid, 30, root, 1,
                  a.client_core)
        results: dict[tuple[str, str], list[float]] = {(n, m): [] for n in servers for m in MODES}
        for r in range(a.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for mode, extra in MODES.items():
                for name in order:
                    proc, port = servers[name]
                    results[(name, mode)].append(burst(
                        ["--port", str(port + (1 if extra else 0)), *extra], proc.pid, a.burst,
                        root, a.procs, a.client_core))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    base = trees[0][0]
    print(f"server CPU ms per session, {a.rounds} rounds of {a.burst} s bursts; "
          f"ratio: median (quartiles) of each burst against {base}'s next to it")
    for mode in MODES:
        for name in servers:
            values = results[(name, mode)]
            ratios = [b / x for x, b in zip(results[(base, mode)], values, strict=True)]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            print(f"{mode:8s} {name:12s} median {statistics.median(values):.3f}  "
                  f"ratio {statistics.median(ratios):.3f} ({q[0]:.3f}-{q[2]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
