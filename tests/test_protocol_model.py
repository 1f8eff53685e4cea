"""
A stateful property test of the POP3 session against a model of a maildrop.

Any sequence of commands -- good and bad logins, every TRANSACTION command
with good, out-of-range and garbage arguments, unknown commands, lines at
and just over the length limits, QUIT -- sent pipelined in batches and split
at random byte boundaries (one C{dataReceived} per chunk), must get exactly
the model's replies: the status of every reply and what matters in it
(counts, sizes, UIDs, the exact dot-stuffed body of RETR and TOP), not its
human text.  QUIT commits exactly the messages marked for deletion; a
session that ends any other way (dropped, even mid-reply; half-closed;
timed out) deletes nothing; a failed login is answered only after the
failure delay, and commands sent behind it wait; the bad-command and
failed-login limits close the connection where the model says.

The transport is TCP-like: it pauses the streaming producer the protocol
registers (if any) once a few unread octets were written, and resumes it
after the test read them; input is fed only while the protocol lets the
transport read (or, in some runs, regardless).  So the test holds with or
without back-pressure on replies.  The model is written from the rules
(RFC 1939 and Dovecot's), not from the code: stuffing is computed line by
line, where the server's encoder works a chunk at a time.
"""

from __future__ import annotations

import dataclasses
import gc
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from popgate.pop3.encoder import MessageEncoder
from popgate.pop3.factory import POP3ServerFactory
from popgate.pop3.protocol import POP3ServerProtocol
from popgate.pop3.settings import SessionSettings
from popgate.stores.memory import MemoryStore

from .helpers import LOOPBACK_PEER, make_portal

SETTINGS = SessionSettings()
USERS = {b"alice": b"secret", b"bob": b"hunter2"}  # make_portal's default users
AUTHORIZATION, TRANSACTION, CLOSED = "AUTHORIZATION", "TRANSACTION", "CLOSED"
MAX_MESSAGE_NUMBER = 2**32 - 1
MAX_LINE_COUNT = 2**64 - 1
# A failed login's answer waits for the clock: the replies after it are a
# new phase of the batch.
DELAY = object()


# -- the model of a stored message on the wire, line by line


