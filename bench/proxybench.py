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

popgate runs this tree's code (PYTHONPATH is set to it; the path is
printed).  --baseline REV adds a second proxy running the code of
commit REV (git archive into the run directory), measured in turn with
the other two: before/after figures under the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def code_env(tree: Path) -> dict:
    """The environment that makes twistd import popgate from C{tree}."""
    return dict(os.environ, PYTHONPATH=str(tree))


def code_path(twistd: str, env: dict) -> str:
    """Where twistd's Python finds popgate with C{env} (printed, to be sure)."""
    python = Path(twistd).with_name("python")
    r = subprocess.run([str(python), "-c", "import popgate; print(popgate.__file__)"], env=env,
                       capture_output=True, text=True, timeout=60, cwd="/")
    return r.stdout.strip() or r.stderr.strip()[-200:]


def export(rev: str, into: Path) -> Path:
    """Commit C{rev} of this repository's tree, unpacked under C{into}."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(bench.REPO), "archive", rev], check=True,
                             capture_output=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=120)
    return into


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


def profile(proxy, dovecot, files: dict, duration: float, rawdir: Path,
            kind: str = "retr10m") -> dict:
    """py-spy on popgate during a RETR run (10 MiB or 100 KB); the busiest functions."""
    import shutil
    import signal
    import subprocess

    import hotspots
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy not installed (pip install py-spy)"}
    raw = rawdir / f"proxy-{kind}.txt"
    p = subprocess.Popen([spy, "record", "--pid", str(proxy.pid), "-r", "250", "-f", "raw",
                          "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        measure(kind, proxy, dovecot, files, duration, rawdir, 999)
        secs = time.monotonic() - t0
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    kept = HERE / "results" / f"proxy-profile-{kind}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(raw, kept)  # the raw stacks (file paths say whose code ran)
    summary = dict(hotspots.summarize(str(kept), 15, 250, secs + 1.0), workload=kind)
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
    ap.add_argument("--profile-kind", choices=["retr10m", "retr100k"], default="retr10m",
                    help="the load run while profiling (default %(default)s)")
    ap.add_argument("--only", metavar="KINDS", default=",".join(FIGURES),
                    help="comma-separated loads to measure (default %(default)s)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also measure a proxy running commit REV's code, in turn with the others")
    a = ap.parse_args()
    reps, duration = (1, 2.0) if a.quick else (a.reps, 5.0)
    kinds = [k for k in a.only.split(",") if k]
    if unknown := set(kinds) - set(FIGURES):
        ap.error(f"unknown loads: {', '.join(sorted(unknown))}")
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
                             store=store, env=code_env(bench.REPO))
        servers = [("popgate", proxy)]
        if a.baseline:
            tree = export(a.baseline, rundir / "baseline")
            servers.append(("baseline", ProxyPopgate(
                "popgate-baseline", a.twistd, rundir, files["passwd"], files["root-popgate"],
                store=store, env=code_env(tree))))
            results["baseline"] = a.baseline
        for label, s in servers:
            print(f"{label}: popgate from {code_path(a.twistd, s.env)}", flush=True)
        servers.append(("dovecot", dovecot))
        try:
            for _, s in servers[:-1]:
                s.start()
            n = 0
            for kind in kinds:
                runs: dict[str, list] = {label: [] for label, _ in servers}
                for _, s in servers:  # warm them all
                    n += 1
                    measure(kind, s, dovecot, files, 1.0, rawdir, n)
                for rep in range(reps):
                    for label, s in servers:
                        n += 1
                        rec = measure(kind, s, dovecot, files, duration, rawdir, n)
                        runs[label].append(rec)
                        shown = {k: rec.get(k) for k, _ in FIGURES[kind]}
                        print(f"{time.strftime('%H:%M:%S')} {kind} {s.name} #{rep + 1}: {shown}"
                              f" errors {rec.get('errors', rec.get('error'))}", flush=True)
                        time.sleep(1.0)
                results["runs"][kind] = runs
            if a.profile:
                results["profile"] = profile(proxy, dovecot, files, duration, rawdir,
                                             a.profile_kind)
        finally:
            for _, s in servers:
                s.stop()
    labels = [label for label, _ in servers]
    print(f"\nDovecot {version}; medians of {reps}; popgate ({a.upstream} upstream) -> Dovecot"
          " vs Dovecot POP3 direct"
          + (f"; baseline: popgate at {a.baseline}" if a.baseline else "") + "\n")
    head = ["popgate -> Dovecot", "Dovecot direct", "ratio"]
    if a.baseline:
        head = ["popgate -> Dovecot", "baseline -> Dovecot", "Dovecot direct", "ratio",
                "baseline ratio", "popgate / baseline"]
    print("| scenario | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}" if x and y else "-"

    for kind in kinds:
        for key, title in FIGURES[kind]:
            def med(label: str) -> float | None:
                values = [r[key] for r in results["runs"][kind][label] if r.get(key) is not None]
                return statistics.median(values) if values else None
            got = {label: med(label) for label in labels}
            p, d = got["popgate"], got["dovecot"]
            cells = [p, d, ratio(p, d)]
            if a.baseline:
                b = got["baseline"]
                cells = [p, b, d, ratio(p, d), ratio(b, d), ratio(p, b)]
            print(f"| {title} | " + " | ".join(str(c) for c in cells) + " |")
    out = HERE / "results" / f"proxy-{a.upstream}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
