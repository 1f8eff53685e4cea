#!/usr/bin/env python3
"""popgate's own CPU per login, in process, without the network or a client.

    PYTHONPATH=. .venv/bin/python bench/loginpath.py              # 3 x 3000 sessions
    PYTHONPATH=. .venv/bin/python bench/loginpath.py --profile /tmp/login.pstats

bench/run.py's login10 measures the server's CPU per login through the
kernel, with a Python load generator on the same two cores and whatever
else runs on the machine: a figure that moves by 20 % from run to run.
This drives the same sessions as popbench's ``login`` (greeting, USER,
PASS, STAT, QUIT) through the server twistd builds from the same command
line (``build_server``: the listening factory with its connection limits,
the portal, the passwd-file checker with ``{PLAIN}`` passwords, the
Maildir store with its lock and size cache, the text log written to a
file at info), on the real reactor and its thread pool, with
``--concurrency`` sessions open at a time over 500 users of 10 messages
each (4 KB), as login10 does.  Only the socket is a fake: each session's
transport is a StringTransport whose writes answer the next command (one
command at a time, in a later reactor turn, as a client would).

It prints the process's CPU time (time.process_time: every thread, the
pool's too) per session for each run, and the median.  The kernel's part
of a real connection (accept, reads, writes, close: about a third of
login10's figure) is not in it; what popgate's code costs is, so a change
to the login path shows here at a few microseconds' resolution.

``--profile FILE`` writes a cProfile of one more run (the reactor thread
only) and prints its top functions.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

USERS = 500
MESSAGES = 10
DOMAIN = "bench.test"
PASSWORD = "benchpw"


def make_data(root: Path, users: int, messages: int, size: int) -> Path:
    """A passwd-file of {PLAIN} users and their Maildirs (mkmail.py's layout)."""
    body = (b"x" * 75 + b"\r\n") * (size // 77)
    lines = []
    for u in range(1, users + 1):
        name = f"u{u:04d}"
        lines.append(f"{name}@{DOMAIN}:{{PLAIN}}{PASSWORD}::::::")
        for sub in ("cur", "new", "tmp"):
            (root / "mail" / name / sub).mkdir(parents=True)
        for m in range(messages):
            msg = (b"From: a@example.org\r\nTo: %s@%s\r\nSubject: m%d\r\n\r\n"
                   % (name.encode(), DOMAIN.encode(), m)) + body
            file = f"{1767225600 + m}.M{m:06d}P1Q{m}.loginpath:2,"
            (root / "mail" / name / "cur" / file).write_bytes(msg)
    passwd = root / "passwd"
    passwd.write_text("\n".join(lines) + "\n")
    return passwd


_Wire = None  # the fake transport's class, made once the reactor is chosen


class Sessions:
    """Runs `total` scripted sessions, `concurrency` at a time."""

    SCRIPT = (b"USER %s\r\n", b"PASS " + PASSWORD.encode() + b"\r\n", b"STAT\r\n", b"QUIT\r\n")

    def __init__(self, reactor, factory, users: list[bytes], total: int, concurrency: int) -> None:
        from twisted.internet import defer
        self.reactor = reactor
        self.factory = factory
        self.users = users
        self.total = total
        self.concurrency = concurrency
        self.started = self.finished = self.errors = 0
        self.done: defer.Deferred = defer.Deferred()

    def start(self):
        for _ in range(min(self.concurrency, self.total)):
            self._open()
        return self.done

    def _open(self) -> None:
        from twisted.internet.address import IPv4Address
        n = self.started
        self.started += 1
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + n % 20000)
        wire = _Wire(self, self.users[n % len(self.users)], peer)
        wire.proto = self.factory.buildProtocol(peer)
        wire.proto.makeConnection(wire)

    def _closed(self, proto, wire) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        if wire.step != len(self.SCRIPT):
            self.errors += 1
        proto.connectionLost(Failure(ConnectionDone()))
        self.finished += 1
        if self.started < self.total:
            self._open()
        elif self.finished == self.total:
            self.done.callback(None)


def _wire_class():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    class Wire(StringTransport):
        """The client's side of one session: each complete reply sends the
        next command of the script, in a later reactor turn."""

        def __init__(self, sessions: Sessions, user: bytes, peer) -> None:
            super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 110), peerAddress=peer)
            self.sessions = sessions
            self.user = user
            self.step = -1  # the greeting comes first
            self.closed = False
            self.proto = None

        def write(self, data: bytes) -> None:
            s = self.sessions
            if not data.endswith(b"\r\n"):
                raise AssertionError(f"partial reply {data!r}")
            if not data.startswith(b"+OK"):
                s.errors += 1
            self.step += 1
            if self.step < len(s.SCRIPT):
                line = s.SCRIPT[self.step]
                if self.step == 0:
                    line = line % self.user
                s.reactor.callLater(0, self.proto.dataReceived, line)

        def loseConnection(self) -> None:
            if not self.closed:
                self.closed = True
                self.sessions.reactor.callLater(0, self.sessions._closed, self.proto, self)

        abortConnection = loseConnection

    return Wire