def message_lines(data: bytes) -> list[bytes]:
    """The lines of a stored message without their ends (LF or CRLF); a
    last line without LF is a line too."""
    pieces = data.split(b"\n")
    lines = [p[:-1] if p.endswith(b"\r") else p for p in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def wire_size(data: bytes) -> int:
    """What LIST and STAT count: every line end as CRLF, nothing added."""
    pieces = data.split(b"\n")
    return sum(len(p[:-1] if p.endswith(b"\r") else p) + 2 for p in pieces[:-1]) + len(pieces[-1])


def on_the_wire(lines: list[bytes]) -> bytes:
    """A multi-line body: CRLF after every line, a "." before a leading ".",
    then the terminating "." line."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


def top_lines(data: bytes, count: int) -> list[bytes]:
    """TOP: the header block up to and including the first empty line (the
    whole message if there is none), then C{count} body lines."""
    lines = message_lines(data)
    head = lines.index(b"") + 1 if b"" in lines else len(lines)
    return lines[:head + count]


# -- expected replies


@dataclasses.dataclass
class Reply:
    """
    One expected reply.  C{first}: a pattern the status line must match in
    full; C{body}: for a multi-line C{+OK}, the exact bytes after the status
    line (".\\r\\n" included) or a check of its lines; C{commits}: for
    QUIT, the user and the UIDs it deletes.
    """

    command: bytes
    ok: bool
    first: bytes | None = None
    code: bytes | None = None
    body: bytes | Callable[[list[bytes]], None] | None = None
    commits: tuple[str, frozenset[bytes]] | None = None

    def check_status(self, line: bytes) -> None:
        if self.ok:
            pattern = rb"\+OK(?: .*)?"
        elif self.code:
            pattern = rb"-ERR \[" + re.escape(self.code) + rb"\] .+"
        else:
            pattern = rb"-ERR .+"
        assert re.fullmatch(pattern, line, re.DOTALL), (
            f"{clip(self.command)}: expected {'+OK' if self.ok else '-ERR'}"
            f"{' [' + self.code.decode() + ']' if self.code else ''}, got {clip(line)}")
        if self.first is not None:
            assert re.fullmatch(self.first, line, re.DOTALL), (
                f"{clip(self.command)}: expected a status line matching {self.first!r}, got {clip(line)}")


def clip(data: bytes, size: int = 200) -> str:
    """C{data} for an assertion message, cut if long."""
    return repr(data) if len(data) <= size else f"{data[:size]!r}... ({len(data)} octets)"


def match_replies(out: bytes, replies: list[Reply], partial: bool = False) -> list[Reply]:
    """
    Check that C{out} is exactly C{replies}, in order -- or, with
    C{partial}, a prefix of them (a connection dropped mid-reply).  Return
    the replies received whole.
    """
    pos = 0
    received: list[Reply] = []
    for reply in replies:
        end = out.find(b"\r\n", pos)
        if end < 0:
            rest = out[pos:]
            word = b"+OK" if reply.ok else b"-ERR"
            assert partial, f"{clip(reply.command)}: no reply (expected {word!r}); got {clip(rest)} at the end"
            assert rest[:len(word)] == word[:len(rest)], f"{clip(reply.command)}: expected {word!r}, got {clip(rest)}"
            return received
        reply.check_status(out[pos:end])
        pos = end + 2
        if reply.ok and isinstance(reply.body, bytes):
            got = out[pos:pos + len(reply.body)]
            if partial and len(got) < len(reply.body):
                assert reply.body.startswith(got), (
                    f"{clip(reply.command)}: expected body {clip(reply.body)}, got {clip(got)}")
                return received
            assert got == reply.body, (
                f"{clip(reply.command)}: expected body {clip(reply.body)}, got {clip(out[pos:])}")
            pos += len(got)
        elif reply.ok and callable(reply.body):
            lines = []
            while True:
                end = out.find(b"\r\n", pos)
                if end < 0:
                    assert partial, f"{clip(reply.command)}: unterminated body {clip(out[pos:])}"
                    return received
                line, pos = out[pos:end], end + 2
                if line == b".":
                    break
                lines.append(line)
            reply.body(lines)
        received.append(reply)
    assert pos == len(out), f"unexpected output after the last reply: {clip(out[pos:])}"
    return received


def capa_check(before_login: bool) -> Callable[[list[bytes]], None]:
    def check(lines: list[bytes]) -> None:
        names = {line.split(b" ")[0] for line in lines}
        assert {b"CAPA", b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES"} <= names, lines
        assert (b"USER" in names) == before_login, lines

    return check


def parse_number(argument: bytes) -> tuple[int, bytes] | None:
    """Leading ASCII digits, at most 32 bits; None if there are none."""
    match = re.match(rb"[0-9]+", argument)
    if match is None or int(match.group()) > MAX_MESSAGE_NUMBER:
        return None
    return int(match.group()), argument[match.end():]


# -- the model of one session


class SessionModel:
    """
    What one POP3 session must answer, line by line.  C{boxes} is the
    model of the store (user -> [(uid, data)]); the session works on a
    snapshot taken at login, as RFC 1939 asks.
    """

    def __init__(self, boxes: dict[str, list[tuple[bytes, bytes]]], settings: SessionSettings) -> None:
        self.boxes = boxes
        self.settings = settings
        self.state = AUTHORIZATION
        self.user: bytes | None = None
        self.bad = 0
        self.failures = 0
        self.login = ""
        self.snapshot: list[tuple[bytes, bytes]] = []
        self.marked: set[int] = set()

    def limit(self) -> int:
        """The longest line accepted now, line end included."""
        if self.state == AUTHORIZATION:
            return self.settings.max_login_line_length
        return self.settings.max_line_length

    def feed(self, raw_lines: list[bytes]) -> list[list[Reply]]:
        """The replies to C{raw_lines}, in phases separated by a failed
        login's delay."""
        phases: list[list[Reply]] = [[]]
        for raw in raw_lines:
            if self.state == CLOSED:
                break
            for item in self.line(raw):
                if item is DELAY:
                    phases.append([])
                else:
                    phases[-1].append(item)
        return phases

    def tail(self, partial: bytes) -> list[Reply]:
        """An unterminated line the server holds: too long closes at once."""
        if self.state != CLOSED and len(partial) > self.limit():
            self.state = CLOSED
            return [Reply(partial[:40] + b"...", False)]
        return []

    def line(self, raw: bytes) -> list[Any]:
        if len(raw) > self.limit():
            self.state = CLOSED
            return [Reply(raw[:40] + b"...", False)]
        line = raw[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        keyword, _, argument = line.partition(b" ")
        name = keyword.upper()
        if self.state == AUTHORIZATION:
            return self.authorization(line, name, argument)
        # After login the spaces before the arguments do not count.
        replies = self.transaction(line, name, argument.lstrip(b" "))
        if replies is None:
            return self.bad_command(line)
        self.bad = 0
        return replies

    def bad_command(self, line: bytes) -> list[Any]:
        self.bad += 1
        replies = [Reply(line, False)]
        if self.state == AUTHORIZATION:
            too_many = self.bad >= self.settings.max_login_bad_commands
        else:
            too_many = self.bad > self.settings.max_bad_commands
        if too_many:
            self.state = CLOSED
            replies.append(Reply(line + b" (too many bad commands)", False))
        return replies

    def authorization(self, line: bytes, name: bytes, argument: bytes) -> list[Any]:
        # Before login only unknown commands count as bad; the arguments are
        # taken as they are (a password may start with a space).
        if name not in (b"CAPA", b"USER", b"PASS", b"QUIT", b"UTF8", b"STLS"):
            return self.bad_command(line)
        self.bad = 0
        if name == b"CAPA":
            return [Reply(line, True, body=capa_check(before_login=True))]
        if name == b"USER":
            self.user = argument
            return [Reply(line, True)]
        if name == b"UTF8":
            return [Reply(line, True)]
        if name == b"STLS":  # no TLS configured
            return [Reply(line, False)]
        if name == b"QUIT":
            self.state = CLOSED
            return [Reply(line, True)]
        if self.user is None:
            return [Reply(line, False)]
        user, self.user = self.user, None
        if USERS.get(user) == argument:
            self.state = TRANSACTION
            self.login = user.decode()
            self.snapshot = list(self.boxes[self.login])
            self.marked = set()
            return [Reply(line, True)]
        self.failures += 1
        if self.failures >= self.settings.max_auth_failures:
            self.state = CLOSED
        return [DELAY, Reply(line, False, code=b"AUTH")]

    def live(self, argument: bytes, then_space: bool = False) -> tuple[int, bytes] | None:
        """The index of the live message C{argument} names, and the rest
        (after the space that must follow when C{then_space})."""
        parsed = parse_number(argument)
        if parsed is None:
            return None
        number, rest = parsed
        if then_space:
            if not rest.startswith(b" "):
                return None
            rest = rest.lstrip(b" ")
        elif rest:
            return None
        if not 1 <= number <= len(self.snapshot) or number - 1 in self.marked:
            return None
        return number - 1, rest

    def transaction(self, line: bytes, name: bytes, argument: bytes) -> list[Any] | None:
        """The replies to a good command; None for a bad one."""
        live = [i for i in range(len(self.snapshot)) if i not in self.marked]
        if name == b"CAPA":
            return [Reply(line, True, body=capa_check(before_login=False))]
        if name == b"STAT":
            size = sum(wire_size(self.snapshot[i][1]) for i in live)
            return [Reply(line, True, first=re.escape(b"+OK %d %d" % (len(live), size)))]
        if name in (b"NOOP", b"RSET"):
            if name == b"RSET":
                self.marked.clear()
            return [Reply(line, True)]
        if name == b"QUIT":
            self.state = CLOSED
            gone = frozenset(self.snapshot[i][0] for i in self.marked)
            return [Reply(line, True, commits=(self.login, gone))]
        if name in (b"LIST", b"UIDL"):
            def item(i: int) -> bytes:
                uid, data = self.snapshot[i]
                return b"%d %s" % (i + 1, uid if name == b"UIDL" else b"%d" % wire_size(data))

            if not argument:
                return [Reply(line, True, body=b"".join(item(i) + b"\r\n" for i in live) + b".\r\n")]
            found = self.live(argument)
            if found is None:
                return None
            return [Reply(line, True, first=re.escape(b"+OK " + item(found[0])))]
        if name in (b"DELE", b"RETR"):
            found = self.live(argument)
            if found is None:
                return None
            index = found[0]
            if name == b"DELE":
                self.marked.add(index)
                return [Reply(line, True)]
            data = self.snapshot[index][1]
            return [Reply(line, True, first=rb"\+OK %d(?: .*)?" % wire_size(data),
                          body=on_the_wire(message_lines(data)))]
        if name == b"TOP":
            found = self.live(argument, then_space=True)
            if found is None:
                return None
            index, rest = found
            match = re.fullmatch(rb"[0-9]+", rest)
            if match is None or int(rest) > MAX_LINE_COUNT:
                return None
            return [Reply(line, True, body=on_the_wire(top_lines(self.snapshot[index][1], int(rest))))]
        return None


# -- the transport


class ReadingTransport(StringTransport):
    """
    A TCP-like transport whose peer reads everything each round: once more
    than C{high} unread bytes were written, it pauses the registered
    streaming producer (as a full socket buffer does); L{read} takes the
    bytes and resumes the producer it paused.  Pausing and resuming its own
    reading never fails, even after C{loseConnection}, as with TCP.
    """

    def __init__(self, high: int) -> None:
        super().__init__(peerAddress=LOOPBACK_PEER)
        self.high = high
        self.unread = 0
        self.paused_producer: Any = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        if (self.unread > self.high and self.producer is not None and self.streaming
                and self.paused_producer is None):
            self.paused_producer = self.producer
            self.producer.pauseProducing()

    def read(self) -> tuple[bytes, bool]:
        """Everything written so far, and whether a producer was resumed."""
        data = self.value()
        self.clear()
        self.unread = 0
        producer: Any = self.paused_producer
        current: Any = self.producer
        self.paused_producer = None
        if producer is None or producer is not current or self.disconnected:
            return data, False
        producer.resumeProducing()
        return data, True

    def wants_input(self) -> bool:
        return self.producerState == "producing" and not self.disconnecting

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "producing"


# -- what clients send

_TERMINATOR = st.sampled_from([b"\r\n"] * 7 + [b"\n", b"\n", b"\r\r\n"])
_GARBAGE_NUMBERS = [b"", b"x", b"-1", b"+1", b"01", b"1x", b"1 ", b" 1", b"1 2", b"\t1", b"1\t",
                    b"4294967295", b"4294967296", b"99999999999999999999", b"\xd9\xa1", b"\x00"]
# Mostly numbers of messages a small maildrop has, sometimes garbage.
_GOOD_NUMBER = st.sampled_from([b"1", b"2", b"3", b"1", b"2", b"4", b"5", b"0", b"7"])
_NUMBER = st.one_of(_GOOD_NUMBER, _GOOD_NUMBER, st.sampled_from(_GARBAGE_NUMBERS))
_GOOD_COUNT = st.sampled_from([b"0", b"1", b"2", b"3", b"10", b"0002", b"18446744073709551615"])
_COUNT = st.one_of(_GOOD_COUNT, _GOOD_COUNT,
                   st.sampled_from([b"", b"x", b"1x", b"-0", b" 2", b"2 ", b"18446744073709551616",
                                    b"99999999999999999999999"]))
_JUNK = st.sampled_from([None, None, None, b"", b"x", b"1", b"  junk"])
_UNKNOWN = st.sampled_from([b"FOO", b"", b" ", b"LAST", b"XTND XLST", b"\x00", b"\xff\xfe", b"STAT\tx",
                            b"\tSTAT", b"RETRIEVE 1", b"ST\x00AT", b"AUTHORIZE", b"QUITS", b"\xc3\xa9T"])


def _keyword(name: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name, name, name, name.lower(), name.capitalize()])


def _command(name: bytes, argument: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.tuples(_keyword(name), argument).map(
        lambda t: t[0] if t[1] is None else t[0] + b" " + t[1])


def _terminated(*lines: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(st.one_of(*lines), _TERMINATOR).map(b"".join)


def _long_line(parts: tuple[bytes, int]) -> bytes:
    keyword, length = parts
    return keyword + b" " + b"x" * (length - len(keyword) - 1)


# Lines around the limits (before and after login): with their line end
# (1 to 3 octets) some fit exactly, some are one octet too long.
def _long_lines() -> st.SearchStrategy[bytes]:
    return st.tuples(
        st.sampled_from([b"NOOP", b"CAPA", b"USER", b"XXXX"]),
        st.sampled_from([limit + d for limit in (SETTINGS.max_login_line_length, SETTINGS.max_line_length)
                         for d in (-3, -2, -1, 0)]),
    ).map(_long_line)


def _transaction_lines() -> list[st.SearchStrategy[bytes]]:
    return [
        _command(b"STAT", _JUNK), _command(b"NOOP", _JUNK), _command(b"RSET", _JUNK),
        _command(b"LIST", st.one_of(st.none(), _NUMBER)), _command(b"UIDL", st.one_of(st.none(), _NUMBER)),
        _command(b"RETR", _NUMBER), _command(b"RETR", _NUMBER),
        _command(b"DELE", _NUMBER), _command(b"DELE", _NUMBER),
        st.tuples(_keyword(b"TOP"), _NUMBER, _COUNT).map(b" ".join),
        st.tuples(_keyword(b"TOP"), _NUMBER, _COUNT).map(b" ".join),
    ]


# What a logged-in client mostly sends.
TRANSACTION_COMMANDS = _terminated(*_transaction_lines())
# Anything, in any state.
COMMANDS = st.one_of(
    _terminated(
        *_transaction_lines(), _command(b"CAPA", _JUNK),
        _command(b"USER", st.sampled_from([None, b"alice", b"bob", b"mallory", b" alice", b"", b"ALICE"])),
        _command(b"PASS", st.sampled_from([None, b"secret", b"hunter2", b"wrong", b" secret", b"",
                                           b"secret "])),
        _command(b"UTF8", _JUNK), _command(b"STLS", _JUNK),
        _UNKNOWN, _UNKNOWN.map(bytes), _command(b"QUIT", _JUNK), _long_lines(), _long_lines(),
    ),
    _terminated(*_transaction_lines()),
)
# Bad in both states: unknown before login, unknown or a bad argument after.
BAD_COMMANDS = _terminated(
    _UNKNOWN, st.sampled_from([b"DELE 0", b"RETR 99", b"LIST x", b"TOP 1", b"UIDL 1 2", b"RETR",
                               b"TOP 1 x", b"DELE 4294967296", b"USER\tx"]))

# Pipelined floods: many small commands, or long lines that add up to more
# than the input the server keeps while its output is blocked (64 KiB).
FLOODS = [(b"UIDL\r\n", 500), (b"LIST\r\n", 500), (b"RETR 1\r\n", 300), (b"STAT\n", 500)] + [
    (keyword + b" " + b"x" * 1000 + b"\r\n", 70) for keyword in (b"CAPA", b"NOOP", b"STAT")]

# Stored messages: lines starting with ".", no final line end, bare LF and
# CRLF mixed, bare CR, empty messages and headers without a body.
_MESSAGE_LINE = st.sampled_from([b"", b".", b"..", b".x", b"..x", b"Subject: hi", b"x", b"a b", b" .",
                                 b"\r", b"a\rb", b"\x00", b"..."])
MESSAGES = st.one_of(
    st.sampled_from([b"", b".\n", b"..", b"Subject: s\n\n.\n..\n.x\nend", b"\n\nbody\n",
                     b"H: 1\r\nH: 2\r\n\r\nb1\nb2\r\n.\r\n", b"no line end at all", b"H: x\n",
                     b"From: a\n\n" + b"line\n.\n" * 10, b"A: b\r\n\r\n\r\n.\r", b"x\r"]),
    st.tuples(st.lists(st.tuples(_MESSAGE_LINE, st.sampled_from([b"\n", b"\r\n"])), max_size=6),
              st.sampled_from([b"", b"", b"tail", b".", b"\r", b".tail"])).map(
        lambda t: b"".join(a + b for a, b in t[0]) + t[1]),
)


def split(blob: bytes, data: st.DataObject) -> list[bytes]:
    """C{blob} in the pieces TCP may deliver it in."""
    how = data.draw(st.sampled_from(["whole", "cuts", "cuts", "bytes"]), label="split")
    if how == "whole" or len(blob) < 2:
        return [blob]
    if how == "bytes" and len(blob) <= 400:
        return [blob[i:i + 1] for i in range(len(blob))]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(blob) - 1), max_size=12), label="cuts")))
    return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]


