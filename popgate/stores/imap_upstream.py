"""
An IMAP4rev1 client for an upstream server, on the reactor: the C{imap:}
store's (L{popgate.stores.imap_store}) one connection per session.

Why not L{twisted.mail.imap4.IMAP4Client}: it collects every literal
whole (in memory, or a temporary file written from the reactor thread
past a limit, then read back whole) and parses the whole response before
anyone sees it, with no way to pause the socket; a 100 MB message would
be held whole, once or twice.  This client knows only the commands the
store needs (CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE PLAIN,
EXAMINE/SELECT, UID FETCH/STORE/SEARCH/EXPUNGE, LOGOUT) and parses
responses a chunk at a time: small literals are kept in their response
line, the literal of a C{BODY[]} (or C{BODY[]<n>}) fetch item is handed
to a I{sink} as it arrives, with the same back-pressure and deadlines as
the POP3 client (L{popgate.stores.pop3_upstream}): the sink can pause the
socket or abandon the rest (read and dropped, so the connection stays in
step); a reply that makes no progress for C{timeout} seconds aborts the
connection, and everything waiting then fails with L{UpstreamUnavailable}.

Commands go one at a time.  A command is a list of parts: after each but
the last (which ends with a literal's C{{N}}, or is C{AUTHENTICATE PLAIN}
without SASL-IR) the client waits for the server's C{+} continuation.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate.stores.pop3_upstream import Sink
from popgate.stores.upstream_connection import UpstreamConnection, UpstreamUnavailable

__all__ = ["ImapError", "ImapProtocol", "ImapReply", "MessageGone", "UpstreamUnavailable",
           "command_parts"]

#: A response line (between literals) longer than this is no IMAP server.
MAX_LINE = 64 * 1024
#: A literal kept in its response (not streamed) may be this large.
MAX_INLINE_LITERAL = 64 * 1024
#: The untagged responses one command may collect (the snapshot's FETCH
#: responses are parsed as they come instead).
MAX_COLLECTED = 1024 * 1024

_LITERAL = re.compile(rb"~?\{(\d+)\}$")
_BODY_ITEM = re.compile(rb"BODY\[\](?:<\d+>)? ~?\{\d+\}$", re.IGNORECASE)
_CODE = re.compile(rb"^\[([A-Za-z0-9.-]+)(?: ([^\]]*))?\]")
#: A C{BODY[]} item sent as a quoted string instead of a literal (an
#: empty or one-line message: RFC 3501 allows any string).  C{NIL} is no
#: message: Dovecot answers so for one expunged by another session.
_QUOTED_BODY = re.compile(rb'BODY\[\](?:<\d+>)? "((?:[^"\\]|\\.)*)"', re.IGNORECASE)

log = Logger()


class ImapError(Exception):
    """
    The upstream answered a command C{NO} or C{BAD}.

    @ivar status: C{b"NO"} or C{b"BAD"}.
    @ivar code: its response code (RFC 5530: C{b"UNAVAILABLE"},
        C{b"AUTHENTICATIONFAILED"}), upper-cased, or C{None}.
    """

    def __init__(self, status: bytes, text: bytes) -> None:
        self.status = status
        self.text = text
        match = _CODE.match(text)
        self.code = match.group(1).upper() if match else None
        super().__init__((status + b" " + text).decode("utf-8", "replace")[:200])


class MessageGone(Exception):
    """A fetch answered C{OK} with no C{BODY[]}: the message was expunged
    (by another client) since the snapshot."""


class ImapReply:
    """A tagged C{OK}: its text and the untagged responses it collected."""

    __slots__ = ("text", "untagged")

    def __init__(self, text: bytes, untagged: list[bytes]) -> None:
        self.text = text
        self.untagged = untagged


def _quotable(value: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in value)


def command_parts(words: bytes, *strings: bytes) -> list[bytes]:
    """
    C{words} followed by each of C{strings} as an IMAP string: quoted
    (C{\\} and C{"} escaped) when printable ASCII, else a synchronising
    literal, which splits the command into parts.
    """
    parts: list[bytes] = []
    current = words
    for value in strings:
        if _quotable(value):
            current += b' "' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            parts.append(current + b" {%d}" % len(value))
            current = value
    parts.append(current)
    return parts


def capabilities_in(text: bytes) -> set[bytes] | None:
    """The capabilities a C{[CAPABILITY ...]} response code lists, if any."""
    match = _CODE.match(text)
    if match and match.group(1).upper() == b"CAPABILITY":
        return {word.upper() for word in (match.group(2) or b"").split()}
    return None


class _Command:
    __slots__ = ("tag", "parts", "kind", "deferred", "sink", "untagged", "collected",
                 "size", "streaming", "started", "dropping")

    def __init__(self, tag: bytes, parts: list[bytes], kind: str, sink: Sink | None = None,
                 untagged: Callable[[bytes], None] | None = None) -> None:
        self.tag = tag
        self.parts = deque(parts)
        self.kind = kind  # "simple", "auth", "stream"
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self.sink = sink
        self.untagged = untagged
        self.collected: list[bytes] = []
        self.size = 0
        self.started = False  # a stream's BODY[] literal began (its Deferred fired)
        self.dropping = False


class ImapProtocol(UpstreamConnection):
    """
    One connection to the upstream IMAP server.

    @param clock: for the deadlines.
    @param timeout: seconds a command may wait for its reply to progress.
    @ivar greeting: fires with the greeting's text (after C{* OK}).
    @ivar capabilities: the last capability list the server gave.
    @ivar preauth: the server greeted with C{PREAUTH}.
    """

    server = "IMAP"

    def __init__(self, clock: Any, timeout: float, greeting_timeout: float | None = None) -> None:
        super().__init__(clock, timeout, greeting_timeout)
        self.capabilities: set[bytes] = set()
        self.preauth = False
        self._buffer = bytearray()
        self._line = bytearray()  # the response being assembled (small literals inline)
        self._literal_left = 0
        self._literal_to: _Command | None = None  # the stream whose sink gets it
        self._queue: deque[_Command] = deque()
        self._current: _Command | None = None
        self._tags = 0

    # -- the connection

    def _take_waiting(self) -> list[_Command]:
        current, self._current = self._current, None
        waiting = ([current] if current is not None else []) + list(self._queue)
        self._queue.clear()
        return waiting

    def start_tls(self, options: Any) -> None:
        """Start TLS after C{STARTTLS}'s C{OK}.

        @raise UpstreamUnavailable: octets came after that C{OK} before
            TLS (injected into the plain connection: RFC 3207's attack)."""
        if self._buffer:
            raise UpstreamUnavailable("octets after the STARTTLS reply, before TLS")
        self.transport.startTLS(options)

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue and self.lost is None

    # -- commands

    def command(self, parts: bytes | list[bytes],
                untagged: Callable[[bytes], None] | None = None,
                kind: str = "simple") -> defer.Deferred[ImapReply]:
        """
        Send a command (its parts, see L{command_parts}); fires with an
        L{ImapReply} at C{OK}, fails with L{ImapError} at C{NO} or C{BAD}.

        @param untagged: called with each untagged response while it runs
            (else they are collected in the reply, up to L{MAX_COLLECTED}).
        """
        return self._enqueue(parts, kind, None, untagged)

    def stream(self, line: bytes, sink: Sink) -> defer.Deferred[int]:
        """
        Send a C{UID FETCH} of one message's C{BODY.PEEK[]} (or a part of
        it); fires with the literal's size once it begins, its octets then
        go to C{sink}, and C{sink.end()} comes at the tagged C{OK}.  Fails
        with L{MessageGone} if the server answers C{OK} with no literal.
        """
        return self._enqueue(line, "stream", sink, None)

    def _enqueue(self, parts: bytes | list[bytes], kind: str, sink: Sink | None,
                 untagged: Callable[[bytes], None] | None) -> defer.Deferred[Any]:
        if self.lost is not None:
            return defer.fail(self.lost)
        self._tags += 1
        command = _Command(b"p%d" % self._tags, [parts] if isinstance(parts, bytes) else parts,
                           kind, sink, untagged)
        self._queue.append(command)
        self._send_next()
        return command.deferred

    def _send_next(self) -> None:
        if self._current is not None or not self._queue or not self._greeted:
            return
        command = self._current = self._queue.popleft()
        self.transport.write(command.tag + b" " + command.parts.popleft() + b"\r\n")
        self._arm()

    # -- responses

    def dataReceived(self, data: bytes) -> None:
        if self._current is not None or not self._greeted:
            self._arm()
        self._buffer += data
        buffer = self._buffer
        while buffer and self.lost is None:
            if self._literal_left:
                self._literal(buffer)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_LINE:
                    self._protocol_error(f"a response line longer than {MAX_LINE} octets")
                return
            piece = bytes(buffer[:end])
            del buffer[:end + 2]
            self._line += piece
            if len(self._line) > MAX_LINE + MAX_INLINE_LITERAL:
                self._protocol_error("a response too large to keep")
                return
            match = _LITERAL.search(piece)
            if match is None:
                response, self._line = bytes(self._line), bytearray()
                self._response(response)
                continue
            self._start_literal(int(match.group(1)))

    def _start_literal(self, size: int) -> None:
        command = self._current
        self._literal_to = None
        if (command is not None and command.kind == "stream" and not command.started
                and self._line.startswith(b"* ") and _BODY_ITEM.search(self._line)):
            command.started = True
            self._literal_to = command
            self._line += b" "  # a placeholder: the literal is not kept
            command.deferred.callback(size)
        elif size > MAX_INLINE_LITERAL:
            self._protocol_error(f"a literal of {size} octets outside a BODY[]")
            return
        else:
            self._line += b"\r\n"
        self._literal_left = size

    def _literal(self, buffer: bytearray) -> None:
        take = min(self._literal_left, len(buffer))
        chunk = bytes(buffer[:take])
        del buffer[:take]
        self._literal_left -= take
        command = self._literal_to
        if command is None:
            self._line += chunk
        elif command.sink is not None:
            command.sink.data(chunk)

    def _response(self, line: bytes) -> None:
        if not self._greeted:
            self._greeting(line)
            return
        command = self._current
        if line.startswith(b"* "):
            self._untagged(command, line[2:])
            return
        if line.startswith(b"+"):
            self._continue(command)
            return
        tag, _, rest = line.partition(b" ")
        if command is None or tag != command.tag:
            self._protocol_error("a tagged response nobody asked for")
            return
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if status not in (b"OK", b"NO", b"BAD"):
            self._protocol_error("a tagged response that is neither OK, NO nor BAD")
            return
        found = capabilities_in(text)
        if found is not None:
            self.capabilities = found
        self._current = None
        self._disarm()
        if status == b"OK":
            if command.kind != "stream":
                command.deferred.callback(ImapReply(text, command.collected))
            elif not command.started:
                self._quoted_or_gone(command, text)
            elif command.sink is not None:
                command.sink.end()
        else:
            self._fail(command, Failure(ImapError(status, text)))
        self._send_next()

    def _quoted_or_gone(self, command: _Command, text: bytes) -> None:
        """A fetch's C{OK} without a literal: its C{BODY[]} was a quoted
        string, or the message is gone (C{BODY[] NIL}, or no FETCH)."""
        for line in command.collected:
            match = _QUOTED_BODY.search(line)
            if match is not None:
                value = re.sub(rb"\\(.)", rb"\1", match.group(1))
                command.started = True
                command.deferred.callback(len(value))
                if command.sink is not None and value:
                    command.sink.data(value)
                if command.sink is not None:
                    command.sink.end()
                return
        command.deferred.errback(MessageGone(text.decode("utf-8", "replace")[:200]))

    def _greeting(self, line: bytes) -> None:
        self._greeted = True
        self._disarm()
        word, _, text = line[2:].partition(b" ") if line.startswith(b"* ") else (b"", b"", line)
        word = word.upper()
        if word in (b"OK", b"PREAUTH"):
            self.preauth = word == b"PREAUTH"
            self.capabilities = capabilities_in(text) or set()
            self.greeting.callback(text)
            self._send_next()
        else:
            self.greeting.errback(ImapError(word or b"BAD", text))

    def _untagged(self, command: _Command | None, line: bytes) -> None:
        word = line.split(b" ", 1)[0].upper()
        if word == b"CAPABILITY":
            self.capabilities = {w.upper() for w in line.split()[1:]}
        elif word in (b"OK", b"NO", b"BAD", b"BYE"):
            found = capabilities_in(line[len(word) + 1:])
            if found is not None:
                self.capabilities = found
        if command is None:
            return  # unsolicited (EXISTS, EXPUNGE, BYE before a close): nothing waits for it
        if command.untagged is not None:
            command.untagged(line)
            return
        command.size += len(line)
        if command.size > MAX_COLLECTED:
            self._protocol_error(f"over {MAX_COLLECTED} octets of untagged responses")
            return
        command.collected.append(line)

    def _continue(self, command: _Command | None) -> None:
        if command is None:
            self._protocol_error("a continuation nobody asked for")
        elif command.parts:
            self.transport.write(command.parts.popleft() + b"\r\n")
        elif command.kind == "auth":
            self.transport.write(b"*\r\n")  # an unexpected challenge: cancel
        else:
            self._protocol_error("a continuation after the whole command")

    def _fail(self, command: _Command, failure: Failure) -> None:
        if command.kind == "stream" and command.started:
            # Its Deferred fired at the literal: the sink is who waits now.
            if command.sink is not None:
                command.sink.failed(failure)
            return
        command.deferred.errback(failure)