def build(tmp: Path, passwd: Path):
    """The listening factory of `twistd popgate` as bench/run.py starts it."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from popgate.build import build_server
    from popgate.logs import file_log
    from popgate.tap import parse_config
    config = parse_config([
        "--pop3", "tcp:0:interface=127.0.0.1", "--auth", f"passwd-file:{passwd}",
        "--store", f"maildir:{tmp}/mail/%n", "--max-connections-per-ip", "0",
        "--auth-cache-ttl", "0", "--auth-cache-negative-ttl", "0", "--hostname", "bench.test"])
    server = build_server(config, reactor)
    # twistd --logfile: popgate's text lines at info, to a file.
    log_file = open(tmp / "popgate.log", "a")
    globalLogBeginner.beginLoggingTo([file_log(log_file)], discardBuffer=True,
                                     redirectStandardIO=False)
    listener = next(s for s in server if s.name.startswith("pop3 "))
    return reactor, listener.factory


class GCMeter:
    """Time spent in the cyclic garbage collector, by generation."""

    def __init__(self) -> None:
        import gc
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.seconds[g] += time.perf_counter() - self._t0
            self.runs[g] += 1

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--sessions", type=int, default=3000,
                    help="sessions per run (%(default)s)")
    ap.add_argument("-c", "--concurrency", type=int, default=10,
                    help="sessions open at a time (%(default)s)")
    ap.add_argument("-r", "--runs", type=int, default=3,
                    help="measured runs (%(default)s), after one warm-up")
    ap.add_argument("--size", type=int, default=4096, help="message size (%(default)s)")
    ap.add_argument("--profile", metavar="FILE",
                    help="cProfile one more run into FILE and print its top")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    a = ap.parse_args(argv)
    if a.sessions <= 0 or a.sessions > 1_000_000:
        ap.error("--sessions: 1 to 1,000,000")
    tmp = Path(tempfile.mkdtemp(prefix="popgate-loginpath-"))
    try:
        passwd = make_data(tmp, USERS, MESSAGES, a.size)
        global _Wire
        _Wire = _wire_class()
        reactor, factory = build(tmp, passwd)
        users = [f"u{u:04d}@{DOMAIN}".encode() for u in range(1, USERS + 1)]
        results: list[float] = []
        meter = GCMeter()
        failures: list[str] = []

        def one(n: int, profiler=None):
            s = Sessions(reactor, factory, users, n, a.concurrency)
            c0, w0 = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            d = s.start()

            def done(_):
                if profiler is not None:
                    profiler.disable()
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                if s.errors:
                    failures.append(f"{s.errors} sessions failed")
                return cpu, wall, s
            return d.addCallback(done)

        async def drive():
            from twisted.internet import task
            await one(min(a.sessions, USERS))  # warm-up: every size cache and snapshot
            meter.reset()
            for i in range(a.runs):
                cpu, wall, s = await one(a.sessions)
                per = 1e6 * cpu / a.sessions
                results.append(per)
                print(f"run {i + 1}: {a.sessions} sessions, {per:.1f} us CPU per session, "
                      f"{a.sessions / wall:.0f} sessions/s", flush=True)
                await task.deferLater(reactor, 0.2, lambda: None)
            if a.profile:
                import cProfile
                prof = cProfile.Profile()
                await one(a.sessions, prof)
                prof.dump_stats(a.profile)
                import pstats
                pstats.Stats(a.profile).sort_stats("tottime").print_stats(30)

        from twisted.internet import defer

        def run():
            d = defer.Deferred.fromCoroutine(drive())
            d.addErrback(lambda f: failures.append(f.getTraceback()))
            d.addBoth(lambda _: reactor.stop())
        reactor.callWhenRunning(run)
        # A bound on the whole run, whatever happens.
        reactor.callLater(60 + a.sessions * (a.runs + 2) * 0.01, reactor.stop)
        reactor.run()
        if failures:
            print("\n".join(failures), file=sys.stderr)
            return 1
        if len(results) != a.runs:
            print("timed out", file=sys.stderr)
            return 1
        n = a.sessions * a.runs
        each = (f"gen{g} {meter.runs[g]} runs, {1e3 * meter.seconds[g] / max(meter.runs[g], 1):.2f}"
                " ms each" for g in range(3))
        print(f"garbage collector: {', '.join(each)}; "
              f"{1e6 * sum(meter.seconds) / n:.1f} us per session (wall time)")
        print(f"median: {statistics.median(results):.1f} us CPU per session "
              f"(min {min(results):.1f}, max {max(results):.1f}; concurrency {a.concurrency})")
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
