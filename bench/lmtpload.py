#!/usr/bin/env python3
"""LMTP delivery load (stdlib only): C connections, each delivering up to N
messages, one recipient each, one command at a time (no pipelining, the
same for every server), bounded by a count and a duration.

    python3 lmtpload.py --port PORT -c 4 -n 200 -d 20 --users 20 --json out.json

Each connection: greeting, LHLO, then per message MAIL FROM, RCPT TO, DATA,
the message, "." and the one per-recipient reply; a message counts once
that reply is 250.  Recipients go round-robin over --rcpt-fmt (l001 ...),
so the connections write to different mailboxes mostly.  The message is
--size octets of text with CRLF line ends, a unique Message-ID, no line
starting with ".".  Prints (and with --json appends) one JSON object:
deliveries, deliveries/s, latency per delivery (MAIL to the final reply)
p50/p99, errors and the client's own CPU %.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

now = time.monotonic


def message(i: int, size: int) -> bytes:
    head = (f"From: bench <sender@bench.test>\r\nTo: user@bench.test\r\n"
            f"Subject: lmtp load {i}\r\nMessage-ID: <lmtp-{os.getpid()}-{i}@bench.test>\r\n\r\n")
    line = "the quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def reply(self) -> str:
        """One (possibly multi-line) reply; its last line."""
        while True:
            line = (await self.r.readline()).decode("latin-1")
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != "-":
                return line.rstrip()

    async def cmd(self, line: str, want: str) -> None:
        self.w.write(line.encode() + b"\r\n")
        got = await self.reply()
        if not got.startswith(want):
            raise RuntimeError(f"{line.split()[0]}: {got}")


async def connection(a: argparse.Namespace, cid: int, deadline: float, out: dict) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 10)
    c = Conn(reader, writer)
    try:
        if not (await asyncio.wait_for(c.reply(), 10)).startswith("220"):
            raise RuntimeError("no 220 greeting")
        await asyncio.wait_for(c.cmd("LHLO bench.test", "250"), 10)
        for k in range(a.count):
            if now() >= deadline:
                break
            i = cid * a.count + k
            rcpt = a.rcpt_fmt.format(1 + i % a.users)
            t0 = now()
            try:
                await asyncio.wait_for(c.cmd("MAIL FROM:<sender@bench.test>", "250"), a.timeout)
                await asyncio.wait_for(c.cmd(f"RCPT TO:<{rcpt}>", "250"), a.timeout)
                await asyncio.wait_for(c.cmd("DATA", "354"), a.timeout)
                writer.write(message(i, a.size) + b".\r\n")
                got = await asyncio.wait_for(c.reply(), a.timeout)
                if not got.startswith("250"):
                    raise RuntimeError(f"after DATA: {got}")
            except RuntimeError as e:
                out["errors"] += 1
                if len(out["errmsgs"]) < 5:
                    out["errmsgs"].append(str(e))
                await asyncio.wait_for(c.cmd("RSET", "250"), a.timeout)
                continue
            out["lat"].append(now() - t0)
            out["deliveries"] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def main_async(a: argparse.Namespace) -> dict:
    out: dict = {"deliveries": 0, "errors": 0, "errmsgs": [], "lat": []}
    c0, t0 = os.times(), now()
    deadline = t0 + a.duration
    res = await asyncio.gather(*(connection(a, i, deadline, out) for i in range(a.concurrency)),
                               return_exceptions=True)
    wall = max(now() - t0, 1e-9)
    c1 = os.times()
    for r in res:
        if isinstance(r, BaseException):
            out["errors"] += 1
            out["errmsgs"].append(f"connection: {type(r).__name__}: {r}"[:200])
    lat = sorted(out.pop("lat"))

    def pct(q: float) -> float | None:
        return round(1e3 * lat[min(len(lat) - 1, int(q / 100 * len(lat)))], 2) if lat else None
    return {"deliveries": out["deliveries"], "elapsed_s": round(wall, 3),
            "deliveries_per_s": round(out["deliveries"] / wall, 1),
            "lat_ms_p50": pct(50), "lat_ms_p99": pct(99), "errors": out["errors"],
            "errmsgs": out["errmsgs"][:5], "size": a.size, "connections": a.concurrency,
            "client_cpu_pct": round(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-c", "--concurrency", type=int, default=4)
    ap.add_argument("-n", "--count", type=int, default=200, help="messages per connection at most")
    ap.add_argument("-d", "--duration", type=float, default=20.0, help="seconds at most")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rcpt-fmt", default="l{:03d}@bench.test")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per command")
    ap.add_argument("--json")
    a = ap.parse_args()
    rec = asyncio.run(asyncio.wait_for(main_async(a), a.duration + 60))
    print(json.dumps(rec))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0 if rec["deliveries"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
