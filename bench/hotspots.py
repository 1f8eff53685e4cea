#!/usr/bin/env python3
"""hotspots.py - summarize a py-spy raw (collapsed-stack) profile.

    py-spy record --pid PID -F -t -f raw -o prof.txt
    python bench/hotspots.py prof.txt [--rate 250 --seconds 8]

Prints, over all busy samples (samples whose top frame is a wait - a pool
thread on its queue, the reactor in epoll - are dropped): the busiest threads, the functions with
the most samples at the top of the stack ("self"), and popgate's own
functions by inclusive samples ("total": the function or anything it
calls).  With --rate and --seconds, thread samples are also shown as a
share of wall time (how busy the reactor thread was).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Frames that are on every reactor or pool-thread stack; inclusive figures
# for them say nothing.  Matched on the last component of the function name.
_BORING_NAMES = frozenset((
    "<module>", "runApp", "run", "startReactor", "mainLoop", "_bootstrap", "_bootstrap_inner",
    "doPoll", "_doReadOrWrite", "callWithLogger", "callWithContext", "runReactorWithLogging",
    "postApplication", "work", "inContext", "doWork", "_runWithContext", "_inlineCallbacks",
    "_runCallbacks", "callback", "_startRunCallbacks", "runWithWarningsSuppressed", "main",
    "run_module", "_run_module_as_main", "_run_code", "<lambda>"))


def boring(frame: str) -> bool:
    func = frame.split(" (", 1)[0]
    return func.rsplit(".", 1)[-1] in _BORING_NAMES


# Top-of-stack frames that mean "waiting", which py-spy does not always
# recognise as idle: a pool thread blocked on its queue, the reactor in epoll.
_IDLE_LEAF = re.compile(r"^(Condition\.wait|Event\.wait|Queue\.get|\S*doPoll|"
                        r"Thread\._wait_for_tstate_lock|select|poll) ")


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    f = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in f:
            f = f.split(marker, 1)[1]
            if marker == "/lib/python3":
                f = "stdlib/" + f.split("/", 1)[-1]
    line = m.group("line")
    return f"{m.group('func')} ({f}{':' + line if line else ''})"


def load(path: str) -> list[tuple[str, list[str], int]]:
    out = []
    with open(path, errors="replace") as fh:
        for ln in fh:
            ln = ln.rstrip("\n")
            if not ln:
                continue
            stack, _, n = ln.rpartition(" ")
            try:
                count = int(n)
            except ValueError:
                continue
            frames = stack.split(";")
            thread = frames[0] if frames and frames[0].startswith("thread (") else ""
            if thread:
                frames = frames[1:]
            out.append((thread, [short(f) for f in frames], count))
    return out


def summarize(path: str, top: int = 12, rate: float = 0, seconds: float = 0) -> dict:
    stacks = load(path)
    waiting = sum(c for _, f, c in stacks if f and _IDLE_LEAF.match(f[-1]))
    stacks = [(t, f, c) for t, f, c in stacks if f and not _IDLE_LEAF.match(f[-1])]
    total = sum(c for _, _, c in stacks) or 1
    threads: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for thread, frames, c in stacks:
        name = thread.split(": ", 1)[-1] if thread else "?"
        threads[name] += c
        if frames:
            self_[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    pct = lambda c: round(100.0 * c / total, 1)
    wall = rate * seconds
    res = {
        "file": path, "samples": total, "waiting_samples_dropped": waiting,
        "threads": [{"thread": t, "samples": c, "pct": pct(c),
                     **({"busy_pct_of_wall": round(100.0 * c / wall, 1)} if wall else {})}
                    for t, c in threads.most_common(6)],
        "self": [{"function": f, "pct": pct(c)} for f, c in self_.most_common(top)],
        "total_popgate": [{"function": f, "pct": pct(c)} for f, c in incl.most_common()
                          if "popgate/" in f and not boring(f)][:top],
        "total_other": [{"function": f, "pct": pct(c)} for f, c in incl.most_common()
                        if "popgate/" not in f and not boring(f) and pct(c) < 95][:top],
    }
    return res


def to_text(s: dict, title: str = "", top: int = 0) -> str:
    """Markdown tables; `top` > 0 keeps only that many rows per table."""
    if top:
        s = dict(s, **{k: s[k][:top] for k in ("self", "total_popgate", "total_other")})
    out = [f"### {title or s['file']}",
           f"{s['samples']} busy samples ({s.get('waiting_samples_dropped', 0)} waiting samples dropped: "
           "pool threads on their queue, the reactor in epoll); % are of busy samples", "",
           "threads: " + ", ".join(
               f"{t['thread']} {t['pct']}%" + (f" (busy {t['busy_pct_of_wall']}% of wall)"
                                              if "busy_pct_of_wall" in t else "")
               for t in s["threads"]), ""]
    out.append("| self % | function (top of stack) |")
    out.append("|---:|---|")
    out += [f"| {r['pct']} | `{r['function']}` |" for r in s["self"]]
    out.append("")
    out.append("| total % | popgate function (inclusive) |")
    out.append("|---:|---|")
    out += [f"| {r['pct']} | `{r['function']}` |" for r in s["total_popgate"]]
    out.append("")
    out.append("| total % | other function (inclusive) |")
    out.append("|---:|---|")
    out += [f"| {r['pct']} | `{r['function']}` |" for r in s["total_other"]]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", nargs="+")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    for path in a.raw:
        s = summarize(path, a.top, a.rate, a.seconds)
        print(json.dumps(s, indent=1) if a.json else to_text(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
