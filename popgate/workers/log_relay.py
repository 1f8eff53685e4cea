"""
A worker's log, written where the first process writes its own.

Only the first process knows where twistd sends the log (C{--logfile},
C{--syslog}, standard output; a daemon's standard output is
C{/dev/null}), and only it holds the log file that twistd rotates.  So a
worker formats its lines itself (L{popgate.logs.worker_log}: the same
format, marked with its number) and writes them to its standard output,
a pipe to the first process; there a L{LineRelay} per worker hands each
complete line, unchanged, to the first process's sink
(L{popgate.logs.ServerLog.sink}).  What a worker writes to its standard
error (a crash before its log starts) becomes the first process's own
log lines.

Bounded: a relay keeps at most one unfinished line of L{MAX_LINE} bytes;
a longer line is dropped, and counted, not kept.  A worker that writes
faster than the first process can write waits: its pipe is full.
"""

from __future__ import annotations

import os
import threading

from twisted.logger import Logger

from popgate.logs import LineSink

log = Logger()

#: The longest line a worker may send, in bytes (its newline excluded).
MAX_LINE = 64 * 1024


class LoggedSink:
    """
    A sink that logs each line as one of the first process's own events:
    a worker's standard error, and its log when the first process has no
    sink (twistd's C{--logger}, or not run by twistd).
    """

    form = "lines"

    def __init__(self, number: int, level: str = "info") -> None:
        self.number = number
        self.emit = getattr(log, level)

    def write_lines(self, text: str) -> None:
        for line in text.splitlines():
            self.emit("worker {number}: {line}", number=self.number, line=line)


class LineRelay:
    """The first process's end of one worker's pipe: complete lines, as
    they are, to C{sink}; at most L{MAX_LINE} bytes kept in between."""

    def __init__(self, sink: LineSink, number: int,
                 max_line: int = MAX_LINE) -> None:
        self.sink = sink
        self.number = number
        self.max_line = max_line
        #: How many lines were too long and dropped.
        self.dropped = 0
        self._partial = b""
        self._discarding = False  # inside a line already too long

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        rest = lines.pop()
        whole = []
        for line in lines:
            if self._discarding:  # the end of a line too long to keep
                self._discarding = False
                self._drop()
            elif len(line) > self.max_line:
                self._drop()
            else:
                whole.append(line)
        if self._discarding or len(rest) > self.max_line:
            self._discarding, rest = True, b""
        self._partial = rest
        if whole:
            self._write(b"\n".join(whole) + b"\n")

    def end(self) -> None:
        """The worker is gone: its last, unfinished line too."""
        if self._partial:
            self._write(self._partial + b"\n")
        elif self._discarding:
            self._drop()
        self._partial, self._discarding = b"", False

    def _write(self, data: bytes) -> None:
        try:
            self.sink.write_lines(data.decode("utf-8", "replace"))
        except Exception:  # a log line must never stop the first process
            log.failure("writing worker {number}'s log lines", number=self.number)

    def _drop(self) -> None:
        self.dropped += 1
        log.warn("worker {number}: a log line longer than {max} bytes dropped ({count} so far)",
                 number=self.number, max=self.max_line, count=self.dropped)


class PipeWriter:
    """
    A worker's end: whole lines written to the pipe C{fd} (blocking, so a
    worker waits while the pipe is full), one thread at a time; quiet once
    the first process is gone (its pipe closed), since the worker stops
    then anyway.
    """

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.broken = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            while data and not self.broken:
                try:
                    data = data[os.write(self.fd, data):]
                except OSError:
                    self.broken = True

    def flush(self) -> None:
        """Nothing is buffered."""


def relay_for(sink: LineSink | None, number: int) -> LineRelay:
    """The relay of worker C{number}'s log: to C{sink}, or logged."""
    return LineRelay(sink if sink is not None else LoggedSink(number), number)
