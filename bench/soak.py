"""
Soak test: many concurrent POP3 clients with random drops against a real
C{twistd -n popgate}, then proof that nothing was lost, nothing stayed
locked and the server went back to its idle size.

    .venv/bin/python bench/soak.py --clients 500 --seconds 300
    .venv/bin/python bench/soak.py --seconds 60      # what CI runs

It makes a throwaway Maildir tree (users x messages of 1 KB-200 KB, LF and
CRLF, dot-lines, some without a final newline), starts its own popgate on a
free 127.0.0.1 port and runs up to C{--clients} sessions at once from this
one process (asyncio): login, STAT/LIST/UIDL, RETR (checked byte for byte
and against LIST), DELE, then QUIT, a drop mid-RETR, a drop after DELE, a
drop before QUIT, or a half-close after QUIT (shutdown of the write side,
then every reply read).  New mail is delivered the Maildir way meanwhile.

Accounting: a message may be gone only if a QUIT whose C{+OK} was read
deleted it, and must be gone if one did; a QUIT whose reply was never read
leaves its deletions open either way.  Exit 0 when every check holds, else
one line per kind of problem and exit 1.  Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import re
import resource
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.popgate_server import PopgateProcess, run_twistd

PASSWORD_PREFIX = "soak-pw-"
READ_LIMIT = 4 << 20  # the largest RETR reply, with room to spare
OUTCOMES = {  # what a session does after its DELEs, and how often
    "quit": 35,
    "drop-mid-retr": 15,
    "drop-after-dele": 15,
    "drop-before-quit": 15,
    "half-close-quit": 20,
}


# ------------------------------------------------------------------ the mail

@dataclass(slots=True)
class Message:
    size: int          # what LIST must say: octets with every LF as CRLF
    digest: bytes      # sha1 of the exact RETR body, terminator included
    final_newline: bool


def text_pool(rng: random.Random) -> tuple[bytes, list[int]]:
    """~400 KB of text lines, some starting with dots, and the line starts."""
    alphabet = "abcdefghijklmnopqrstuvwxyz      ,.;ABCDEFGH0123456789"
    lines = []
    for _ in range(6000):
        roll = rng.random()
        if roll < 0.03:
            lines.append(".")
        elif roll < 0.06:
            lines.append("..")
        elif roll < 0.11:
            lines.append("." + "".join(rng.choices(alphabet, k=rng.randint(1, 70))))
        elif roll < 0.14:
            lines.append("")
        else:
            lines.append("".join(rng.choices(alphabet, k=rng.randint(10, 120))))
    pool = ("\n".join(lines) + "\n").encode()
    starts = [0] + [m.end() for m in re.finditer(rb"\n", pool)][:-1]
    return pool, starts


def normalized(data: bytes) -> bytes:
    """Every line end as CRLF (the text pool has no bare CR)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire(data: bytes) -> bytes:
    """What RETR must send: CRLF, dot-stuffed, a final CRLF, the terminator
    (tests.pop3_oracle.wire, without its regular expressions: 5 x faster)."""
    lines = normalized(data).split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


class MailMaker:
    """Messages of mixed shapes, written into Maildirs the way an MTA does."""

    def __init__(self, root: str, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.pool, self.starts = text_pool(rng)
        self.seq = 0

    def make(self, user: str, stamp: int) -> tuple[str, bytes, Message]:
        rng = self.rng
        self.seq += 1
        base = f"{stamp}.M{self.seq}P{os.getpid()}.soak"
        size = int(math.exp(rng.uniform(math.log(1024), math.log(200 * 1024))))
        head = (f"From: soak@example.test\nTo: {user}@example.test\n"
                f"Subject: soak {self.seq}\nMessage-ID: <{base}@soak>\n\n").encode()
        room = max(size - len(head), 1)
        limit = len(self.pool) - room
        start = self.starts[min(rng.randrange(len(self.starts)), len(self.starts) - 1)]
        start = min(start, max(limit, 0))
        data = head + self.pool[start:start + room]
        if rng.random() < 0.15:  # no final newline
            data = data.rstrip(b"\n")
        elif not data.endswith(b"\n"):
            data += b"\n"
        if rng.random() < 0.5:
            data = normalized(data)  # CRLF on disk, as some MTAs write
        final_newline = data.endswith(b"\n")
        body = wire(data)
        info = Message(len(normalized(data)), hashlib.sha1(body).digest(), final_newline)
        if rng.random() < 0.3:
            base += f",W={info.size}"  # the size in the name, as Dovecot writes it
        return base, data, info

    def write(self, user: str, base: str, data: bytes) -> None:
        """tmp/, then a rename into new/: readers never see half a message."""
        tmp = os.path.join(self.root, user, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.root, user, "new", base))


