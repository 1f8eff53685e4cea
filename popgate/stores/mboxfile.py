"""
The mbox format as Postfix local(8) and Exim write it on Debian, and as
popgate reads and appends it.

- A message starts with a C{From sender date} line (the From_ line) at the
  start of a line; every other line that would start with C{From } was
  quoted by the writer, so every unquoted C{From } line is a separator.
- Writers end each message with one blank line; that line belongs to the
  separator, not to the message, and is dropped on reading.
- Quoting is read as mboxrd: one C{>} is removed from every line matching
  C{>+From } (C{>From } reads as C{From }, C{>>From } as C{>From }).
  Postfix and Exim quote the mboxo way (only C{From } gains a C{>}), so a
  message line that really began with C{>From } reads back as C{From }:
  mboxo cannot tell them apart, and mboxrd is exact for what popgate
  itself writes.
- C{Content-Length:} headers are ignored, as the Debian MTAs and mutt
  ignore them.

Everything here reads in bounded pieces, so an overlong line or a huge
message never needs more than a few chunks of memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from zope.interface import implementer

from popgate.interfaces import ICachedMessageSource
from popgate.maildrop import is_valid_uid
from popgate.stores import nowait
from popgate.wire import WireSizer

CHUNK = 1 << 16
_QUOTED = re.compile(rb">+From ")
_NOT_GT = re.compile(rb"[^>]")
_QUOTED_AFTER_LF = re.compile(rb"\n>(>*From )")  # (not "^" with MULTILINE: ten times slower)
_MAY_BECOME_QUOTED = re.compile(rb">+(?:F(?:r(?:o(?:m)?)?)?)?")
_TO_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
_SENDER_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


class NotAnMbox(ValueError):
    """The file does not start with a From_ line."""


@dataclass(frozen=True, slots=True)
class MboxEntry:
    """
    One message of a spool, by byte offsets into the file.

    @ivar start: the offset of its From_ line.
    @ivar body_start: the offset of the message itself.
    @ivar body_end: the end of the message (the separator blank line is
        after it).
    @ivar end: where the next message, or the snapshot, ends.
    @ivar size: octets as served by POP3: un-quoted, CRLF line ends.
    @ivar digest: SHA-1 (hex) of the From_ line and the message as stored.
    @ivar xuidl: the value of an C{X-UIDL:} header, if it has one.
    """

    start: int
    body_start: int
    body_end: int
    end: int
    size: int
    digest: str
    xuidl: bytes | None


class LineSplitter:
    """
    Cuts the bytes of a spool, fed in chunks, into lines, each with its
    offset and whether it starts a line.  A line longer than L{CHUNK} comes
    in several pieces; its first piece holds at least its first L{CHUNK}
    octets and, for a line starting with C{>}, the whole run of C{>} and
    the five octets after it, so quoting is decided the same way wherever
    the reading started.
    """

    def __init__(self, start: int) -> None:
        self._buf = b""
        self._buf_start = start
        self._at_line_start = True
        self._scanned = 0  # how much of a leading run of ">" in buf was looked at

    def feed(self, data: bytes) -> list[tuple[int, bytes, bool]]:
        """The pieces complete once C{data} (not empty) is added."""
        out = []
        buf = self._buf + data
        i = 0
        while (j := buf.find(b"\n", i)) >= 0:
            out.append((self._buf_start + i, buf[i:j + 1], self._at_line_start))
            self._at_line_start = True
            i = j + 1
        if i:
            buf = buf[i:]
            self._buf_start += i
            self._scanned = 0
        if len(buf) >= CHUNK:
            if self._at_line_start and buf[:1] == b">":
                match = _NOT_GT.search(buf, self._scanned)
                if match is None or len(buf) - match.start() < 5:
                    # The quoting of this line is not decided yet.
                    self._scanned = len(buf) if match is None else match.start()
                    self._buf = buf
                    return out
            out.append((self._buf_start, buf, self._at_line_start))
            self._at_line_start = False
            self._buf_start += len(buf)
            buf = b""
            self._scanned = 0
        self._buf = buf
        return out

    def finish(self) -> list[tuple[int, bytes, bool]]:
        """The last piece, at the end of the data."""
        buf, self._buf = self._buf, b""
        return [(self._buf_start, buf, self._at_line_start)] if buf else []


def pieces(fd: int, start: int, end: int) -> Iterator[tuple[int, bytes, bool]]:
    """The bytes of C{fd} between C{start} and C{end} as the pieces of
    L{LineSplitter}.  Blocking."""
    splitter = LineSplitter(start)
    pos = start
    while pos < end:
        data = os.pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            break
        pos += len(data)
        yield from splitter.feed(data)
    yield from splitter.finish()


def unquote(piece: bytes, at_line_start: bool) -> bytes:
    """Drop one C{>} from a line that is a quoted C{From } line (mboxrd)."""
    if at_line_start and piece[:1] == b">" and _QUOTED.match(piece):
        return piece[1:]
    return piece


class Unquoter:
    """
    L{unquote} for a message fed in chunks of any size, one regular
    expression pass per chunk instead of a Python step per line (RETR of a
    large message: the per-line way costs ten times the CPU of the rest of
    the send).  Only a last line that may still turn out to be a quoted
    C{From } line (a run of C{>}, perhaps with the start of C{From}) is
    held back for the next chunk.
    """

    def __init__(self) -> None:
        self._held = b""  # starts a line
        self._at_line_start = True

    def feed(self, data: bytes) -> bytes:
        at_start = self._at_line_start
        if self._held:
            if self._held.endswith(b">") and _NOT_GT.search(data) is None:
                self._held += data  # the run of ">" goes on: no rescan
                return b""
            data, self._held, at_start = self._held + data, b"", True
        # The last line, if it starts in this chunk, may not be decided yet.
        tail = data.rfind(b"\n") + 1
        if (tail or at_start) and tail < len(data) and _MAY_BECOME_QUOTED.fullmatch(data, tail):
            self._held, data = data[tail:], data[:tail]
            self._at_line_start = True
        else:
            self._at_line_start = tail == len(data)
        # (memchr for ">" first: most chunks have none.  A chunk is copied
        # only if it has a quoted line.)
        if b">" in data:
            if at_start and data[:1] == b">" and _QUOTED.match(data):
                data = data[1:]
            data = _QUOTED_AFTER_LF.sub(rb"\n\1", data)
        return data

    def finish(self) -> bytes:
        """What was held back, at the end of the message."""
        held, self._held = self._held, b""
        return held


def _is_blank(piece: bytes, at_line_start: bool) -> bool:
    return at_line_start and piece in (b"\n", b"\r\n")


def _is_separator(piece: bytes, at_line_start: bool) -> bool:
    return at_line_start and piece.startswith(b"From ")


class _Builder:
    """Collects one message while L{parse} walks the spool."""

    def __init__(self, start: int, from_line: bytes, body_start: int) -> None:
        self.start = start
        self.body_start = body_start
        self.body_end = body_start
        self.sizer = WireSizer()
        self.digest = hashlib.sha1(from_line)
        self.in_header = True
        self.xuidl: bytes | None = None

    def extend_from_line(self, piece: bytes) -> None:
        self.digest.update(piece)
        self.body_start += len(piece)
        self.body_end = self.body_start

    def add(self, offset: int, piece: bytes, at_line_start: bool) -> None:
        self.digest.update(piece)
        self.sizer.add(unquote(piece, at_line_start))
        self.body_end = offset + len(piece)
        if self.in_header and at_line_start:
            if piece in (b"\n", b"\r\n"):
                self.in_header = False
            elif piece[:7].lower() == b"x-uidl:" and self.xuidl is None:
                value = piece[7:].strip()
                if is_valid_uid(value):
                    self.xuidl = value

    def finish(self, end: int) -> MboxEntry:
        return MboxEntry(self.start, self.body_start, self.body_end, end,
                         self.sizer.size, self.digest.hexdigest(), self.xuidl)


def parse(fd: int, length: int, digest: hashlib._Hash | None = None) -> list[MboxEntry]:
    """
    The messages in the first C{length} octets of the spool open on C{fd}.

    @param digest: if given, fed every octet read (to detect later whether
        someone else rewrote this part of the spool).
    @raise NotAnMbox: there is text before the first From_ line.
    """
    entries: list[MboxEntry] = []
    current: _Builder | None = None
    in_from_line = False  # the From_ line is longer than one piece
    held_blank: tuple[int, bytes] | None = None  # a blank line that may be a separator's
    for offset, piece, at_line_start in pieces(fd, 0, length):
        if digest is not None:
            digest.update(piece)
        if in_from_line and current is not None:
            current.extend_from_line(piece)
            in_from_line = not piece.endswith(b"\n")
            continue
        if _is_separator(piece, at_line_start):
            if current is not None:
                entries.append(current.finish(offset))
            held_blank = None
            current = _Builder(offset, piece, offset + len(piece))
            in_from_line = not piece.endswith(b"\n")
            continue
        if current is None:
            if _is_blank(piece, at_line_start):
                continue  # blank lines before the first message are tolerated
            raise NotAnMbox(f"text before the first From_ line at offset {offset}")
        if held_blank is not None:
            current.add(held_blank[0], held_blank[1], True)
            held_blank = None
        if _is_blank(piece, at_line_start):
            held_blank = (offset, piece)
            continue
        current.add(offset, piece, at_line_start)
    if current is not None:
        entries.append(current.finish(length))
    return entries


def quote(message: bytes) -> bytes:
    """mboxrd quoting: one more C{>} before every C{>*From } line."""
    return _TO_QUOTE.sub(rb">\1", message)


def from_line(sender: str | None, now: float | None = None) -> bytes:
    """
    C{From sender Thu Jan  1 00:00:00 2026}, as Postfix and Exim write it
    (local time, asctime format); the null sender is C{MAILER-DAEMON}.
    """
    name = _SENDER_UNSAFE.sub("_", sender) if sender else "MAILER-DAEMON"
    stamp = time.asctime(time.localtime(now))
    return f"From {name} {stamp}\n".encode("utf-8", "surrogateescape")


def entry_for_append(message: bytes, sender: str | None, tail: bytes,
                     now: float | None = None) -> bytes:
    """
    The bytes to append for one message: a blank line first if the spool
    (whose last two octets are C{tail}) does not end with one, the From_
    line, the quoted message, a final newline if it lacks one, and the
    separator blank line.
    """
    if not tail or tail.endswith(b"\n\n") or tail == b"\n":
        lead = b""
    elif tail.endswith(b"\n"):
        lead = b"\n"
    else:
        lead = b"\n\n"
    body = quote(message)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return lead + from_line(sender, now) + body + b"\n"


@implementer(ICachedMessageSource)
class MessageReader:
    """
    One message of a spool, un-quoted, read a piece at a time from its own
    descriptor (a C{dup} of the maildrop's, so closing the maildrop never
    pulls it out from under a RETR): C{read} in a pool thread, L{read_cached}
    in the reactor thread for what the page cache holds.
    """

    blocking = True

    def __init__(self, fd: int, entry: MboxEntry) -> None:
        self._fd = os.dup(fd)
        self._pos = entry.body_start
        self._end = entry.body_end
        self._unquoter = Unquoter()
        self._buffer = b""  # un-quoted, not returned yet
        self._done = False

    def _fill(self, size: int, pread: Callable[[int, int, int], bytes | None]) -> None:
        """Read (C{size} octets at a time, at least L{CHUNK}) until some
        octets are buffered, the message ends, or C{pread} says it would
        wait (returns C{None})."""
        while not self._buffer and not self._done:
            if self._pos >= self._end:
                self._done = True
                self._buffer = self._unquoter.finish()
                return
            data = pread(self._fd, min(max(size, CHUNK), self._end - self._pos), self._pos)
            if data is None:
                return
            if not data:
                self._end = self._pos  # the spool is shorter than it was: end here
                continue
            self._pos += len(data)
            self._buffer = self._unquoter.feed(data)

    def _take(self, size: int) -> bytes:
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read(self, size: int = -1) -> bytes:
        if self._fd < 0:
            raise ValueError("read from a closed message")
        if size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        self._fill(size, os.pread)
        return self._take(size)

    def read_cached(self, size: int) -> bytes | None:
        if self._fd < 0:
            raise ValueError("read from a closed message")
        self._fill(size, nowait.pread_cached)
        if not self._buffer and not self._done:
            return None
        return self._take(size)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> MessageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
