"""
A POP3 client for an upstream server, on the reactor: the proxy store's
(L{popgate.stores.proxy_store}) one connection per session.

Commands go one at a time, in order, except a batch given to L{pipeline}
(for an upstream that offers PIPELINING: the DELEs at QUIT), which goes
in one write.  A single-line reply fires with its text; a listing (UIDL,
LIST) with its lines, un-stuffed by L{DotDecoder}; a message (RETR, TOP)
is handed to a I{sink} a chunk at a time as it arrives, in its wire form
(L{WireScanner} only finds its end), and the sink can pause the socket
(back-pressure from popgate's client) or abandon the rest (the reply is
then read and dropped, so the connection stays in step).  Every step has
a deadline: a command whose reply does not progress for C{timeout}
seconds aborts the connection, and every waiting command fails with
L{UpstreamUnavailable}, as does everything after a lost connection.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate.stores.pop3_dots import DotDecoder, WireScanner
from popgate.stores.upstream_connection import UpstreamConnection, UpstreamUnavailable

__all__ = ["Sink", "UpstreamError", "UpstreamProtocol", "UpstreamUnavailable"]

#: A status line longer than this is no POP3 server talking.
MAX_LINE = 8192
#: A listing (UIDL, LIST) larger than this is refused: about 250,000 messages.
MAX_LISTING = 16 * 1024 * 1024

#: The most read from the upstream socket at once (the sender's chunk).
READ_SIZE = 256 * 1024

_CODE = re.compile(rb"^\[([A-Z0-9/-]+)\]")

log = Logger()


class UpstreamError(Exception):
    """
    The upstream answered C{-ERR}.

    @ivar code: its RFC 2449 response code (C{b"IN-USE"}), or C{None}.
    @ivar text: the rest of its line (logged, never sent to the client).
    """

    def __init__(self, line: bytes) -> None:
        self.text = line
        match = _CODE.match(line)
        self.code = match.group(1).upper() if match else None
        super().__init__(line.decode("utf-8", "replace")[:200])


class Sink(TypingProtocol):
    """Where the octets of a RETR or TOP reply go (L{popgate.stores.proxy_source}):
    its wire form, dot-stuffed, without the terminating C{.} line."""

    def data(self, octets: bytes) -> None: ...
    def end(self) -> None: ...
    def failed(self, failure: Failure) -> None: ...


class _Command:
    __slots__ = ("line", "kind", "deferred", "sink", "listing", "decoder", "dropping", "batch")

    def __init__(self, line: bytes, kind: str, sink: Sink | None = None,
                 batch: object = None) -> None:
        self.line = line
        self.batch = batch  # commands of one batch are written together
        self.kind = kind  # "simple", "listing", "stream"
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self.sink = sink
        self.listing = bytearray()
        self.decoder: DotDecoder | WireScanner | None = None
        self.dropping = False  # the sink let go: read the rest, hand out nothing


class UpstreamProtocol(UpstreamConnection):
    """
    One connection to the upstream.

    @param clock: for the deadlines.
    @param timeout: seconds a command may wait for its reply to progress.
    @param greeting_timeout: seconds to wait for the greeting (default:
        C{timeout}).
    @ivar greeting: fires with the greeting's text (after C{+OK}).
    """

    server = "POP3"

    def __init__(self, clock: Any, timeout: float, greeting_timeout: float | None = None) -> None:
        super().__init__(clock, timeout, greeting_timeout)
        self._buffer = b""
        self._queue: deque[_Command] = deque()
        self._sent: deque[_Command] = deque()  # written, waiting for their replies

    # -- the connection

    def connectionMade(self) -> None:
        # Read in pieces of up to READ_SIZE, not Twisted's 64 KiB: a big
        # RETR then costs a quarter of the system calls and of the chunks
        # handed through (the TCP transport; under TLS, the one beneath it).
        tcp = getattr(self.transport, "transport", None) or self.transport
        if isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = READ_SIZE
        self._arm()

    def _take_waiting(self) -> list[_Command]:
        waiting = [*self._sent, *self._queue]
        self._sent.clear()
        self._queue.clear()
        return waiting

    @property
    def idle(self) -> bool:
        return not self._sent and not self._queue and self.lost is None

    @property
    def _current(self) -> _Command | None:
        """The command whose reply comes next."""
        return self._sent[0] if self._sent else None

    # -- commands

    def simple(self, line: bytes) -> defer.Deferred[bytes]:
        """Send C{line}; fires with the text after C{+OK}, fails with
        L{UpstreamError} for C{-ERR}."""
        return self._enqueue(_Command(line, "simple"))

    def listing(self, line: bytes) -> defer.Deferred[list[bytes]]:
        """Send C{line} (UIDL, LIST); fires with the lines of its
        multi-line reply."""
        return self._enqueue(_Command(line, "listing"))

    def stream(self, line: bytes, sink: Sink) -> defer.Deferred[bytes]:
        """Send C{line} (RETR, TOP); fires with the C{+OK} text once the
        reply starts; its octets then go to C{sink}."""
        return self._enqueue(_Command(line, "stream", sink))

    def pipeline(self, lines: list[bytes]) -> list[defer.Deferred[bytes]]:
        """Send C{lines}, each as for L{simple}, in one write, and then
        read their replies in order: only for an upstream that offers
        PIPELINING (RFC 2449)."""
        if self.lost is not None:
            return [defer.fail(self.lost) for _ in lines]
        batch = object()
        commands = [_Command(line, "simple", batch=batch) for line in lines]
        self._queue.extend(commands)
        self._send_next()
        return [command.deferred for command in commands]

    def _enqueue(self, command: _Command) -> defer.Deferred[Any]:
        if self.lost is not None:
            return defer.fail(self.lost)
        self._queue.append(command)
        self._send_next()
        return command.deferred

    def _send_next(self) -> None:
        if self._sent or not self._queue or not self._greeted:
            return
        first = self._queue.popleft()
        self._sent.append(first)
        while first.batch is not None and self._queue and self._queue[0].batch is first.batch:
            self._sent.append(self._queue.popleft())
        assert self.transport is not None
        self.transport.write(b"".join(command.line + b"\r\n" for command in self._sent))
        self._arm()

    # -- replies

    def dataReceived(self, data: bytes) -> None:
        if self._current is not None or not self._greeted:
            self._arm()
        command = self._current
        if command is not None and command.decoder is not None:
            self._body(command, data)
            return
        self._buffer += data
        self._lines()

    def _lines(self) -> None:
        while True:
            command = self._current
            if command is not None and command.decoder is not None:
                data, self._buffer = self._buffer, b""
                if data:
                    self._body(command, data)
                return
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._protocol_error(f"a status line longer than {MAX_LINE} octets")
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
            if not self._greeted:
                self._greeted = True
                if line.startswith(b"+OK"):
                    self._disarm()
                    self.greeting.callback(line[4:])
                    self._send_next()
                else:
                    self.greeting.errback(UpstreamError(line[5:] if line.startswith(b"-ERR")
                                                        else line))
                continue
            if command is None:
                self._protocol_error("a reply nobody asked for")
                return
            self._status(command, line)

    def _status(self, command: _Command, line: bytes) -> None:
        if line.startswith(b"+OK"):
            text = line[4:]
            if command.kind == "simple":
                self._complete(command)
                command.deferred.callback(text)
                return
            if command.kind == "stream":
                command.decoder = WireScanner()
                command.deferred.callback(text)
            else:
                command.decoder = DotDecoder()
            return
        if line.startswith(b"-ERR"):
            self._complete(command)
            command.deferred.errback(UpstreamError(line[5:]))
            return
        self._protocol_error("a reply that is neither +OK nor -ERR")

    def _body(self, command: _Command, data: bytes) -> None:
        assert command.decoder is not None
        octets, rest = command.decoder.feed(data)
        if command.kind == "listing":
            command.listing += octets
            if len(command.listing) > MAX_LISTING:
                self._protocol_error(f"a listing over {MAX_LISTING} octets")
                return
        elif octets and command.sink is not None:
            command.sink.data(octets)
        if not command.decoder.done:
            return
        self._complete(command)
        if command.kind == "listing":
            command.deferred.callback(bytes(command.listing).split(b"\r\n")[:-1])
        elif command.sink is not None:
            command.sink.end()
        self._buffer = rest + self._buffer
        self._lines()

    def _complete(self, command: _Command) -> None:
        """C{command}'s reply is all in: the next one may go (or, in a
        batch, the next reply has its own deadline)."""
        assert self._sent and self._sent[0] is command
        self._sent.popleft()
        self._disarm()
        if self._sent:
            self._arm()
        else:
            self._send_next()

    def _fail(self, command: _Command, failure: Failure) -> None:
        if command.kind == "stream" and command.decoder is not None:
            # Its Deferred fired at the +OK: the sink is who waits now.
            if command.sink is not None:
                command.sink.failed(failure)
            return
        command.deferred.errback(failure)