# ------------------------------------------------------------------ the books

@dataclass
class Books:
    """What the clients know: every message written, every deletion seen."""

    messages: dict[str, dict[str, Message]] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)     # by an answered QUIT
    ambiguous: set[tuple[str, str]] = field(default_factory=set)   # QUIT sent, reply unread
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    retrieved: int = 0
    retrieved_bytes: int = 0
    delivered: int = 0
    login_ms: list[float] = field(default_factory=list)     # connect .. PASS answered
    greeting_ms: list[float] = field(default_factory=list)  # connect .. greeting

    def problem(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        self.examples.setdefault(kind, example)

    def present(self, user: str) -> int:
        return sum(1 for base in self.messages[user]
                   if (user, base) not in self.deleted and (user, base) not in self.ambiguous)


class SessionError(Exception):
    """A session went wrong: C{kind} is the problem's name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Session:
    """One POP3 connection, every read bounded by the step timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.step = "greeting"

    async def _read(self, until: bytes) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.readuntil(until), self.timeout)
        except TimeoutError:
            raise SessionError("timeout", f"no answer in {self.timeout:g}s at {self.step}") from None
        except asyncio.IncompleteReadError as e:
            raise SessionError("eof", f"server closed the connection at {self.step}"
                               f" after {len(e.partial)} bytes") from None
        except ConnectionError as e:
            raise SessionError("reset", f"{e.__class__.__name__} at {self.step}") from None

    async def line(self) -> bytes:
        return (await self._read(b"\r\n"))[:-2]

    async def multi(self) -> list[bytes]:
        """A short multi-line listing (LIST, UIDL), unstuffed."""
        lines = []
        while (item := await self.line()) != b".":
            lines.append(item[1:] if item.startswith(b".") else item)
        return lines

    async def cmd(self, text: bytes, step: str) -> bytes:
        self.step = step
        self.writer.write(text + b"\r\n")
        return await self.line()

    def drop(self, reset: bool) -> None:
        """Close at once; with C{reset}, an RST instead of a FIN."""
        if reset:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()


def unstuffed_length(body: bytes) -> int:
    """Octets of a RETR body without its terminator and dot-stuffing."""
    content = body[:-3]
    return len(content) - len(re.findall(rb"(?:^|\r\n)\.", content))


# ------------------------------------------------------------------ a client