# -- the state machine


class POP3Sessions(RuleBasedStateMachine):
    """
    One store, one session at a time against it.  Each rule sends a batch
    and checks the replies; a session that ends is dropped as TCP drops it
    and the next one starts on what the store holds.
    """

    protocol_class: type[POP3ServerProtocol] | None = None
    server_settings = SETTINGS

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        self.store = MemoryStore()
        self.portal, _ = make_portal(self.store)
        self.boxes: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}
        self.high_marks = [10**9]
        self.sessions = 0
        self.connected = False
        self.chunks: list[bytes] = []
        self.honour_pauses = True
        self.fin_pending = False

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("isError"):
            self.errors.append(event)

    # -- plumbing

    def connect(self) -> None:
        self.clock = Clock()
        factory = POP3ServerFactory(self.portal, self.server_settings, clock=self.clock)
        if self.protocol_class is not None:
            factory.protocol = self.protocol_class
        self.protocol = factory.buildProtocol(None)
        # Each session reads at another pace: every write pauses the
        # producer, or some, or none.
        high = self.high_marks[self.sessions % len(self.high_marks)]
        self.sessions += 1
        self.transport = ReadingTransport(high)
        self.protocol.makeConnection(self.transport)
        self.model = SessionModel(self.boxes, SETTINGS)
        self.connected_at = self.clock.seconds()
        self.connected = True
        self.chunks = []
        self.fin_pending = False
        greeting = self.pump()
        assert re.fullmatch(rb"\+OK [^\r\n]*\r\n", greeting), greeting

    def pump(self, rounds: int | None = None) -> bytes:
        """Feed the pending chunks as far as the transport lets them in,
        reading everything, until nothing moves (or C{rounds} are done)."""
        out = []
        for _ in range(rounds or 100_000):
            self.clock.advance(0)
            data, moved = self.transport.read()
            out.append(data)
            may_read = self.transport.wants_input() or not self.honour_pauses
            if self.chunks and may_read:
                self.protocol.dataReceived(self.chunks.pop(0))
                moved = True
            elif self.fin_pending and may_read and not self.transport.disconnecting:
                # All sent, then the client's FIN (IHalfCloseableProtocol).
                self.fin_pending = False
                self.protocol.readConnectionLost()
                moved = True
            if not (moved or data):
                break
        else:
            assert rounds is not None, "the session never settles"
        return b"".join(out)

    def drop(self) -> bytes:
        """
        The connection is gone, as TCP tells it: the producer is stopped
        first, then the protocol hears of it.  Returns what was written but
        not read; nothing may be written afterwards, nor any timer be left.
        """
        transport = self.transport
        left = transport.value()
        transport.clear()
        transport.disconnected = True
        producer = transport.producer
        if producer is not None:
            producer.stopProducing()
            transport.producer = None
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.connected = False
        left += transport.value()
        transport.clear()
        self.clock.advance(self.server_settings.auth_failure_delay * 2)
        assert transport.value() == b"", "written after the connection was lost"
        assert not self.clock.getDelayedCalls(), "timers left after the connection was lost"
        return left

    def received(self, replies: list[Reply]) -> None:
        """Apply what the replies received whole say was committed."""
        for reply in replies:
            if reply.commits is not None:
                user, gone = reply.commits
                self.boxes[user] = [m for m in self.boxes[user] if m[0] not in gone]

    def run(self, lines: list[bytes], data: st.DataObject, half_close: bool = False) -> None:
        """
        Send C{lines} in random pieces; check every phase of the replies.
        With C{half_close}, the client then shuts down its sending side:
        every command is still answered, and then the server closes.
        """
        self.chunks = split(b"".join(lines), data)
        self.fin_pending = half_close
        self.honour_pauses = data.draw(st.booleans(), label="honour pauses")
        phases = self.model.feed(lines)
        self.received(match_replies(self.pump(), phases[0]))
        delay = self.server_settings.auth_failure_delay
        for phase in phases[1:]:
            self.clock.advance(delay / 2)
            early = self.pump()
            assert early == b"", f"answered before the failure delay: {clip(early)}"
            self.clock.advance(delay / 2)
            self.received(match_replies(self.pump(), phase))
        if half_close:
            self.model.state = CLOSED
        if self.model.state == CLOSED:
            assert self.transport.disconnecting, "the model closed the session, the server did not"
            self.drop()
            self.connect()
        else:
            assert not self.transport.disconnecting, "the server closed the session, the model did not"
            assert not self.chunks

    # -- rules

    @initialize(alice=st.lists(MESSAGES, min_size=2, max_size=6), bob=st.lists(MESSAGES, max_size=2),
                high_marks=st.permutations([1, 64, 1024, 10**9]))
    def start(self, alice: list[bytes], bob: list[bytes], high_marks: list[int]) -> None:
        for user, messages in (("alice", alice), ("bob", bob)):
            for message in messages:
                self.boxes[user].append((self.store.add_message(user, message), message))
        self.high_marks = high_marks
        self.connect()

    def logged_in(self, lines: list[bytes], data: st.DataObject, user: bytes = b"alice") -> list[bytes]:
        """C{lines}, after a login if the session has none yet (mostly)."""
        if self.model.state == AUTHORIZATION and data.draw(st.integers(0, 4), label="log in first"):
            return [b"USER " + user + b"\r\n", b"PASS " + USERS[user] + b"\r\n", *lines]
        return lines

    @rule(data=st.data(), user=st.sampled_from(sorted(USERS)), then_quit=st.sampled_from([0, 0, 1]))
    def read_and_delete(self, data: st.DataObject, user: bytes, then_quit: int) -> None:
        """What clients do: RETR, TOP, DELE, ..., sometimes then QUIT."""
        lines = data.draw(st.lists(TRANSACTION_COMMANDS, min_size=1, max_size=10), label="lines")
        self.run(self.logged_in(lines + [b"QUIT\r\n"] * then_quit, data, user), data)

    @rule(data=st.data())
    def commands(self, data: st.DataObject) -> None:
        """Anything, in any state."""
        self.run(data.draw(st.lists(COMMANDS, min_size=1, max_size=8), label="lines"), data)

    @rule(data=st.data(), count=st.one_of(st.integers(1, 4), st.integers(18, 23)))
    def bad_commands(self, data: st.DataObject, count: int) -> None:
        """Bad commands in a row: the 3rd before login closes, the 21st
        after; a good one in between starts the count again."""
        lines = data.draw(st.lists(BAD_COMMANDS, min_size=count, max_size=count), label="bad")
        lines += data.draw(st.lists(COMMANDS, max_size=2), label="then")
        if data.draw(st.booleans(), label="after login"):
            lines = self.logged_in(lines, data)
        self.run(lines, data)

    @rule(data=st.data(), line=_long_lines(), end=_TERMINATOR)
    def long_line(self, data: st.DataObject, line: bytes, end: bytes) -> None:
        """A line up to the limit is a command; one octet more gets -ERR and
        closes the connection (1031 octets before login, 2048 after)."""
        lines = [*data.draw(st.lists(COMMANDS, max_size=2), label="before"), line + end,
                 *data.draw(st.lists(COMMANDS, max_size=2), label="after")]
        self.run(self.logged_in(lines, data) if data.draw(st.booleans(), label="after login") else lines,
                 data)

    @precondition(lambda self: self.model.state == AUTHORIZATION)
    @rule(data=st.data(), failures=st.integers(1, 3))
    def failed_logins(self, data: st.DataObject, failures: int) -> None:
        """Each failure is answered after the delay, commands sent behind
        it wait for it, and the third closes the connection."""
        lines = []
        for _ in range(failures):
            lines += [b"USER alice\r\n", b"PASS wrong\r\n"]
            lines += data.draw(st.lists(COMMANDS, max_size=2), label="between")
        self.run(lines, data)

    @rule(data=st.data(), flood=st.sampled_from(FLOODS))
    def flood(self, data: st.DataObject, flood: tuple[bytes, int]) -> None:
        """Hundreds of pipelined commands, or more than the read-ahead bound
        in all: every one answered, in order, whatever the reading pace."""
        line, count = flood
        self.run(self.logged_in([line] * count, data), data)

    @rule(user=st.sampled_from(["alice", "bob"]), message=MESSAGES)
    def deliver(self, user: str, message: bytes) -> None:
        """Mail arriving during a session is not in its snapshot and
        survives its QUIT."""
        self.boxes[user].append((self.store.add_message(user, message), message))

    @rule(data=st.data())
    def half_close(self, data: st.DataObject) -> None:
        """
        The client sends a batch and shuts down its sending side (C{nc -N}):
        every command is answered, QUIT included, and a QUIT so received
        commits; without QUIT the server closes and deletes nothing.
        """
        lines = data.draw(st.lists(st.one_of(COMMANDS, TRANSACTION_COMMANDS), min_size=1, max_size=6),
                          label="lines")
        lines += [b"QUIT\r\n"] * data.draw(st.sampled_from([0, 1]), label="then QUIT")
        self.run(self.logged_in(lines, data), data, half_close=True)

    @rule(data=st.data())
    def connection_lost_midway(self, data: st.DataObject) -> None:
        """
        The client sends part of a batch and vanishes, possibly while a
        reply is still being sent: what was written is a prefix of the
        model's replies, and the store is committed if and only if QUIT
        was answered.
        """
        lines = data.draw(st.lists(st.one_of(COMMANDS, TRANSACTION_COMMANDS), min_size=1, max_size=6),
                          label="lines")
        lines += [b"QUIT\r\n"] * data.draw(st.sampled_from([0, 1]), label="then QUIT")
        lines = self.logged_in(lines, data)
        chunks = split(b"".join(lines), data)
        sent = chunks[:data.draw(st.integers(0, len(chunks)), label="chunks sent")]
        fed = b"".join(sent)
        complete, offset = [], 0
        for line in lines:
            if offset + len(line) > len(fed):
                break
            complete.append(line)
            offset += len(line)
        phases = self.model.feed(complete)
        expected = phases[0]
        if len(phases) == 1:
            expected += self.model.tail(fed[offset:])
        self.chunks = sent
        self.honour_pauses = data.draw(st.booleans(), label="honour pauses")
        out = self.pump(rounds=data.draw(st.integers(1, 12), label="rounds"))
        out += self.drop()
        self.received(match_replies(out, expected, partial=True))
        self.connect()

    @rule(idle=st.booleans())
    def connection_lost(self, idle: bool) -> None:
        """
        A session dropped without QUIT deletes nothing: by the client, or
        by the server's timers -- the idle timeout after login, the login
        timeout (or the idle timeout) before.
        """
        if not idle:
            assert self.drop() == b""
        elif self.model.state == TRANSACTION:
            self.clock.advance(self.server_settings.idle_timeout - 0.5)
            assert self.pump() == b"", "closed before the idle timeout"
            self.clock.advance(0.5)
            out = self.pump()
            assert re.fullmatch(rb"-ERR [^\r\n]+\r\n", out), out
            assert self.transport.disconnecting
            self.drop()
        else:
            deadline = self.clock.seconds() + self.server_settings.idle_timeout
            login_timeout = getattr(self.server_settings, "login_timeout", 0)
            if login_timeout:
                deadline = min(deadline, self.connected_at + login_timeout)
            out = b""
            while not self.transport.disconnecting:
                calls: Any = self.clock.getDelayedCalls()
                assert calls, "no timer would ever close this session"
                self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
                out += self.pump()
                assert self.clock.seconds() <= deadline, "not closed in time"
            assert re.fullmatch(rb"(-ERR [^\r\n]+\r\n)+", out), out
            self.drop()
        self.connect()

    # -- invariants

    @invariant()
    def store_matches_the_model(self) -> None:
        for user, box in self.boxes.items():
            assert [(m.uid, m.data) for m in self.store._boxes.get(user, [])] == box, user

    @invariant()
    def nothing_logged_as_an_error(self) -> None:
        assert not self.errors, [e.get("log_failure") or e.get("log_format") for e in self.errors]

    def teardown(self) -> None:
        try:
            if self.connected:
                self.drop()
            self.nothing_logged_as_an_error()
        finally:
            globalLogPublisher.removeObserver(self._observe)


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[list[dict[str, Any]]]:
    """Failures logged outside the machine's steps, such as unhandled errors
    in Deferreds, logged when they are collected (once per test: a
    collection per example would cost most of the run time)."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("isError"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not events, [e.get("log_failure") or e.get("log_format") for e in events]


# Deterministic in CI, no example database; the deadline is off because a
# batch sent one byte at a time is slow only in wall-clock terms.
MODEL_SETTINGS = settings(max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
                          database=None)


def test_sessions_answer_as_the_model_says() -> None:
    run_state_machine_as_test(POP3Sessions, settings=MODEL_SETTINGS)


# -- the test can fail: protocols with one deliberate bug each

# Find the bug, no shrinking: these only show that the model notices.
MUTANT_SETTINGS = settings(MODEL_SETTINGS, max_examples=200, phases=[Phase.generate])


class ForgetfulRset(POP3ServerProtocol):
    """RSET answers +OK but keeps the marks."""

    def pop3_RSET(self, argument: bytes) -> None:
        transport: Any = self.transport
        transport.write(b"+OK\r\n")


@pytest.fixture
def unstuffed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The encoder sends a line starting with "." unstuffed when it follows
    another line (patched on the class: wherever the server imports it)."""
    encode = MessageEncoder.encode

    def unstuffed_encode(self: MessageEncoder, chunk: bytes) -> bytes:
        return encode(self, chunk).replace(b"\r\n..", b"\r\n.")

    monkeypatch.setattr(MessageEncoder, "encode", unstuffed_encode)
    yield


def test_the_model_notices_a_forgetful_rset() -> None:
    machine = type("Mutant", (POP3Sessions,), {"protocol_class": ForgetfulRset})
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=MUTANT_SETTINGS)


def test_the_model_notices_missing_dot_stuffing(unstuffed: None) -> None:
    with pytest.raises(AssertionError):
        run_state_machine_as_test(POP3Sessions, settings=MUTANT_SETTINGS)


def test_the_model_notices_a_late_bad_command_limit() -> None:
    late = dataclasses.replace(SETTINGS, max_bad_commands=SETTINGS.max_bad_commands + 1)
    machine = type("Mutant", (POP3Sessions,), {"server_settings": late})
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=MUTANT_SETTINGS)
