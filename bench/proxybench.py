"""popgate as a POP3 proxy in front of Dovecot, against Dovecot direct, in
the same run (issue 14's benchmark):

    sudo .venv/bin/python bench/proxybench.py [--reps 3] [--quick]

The generated data of bench/run.py (cached under --workdir), one throwaway
Dovecot on it (bench/servers.py), and popgate with `--store
proxy:upstream=pop3://127.0.0.1:PORT` and no `--auth`: the upstream
checks the passwords (upstream authentication).  popbench's login (10
clients), RETR 100 KB and RETR 10 MiB loads (every byte checked against
the generator's digests) alternate between popgate -> Dovecot and Dovecot
direct.  With `--upstream imap` popgate runs the imap: store against the
same Dovecot's IMAP (`imap:upstream=imap://127.0.0.1:PORT`, needs
dovecot-imapd), still compared with Dovecot's POP3 direct.  Reported per
run: MB/s or logins/s; popgate's CPU per MB or per login (the proxy's own
cost, measured by popbench in its window); and Dovecot's CPU per MB or
login in both cases (the upstream's work, over the whole load run).
Targets: MB/s at least 0.8x Dovecot direct, and popgate's CPU per MB below
Dovecot's own.  The results go to
bench/results/proxy-<upstream>-<time>.json; nothing is changed outside --workdir.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: data, popbench, helpers)
from servers import Dovecot, Popgate, ensure_dovecot, stop_system_dovecot, tree_cpu  # noqa: E402


class ProxyPopgate(Popgate):
    """popgate on the proxy store, upstream authentication (no --auth)."""

    def command(self, port: int) -> list[str]:
        return [self.twistd, "-n", "--pidfile=", "--logfile", str(self.log), "popgate",
                "--pop3", f"tcp:{port}:interface={self.host}", "--store", self.store,
                "--max-connections-per-ip", "0", *self.extra]


def load(kind: str, server, files: dict, duration: float, rawdir: Path, n: int) -> list[str]:
    out = rawdir / f"{n:03d}-{kind}-{server.name}.json"
    args = {"login": ["login", "--users-file", str(files["users-login"]), "-c", "10"],
            "retr100k": ["retr", "--users-file", str(files["users-r100k"]), "-c", "4",
                         "--verify", "hash", "--verify-every", "1"],
            "retr10m": ["retr", "--users-file", str(files["users-r10m"]), "-c", "4",
                        "--verify", "hash", "--verify-every", "1"]}[kind]
    return [bench.PY, str(bench.POPBENCH), args[0], "--host", "127.0.0.1", "--port", str(server.port),
            "--json", str(out), "--quiet", "--label", server.name, *args[1:], "-d", str(duration),
            "--server-pid", str(server.pid), "--grace", "20", "--session-timeout", "60"], out


def measure(kind: str, server, dovecot, files: dict, duration: float, rawdir: Path, n: int) -> dict:
    cmd, out = load(kind, server, files, duration, rawdir, n)
    d0 = tree_cpu(dovecot.pid)
    r = bench.run_bounded(cmd, duration + 120)
    upstream_s = tree_cpu(dovecot.pid) - d0
    if r.returncode != 0 or not out.exists():
        return {"error": f"popbench rc={r.returncode}: {r.stderr.strip()[-400:]}"}
    rec = json.loads(out.read_text().splitlines()[-1])
    if kind == "login" and rec.get("sessions"):
        rec["dovecot_cpu_ms_per_session"] = round(1e3 * upstream_s / rec["sessions"], 3)
    if rec.get("payload_MB"):
        rec["dovecot_cpu_ms_per_MB"] = round(1e3 * upstream_s / rec["payload_MB"], 3)
    return rec


FIGURES = {
    "login": [("sessions_per_s", "logins/s, 10 clients"),
              ("server_cpu_ms_per_session", "CPU ms per login of the server measured (popgate / Dovecot)"),
              ("dovecot_cpu_ms_per_session", "Dovecot's CPU ms per login (upstream / direct)")],
    "retr100k": [("MB_per_s", "RETR 200 x 100 KB, MB/s"),
                 ("server_cpu_ms_per_MB", "CPU ms/MB of the server measured (popgate / Dovecot)"),
                 ("dovecot_cpu_ms_per_MB", "Dovecot's CPU ms/MB (upstream / direct)")],
    "retr10m": [("MB_per_s", "RETR 10 x 10 MiB, MB/s"),
                ("server_cpu_ms_per_MB", "CPU ms/MB of the server measured (popgate / Dovecot)"),
                ("dovecot_cpu_ms_per_MB", "Dovecot's CPU ms/MB (upstream / direct)")],
}


def profile(proxy, dovecot, files: dict, duration: float, rawdir: Path) -> dict:
    """py-spy on popgate during a RETR 10 MiB run; the busiest functions."""
    import shutil
    import signal
    import subprocess

    import hotspots
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy not installed (pip install py-spy)"}
    raw = rawdir / "proxy-retr10m.txt"
    p = subprocess.Popen([spy, "record", "--pid", str(proxy.pid), "-r", "250", "-f", "raw",
                          "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        measure("retr10m", proxy, dovecot, files, duration, rawdir, 999)
        secs = time.monotonic() - t0
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    summary = hotspots.summarize(str(raw), 15, 250, secs + 1.0)
    print(json.dumps(summary, indent=1)[:6000])
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 2 s windows")
    ap.add_argument("--workdir", default="/tmp/popgate-bench")
    ap.add_argument("--twistd", default=str(bench.REPO / ".venv" / "bin" / "twistd"))
    ap.add_argument("--upstream", choices=("pop3", "imap"), default="pop3",
                    help="popgate's store: proxy: to Dovecot's POP3, or imap: to its IMAP")
    ap.add_argument("--profile", action="store_true",
                    help="then profile popgate with py-spy during one more RETR 10 MiB run")
    a = ap.parse_args()
    reps, duration = (1, 2.0) if a.quick else (a.reps, 5.0)
    version = ensure_dovecot()
    stop_system_dovecot()
    workdir = Path(a.workdir)
    data = bench.ensure_data(workdir)
    results: dict = {"dovecot": version, "reps": reps, "window_s": duration, "runs": {}}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="proxy-") as tmp:
        rundir = Path(tmp)
        rundir.chmod(0o755)  # Dovecot's auth and mail processes read below it
        files = bench.build_run(rundir, data)
        rawdir = rundir / "raw"
        rawdir.mkdir()
        imap = a.upstream == "imap"
        dovecot = Dovecot("dovecot", rundir, files["passwd"], files["root-dovecot"], imap=imap)
        dovecot.start()
        store = (f"imap:upstream=imap://127.0.0.1:{dovecot.imap_port}" if imap
                 else f"proxy:upstream=pop3://127.0.0.1:{dovecot.port}")
        results["store"] = store.split(":")[0]
        proxy = ProxyPopgate("popgate-proxy", a.twistd, rundir, files["passwd"], files["root-popgate"],
                             store=store)
        try:
            proxy.start()
            n = 0
            for kind in FIGURES:
                runs: dict[str, list] = {"popgate": [], "dovecot": []}
                for s in (proxy, dovecot):  # warm both
                    n += 1
                    measure(kind, s, dovecot, files, 1.0, rawdir, n)
                for rep in range(reps):
                    for label, s in (("popgate", proxy), ("dovecot", dovecot)):
                        n += 1
                        rec = measure(kind, s, dovecot, files, duration, rawdir, n)
                        runs[label].append(rec)
                        shown = {k: rec.get(k) for k, _ in FIGURES[kind]}
                        print(f"{time.strftime('%H:%M:%S')} {kind} {s.name} #{rep + 1}: {shown}"
                              f" errors {rec.get('errors', rec.get('error'))}", flush=True)
                        time.sleep(1.0)
                results["runs"][kind] = runs
            if a.profile:
                results["profile"] = profile(proxy, dovecot, files, duration, rawdir)
        finally:
            proxy.stop()
            dovecot.stop()
    print(f"\nDovecot {version}; medians of {reps}; popgate ({a.upstream} upstream) -> Dovecot"
          " vs Dovecot POP3 direct\n")
    print("| scenario | popgate -> Dovecot | Dovecot direct | ratio |")
    print("|---|---:|---:|---:|")
    for kind, figures in FIGURES.items():
        for key, title in figures:
            def med(label: str) -> float | None:
                values = [r[key] for r in results["runs"][kind][label] if r.get(key) is not None]
                return statistics.median(values) if values else None
            p, d = med("popgate"), med("dovecot")
            ratio = f"{p / d:.2f}" if p and d else "-"
            print(f"| {title} | {p} | {d} | {ratio} |")
    out = HERE / "results" / f"proxy-{a.upstream}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