class Client:
    def __init__(self, number: int, args: argparse.Namespace, books: Books, port: int,
                 users: list[str]) -> None:
        self.rng = random.Random(args.seed * 100_003 + number)
        self.args = args
        self.books = books
        self.port = port
        self.users = users

    async def run(self, deadline: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, min(2.0, self.args.seconds / 4)))
        while time.monotonic() < deadline:
            pause = await self.session()
            await asyncio.sleep(pause)

    async def session(self) -> float:
        """One session; returns how long to wait before the next."""
        books, rng = self.books, self.rng
        user = rng.choice(self.users)
        outcome = rng.choices(list(OUTCOMES), weights=list(OUTCOMES.values()))[0]
        began = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=READ_LIMIT),
                self.args.step_timeout)
        except (TimeoutError, OSError) as e:
            books.problem("connect", f"cannot connect: {e!r}")
            return 0.5
        s = Session(reader, writer, self.args.step_timeout)
        sent: list[str] = []      # uids whose DELE was sent
        marked: list[str] = []    # uids whose DELE got +OK
        quit_sent = False
        try:
            greeting = await s.line()
            if not greeting.startswith(b"+OK"):
                raise SessionError("greeting", repr(greeting[:80]))
            books.greeting_ms.append((time.monotonic() - began) * 1000)
            if not (await s.cmd(b"USER " + user.encode(), "USER")).startswith(b"+OK"):
                raise SessionError("USER refused", user)
            reply = await s.cmd(b"PASS " + (PASSWORD_PREFIX + user).encode(), "PASS")
            if reply.startswith(b"-ERR [IN-USE]"):
                books.outcomes["in-use"] += 1
                await s.cmd(b"QUIT", "QUIT after IN-USE")
                s.drop(reset=False)
                return rng.uniform(0.1, 1.0)  # the other session is busy: back off
            if not reply.startswith(b"+OK"):
                raise SessionError("login refused", f"{user}: {reply[:80]!r}")
            books.login_ms.append((time.monotonic() - began) * 1000)
            listing = await self.listing(s, user)
            numbers = list(listing)
            if outcome == "drop-mid-retr" and not numbers:
                outcome = "quit"  # nothing to retrieve
            for number in rng.sample(numbers, min(len(numbers), rng.randint(0, 3))):
                await self.retr(s, user, number, listing[number])
            if outcome == "drop-mid-retr":
                number = rng.choice(numbers)
                s.step = "RETR (to drop)"
                s.writer.write(b"RETR %d\r\n" % number)
                await s.line()
                part = rng.randint(0, listing[number][1].size // 2)
                if part:
                    await asyncio.wait_for(s.reader.readexactly(part), s.timeout)
                s.drop(reset=rng.random() < 0.5)
                books.outcomes[outcome] += 1
                return rng.uniform(0, 0.1)
            dele = rng.choices((0, 1, 2, 3), weights=(6, 3, 1, 0))[0]
            doomed = rng.sample(numbers, min(len(numbers), dele))
            if outcome == "half-close-quit" and rng.random() < 0.5:
                # nc -N style: everything in one write, then EOF, then read.
                s.step = "pipelined DELE/QUIT + half-close"
                s.writer.write(b"".join(b"DELE %d\r\n" % n for n in doomed) + b"QUIT\r\n")
                sent = [listing[n][0] for n in doomed]
                quit_sent = True
                s.writer.write_eof()
                for n in doomed:
                    if (await s.line()).startswith(b"+OK"):
                        marked.append(listing[n][0])
                await self.quit_reply(s, user, marked, outcome)
                return rng.uniform(0, 0.1)
            for n in doomed:
                sent.append(listing[n][0])
                if (await s.cmd(b"DELE %d" % n, "DELE")).startswith(b"+OK"):
                    marked.append(listing[n][0])
                else:
                    raise SessionError("DELE refused", f"{user} DELE {n}")
            if outcome in ("drop-after-dele", "drop-before-quit"):
                if outcome == "drop-before-quit":
                    await s.cmd(b"NOOP", "NOOP")
                s.drop(reset=rng.random() < 0.5)
                books.outcomes[outcome] += 1
                return rng.uniform(0, 0.1)
            s.step = "QUIT"
            s.writer.write(b"QUIT\r\n")
            quit_sent = True
            if outcome == "half-close-quit":
                s.writer.write_eof()
            await self.quit_reply(s, user, marked, outcome)
            return rng.uniform(0, 0.1)
        except SessionError as e:
            kind = e.kind
            if outcome == "half-close-quit" and quit_sent:
                kind = f"half-close: {kind}"
            books.problem(kind, f"{user}: {e}")
            books.outcomes["failed"] += 1
            if quit_sent:
                books.ambiguous.update((user, uid) for uid in sent)
            s.drop(reset=False)
            return 0.2
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            books.problem("connection or bad reply", f"{user} at {s.step}: {e!r}")
            books.outcomes["failed"] += 1
            if quit_sent:
                books.ambiguous.update((user, uid) for uid in sent)
            s.drop(reset=False)
            return 0.2

    async def listing(self, s: Session, user: str) -> dict[int, tuple[str, Message]]:
        """STAT, LIST and UIDL, checked against each other and the books."""
        books = self.books
        stat = (await s.cmd(b"STAT", "STAT")).split()
        if stat[:1] != [b"+OK"] or len(stat) != 3:
            raise SessionError("STAT", f"{user}: {stat!r}")
        if not (await s.cmd(b"LIST", "LIST")).startswith(b"+OK"):
            raise SessionError("LIST", user)
        sizes = {int(n): int(octets) for n, octets in (item.split() for item in await s.multi())}
        if not (await s.cmd(b"UIDL", "UIDL")).startswith(b"+OK"):
            raise SessionError("UIDL", user)
        uids = {int(n): uid.decode() for n, uid in (item.split() for item in await s.multi())}
        if int(stat[1]) != len(sizes) or int(stat[2]) != sum(sizes.values()) or set(sizes) != set(uids):
            raise SessionError("STAT/LIST/UIDL disagree", f"{user}: {stat!r} vs {len(sizes)} listed")
        listing = {}
        known = books.messages[user]
        for number, uid in uids.items():
            info = known.get(uid)
            if info is None:
                raise SessionError("unknown message listed", f"{user}: {uid}")
            if (user, uid) in books.deleted:
                raise SessionError("deleted message listed again", f"{user}: {uid}")
            if sizes[number] != info.size:
                raise SessionError("LIST size wrong", f"{user}: {uid} {sizes[number]} != {info.size}")
            listing[number] = (uid, info)
        return listing

    async def retr(self, s: Session, user: str, number: int, entry: tuple[str, Message]) -> None:
        uid, info = entry
        reply = await s.cmd(b"RETR %d" % number, "RETR")
        if not reply.startswith(b"+OK"):
            raise SessionError("RETR refused", f"{user}: RETR {number} {reply[:80]!r}")
        body = await s._read(b"\r\n.\r\n")
        expected = info.size + (0 if info.final_newline else 2)  # the CRLF popgate adds
        if unstuffed_length(body) != expected:
            raise SessionError("RETR size differs from LIST",
                               f"{user}: {uid} {unstuffed_length(body)} != {expected}")
        if hashlib.sha1(body).digest() != info.digest:
            raise SessionError("RETR content wrong", f"{user}: {uid}")
        self.books.retrieved += 1
        self.books.retrieved_bytes += len(body)

    async def quit_reply(self, s: Session, user: str, marked: list[str], outcome: str) -> None:
        """Read QUIT's answer: only a read C{+OK} makes the deletions certain."""
        s.step = "QUIT reply"
        reply = await s.line()
        if not reply.startswith(b"+OK"):
            self.books.ambiguous.update((user, uid) for uid in marked)
            raise SessionError("QUIT not +OK", f"{user}: {reply[:80]!r}")
        self.books.deleted.update((user, uid) for uid in marked)
        self.books.outcomes[outcome] += 1
        if outcome == "half-close-quit":
            try:
                rest = await asyncio.wait_for(s.reader.read(100), s.timeout)
            except (TimeoutError, ConnectionError):
                rest = b"?"
            if rest:
                self.books.problem("half-close: no EOF after QUIT", f"{user}: {rest[:40]!r}")
        s.drop(reset=False)


# ------------------------------------------------------------------ the server

def proc_figures(pid: int, memory: str = "VmRSS:") -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of a process; VmHWM: for its peak RSS."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(memory):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_options() -> list[str]:
    """Options of the hostile-traffic work, added when this popgate has them."""
    helptext = run_twistd(["popgate", "--help"]).stdout
    extra = []
    if "--exempt-networks" in helptext:
        extra += ["--exempt-networks", "127.0.0.0/8"]
    return extra


async def deliver(maker: MailMaker, books: Books, users: list[str], target: int,
                  rate: float, deadline: float) -> None:
    """New mail during the run, keeping each mailbox near its first size."""
    rng = random.Random(maker.rng.random())
    tick = 0.05
    while time.monotonic() < deadline:
        await asyncio.sleep(tick)
        for _ in range(max(1, round(rate * tick))):
            user = rng.choice(users)
            if books.present(user) >= target:
                continue
            base, data, info = maker.make(user, int(time.time()))
            books.messages[user][base] = info  # before the rename: a LIST may see it at once
            await asyncio.to_thread(maker.write, user, base, data)
            books.delivered += 1


async def sample(pid: int, peak: list[int], stop: asyncio.Event, history: list[int]) -> None:
    """Peak RSS and descriptors, and the RSS every half second."""
    while not stop.is_set():
        try:
            rss, fds = proc_figures(pid)
        except OSError:
            return
        history.append(rss)
        peak[0], peak[1] = max(peak[0], rss), max(peak[1], fds)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def login_once(port: int, user: str, timeout: float) -> tuple[bytes, int | None]:
    """Log in, STAT, QUIT: (the PASS reply, the message count)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    s = Session(reader, writer, timeout)
    try:
        await s.line()
        await s.cmd(b"USER " + user.encode(), "USER")
        reply = await s.cmd(b"PASS " + (PASSWORD_PREFIX + user).encode(), "PASS")
        count = None
        if reply.startswith(b"+OK"):
            count = int((await s.cmd(b"STAT", "STAT")).split()[1])
        await s.cmd(b"QUIT", "QUIT")
        return reply, count
    finally:
        s.drop(reset=False)


def on_disk(root: str, user: str) -> tuple[Counter[str], list[str]]:
    """Base names in new/ and cur/ (with their counts), and leftovers in tmp/."""
    names: Counter[str] = Counter()
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, user, sub)):
            names[name.split(":", 1)[0]] += 1
    return names, os.listdir(os.path.join(root, user, "tmp"))


# ------------------------------------------------------------------ the run

def build_site(root: str, args: argparse.Namespace) -> tuple[list[str], MailMaker, Books, str]:
    rng = random.Random(args.seed)
    maker = MailMaker(os.path.join(root, "mail"), rng)
    books = Books()
    users = [f"user{i:03d}" for i in range(args.users)]
    passwd = os.path.join(root, "passwd")
    with open(passwd, "w") as f:
        f.writelines(f"{user}:{{PLAIN}}{PASSWORD_PREFIX}{user}::::::\n" for user in users)
    stamp = int(time.time()) - 86400
    for user in users:
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maker.root, user, sub))
        books.messages[user] = {}
        for i in range(args.messages):
            base, data, info = maker.make(user, stamp + i)
            maker.write(user, base, data)
            books.messages[user][base] = info
    return users, maker, books, passwd


async def load(args: argparse.Namespace, server: PopgateProcess, pid: int, users: list[str],
               maker: MailMaker, books: Books, peak: list[int], history: list[int]) -> float:
    began = time.monotonic()
    deadline = began + args.seconds
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, peak, stop, history))
    tasks = [asyncio.create_task(Client(i, args, books, server.port, users).run(deadline))
             for i in range(args.clients)]
    tasks.append(asyncio.create_task(
        deliver(maker, books, users, args.messages, args.deliver_rate, deadline)))
    # Each client stops starting sessions at the deadline; one running then
    # ends within a few step timeouts.  Past that it is a hang.
    done, pending = await asyncio.wait(tasks, timeout=args.seconds + 4 * args.step_timeout + 10)
    for task in pending:
        task.cancel()
    if pending:
        books.problem("client hung", f"{len(pending)} clients still running after the deadline")
        await asyncio.wait(pending, timeout=5)
    for task in done:
        if task.exception() is not None:
            books.problem("client crashed", repr(task.exception()))
    stop.set()
    await sampler
    return time.monotonic() - began


async def settle(pid: int, idle_fds: int, slack: int) -> tuple[int, int]:
    """Figures once the server has closed the clients' connections (a few s)."""
    end = time.monotonic() + 10
    fds = proc_figures(pid)[1]
    while fds > idle_fds + slack and time.monotonic() < end:
        await asyncio.sleep(0.5)
        fds = proc_figures(pid)[1]
    await asyncio.sleep(1)
    return proc_figures(pid)


def account(books: Books, root: str, users: list[str]) -> dict[str, int]:
    """Every message: present, or deleted by an answered QUIT."""
    tally: Counter[str] = Counter()
    for user in users:
        names, leftovers = on_disk(root, user)
        if leftovers:
            books.problem("files left in tmp/", f"{user}: {leftovers[:3]}")
        for base, count in names.items():
            if count > 1:
                books.problem("duplicated message", f"{user}: {base} x{count}")
            if base not in books.messages[user]:
                books.problem("unknown message on disk", f"{user}: {base}")
        for base in books.messages[user]:
            key = (user, base)
            if key in books.deleted:
                tally["deleted"] += 1
                if base in names:
                    books.problem("deleted by an answered QUIT but still present", f"{user}: {base}")
            elif key in books.ambiguous:
                tally["ambiguous-gone" if base not in names else "ambiguous-present"] += 1
            elif base in names:
                tally["present"] += 1
            else:
                books.problem("LOST (gone without an answered QUIT)", f"{user}: {base}")
    return tally


def traceback_excerpt(log_path: str) -> str | None:
    with open(log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    pos = text.find("Traceback (most recent call last)")
    if pos < 0:
        return None
    count = text.count("Traceback (most recent call last)")
    lines = text[pos:].splitlines()[:12]
    return f"{count} in the log; first: " + " | ".join(line.strip() for line in lines)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args: argparse.Namespace, root: str) -> int:
    t0 = time.monotonic()
    users, maker, books, passwd = build_site(root, args)
    log_path = os.path.join(root, "popgate.log")
    server_args = ["--auth", f"passwd-file:{passwd}",
                   "--store", f"maildir:{maker.root}/%u"] + server_options()
    print(f"soak: {args.users} users x {args.messages} messages made in {time.monotonic() - t0:.1f}s;"
          f" popgate {' '.join(server_args[4:]) or '(no extra options)'}", flush=True)
    server = PopgateProcess(server_args, log_path=log_path)
    try:
        server.__enter__()
    except RuntimeError as e:
        last = str(e).strip().splitlines()
        print(f"FAIL: popgate did not start: {last[0]} {last[-1] if len(last) > 1 else ''}")
        return 1
    try:
        process = server.process
        assert process is not None
        pid = process.pid
        cold = proc_figures(pid)
        # Warm-up: one login per user, so the idle figures include what a
        # server keeps by design (snapshots, the auth cache, imports), and a
        # growth after the load is the load's.
        for user in users:
            await login_once(server.port, user, args.step_timeout)
        await asyncio.sleep(1)
        idle = proc_figures(pid)
        peak = [idle[0], idle[1]]
        cpu_before = cpu_seconds(pid)
        history: list[int] = []
        duration = await load(args, server, pid, users, maker, books, peak, history)
        server_cpu = cpu_seconds(pid) - cpu_before if process.poll() is None else 0.0
        if process.poll() is not None:
            books.problem("server died", f"exit status {process.returncode}")
            final = (0, 0)
        else:
            final = await settle(pid, idle[1], args.fd_slack)
            peak[0] = max(peak[0], proc_figures(pid, "VmHWM:")[0])
            for user in users:  # no mailbox left locked, and STAT agrees with the disk
                try:
                    reply, count = await login_once(server.port, user, args.step_timeout)
                except (TimeoutError, OSError, SessionError) as e:
                    books.problem("final login failed", f"{user}: {e!r}")
                    continue
                if not reply.startswith(b"+OK"):
                    books.problem("mailbox still locked" if b"[IN-USE]" in reply
                                  else "final login refused", f"{user}: {reply[:80]!r}")
                elif count != sum(on_disk(maker.root, user)[0].values()):
                    books.problem("STAT differs from the disk", f"{user}: {count}")
    finally:
        server.stop()  # by its PID, whatever happened
    tally = account(books, maker.root, users)
    excerpt = traceback_excerpt(log_path)
    if excerpt:
        books.problem("traceback in the server log", excerpt)

    rss_limit = idle[0] + max(args.rss_slack_mb * 1024, idle[0] * args.rss_slack_ratio)
    if final[0] > rss_limit:
        books.problem("RSS not back near idle",
                      f"{final[0] // 1024} MB after the load, idle {idle[0] // 1024} MB,"
                      f" limit {rss_limit // 1024:.0f} MB")
    if final[1] > idle[1] + args.fd_slack:
        books.problem("descriptors not back near idle",
                      f"{final[1]} open after the load, idle {idle[1]}, limit {idle[1] + args.fd_slack}")

    sessions = sum(books.outcomes.values())
    mb = 1024
    print(f"soak: {sessions} sessions in {duration:.1f}s, {args.clients} clients on {args.users} users;"
          f" outcomes " + " ".join(f"{k}={v}" for k, v in sorted(books.outcomes.items())))
    print(f"soak: retrieved {books.retrieved} messages ({books.retrieved_bytes / 1e6:.1f} MB),"
          f" deleted {tally['deleted']} (answered QUIT), ambiguous {tally['ambiguous-gone']} gone"
          f" / {tally['ambiguous-present']} kept, delivered {books.delivered},"
          f" present {tally['present']}")
    for name, ms in (("greeting", books.greeting_ms), ("login", books.login_ms)):
        print(f"soak: {name} ms p50 {percentile(ms, 0.5):.1f} p99 {percentile(ms, 0.99):.1f}"
              f" max {max(ms, default=0):.1f}" + (f" mean {statistics.fmean(ms):.1f}" if ms else ""))
    print(f"soak: server RSS MB cold {cold[0] / mb:.1f} idle {idle[0] / mb:.1f} peak {peak[0] / mb:.1f}"
          f" final {final[0] / mb:.1f}; fds cold {cold[1]} idle {idle[1]} peak {peak[1]}"
          f" final {final[1]}; server CPU {server_cpu:.1f}s; total {time.monotonic() - t0:.1f}s")
    if history:  # a leak climbs quarter after quarter; fragmentation levels off
        quarters = [history[min(len(history) - 1, len(history) * q // 4)] for q in (1, 2, 3, 4)]
        print("soak: server RSS MB at each quarter of the load "
              + " ".join(f"{rss / mb:.1f}" for rss in quarters))
    for kind, count in sorted(books.problems.items()):
        print(f"FAIL: {kind} (x{count}): {books.examples[kind]}")
    print("soak: " + ("FAILED" if books.problems else "OK"))
    return 1 if books.problems else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500, help="concurrent clients (default 500)")
    p.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--messages", type=int, default=40, help="messages per user at the start")
    p.add_argument("--deliver-rate", type=float, default=150, help="deliveries per second at most")
    p.add_argument("--step-timeout", type=float, default=30, help="seconds one reply may take")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-slack-mb", type=float, default=30)
    p.add_argument("--rss-slack-ratio", type=float, default=0.5)
    p.add_argument("--fd-slack", type=int, default=10)
    p.add_argument("--keep", action="store_true", help="keep the Maildirs and the server log")
    args = p.parse_args(argv)
    if not (1 <= args.clients <= 5000 and 0 < args.seconds <= 3600 and args.users >= 1):
        p.error("--clients 1..5000, --seconds up to 3600, --users at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients * 2 + 256  # our sockets, and the server's (it inherits the limit)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    root = tempfile.mkdtemp(prefix="popgate-soak-")
    try:
        return asyncio.run(main_async(args, root))
    finally:
        if args.keep:
            print(f"soak: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
