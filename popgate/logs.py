"""
Where a popgate server's log goes, and how it looks: C{--log-format
text|json} and C{--log-level}.

twistd picks the destination (C{--logfile}, C{--syslog}, standard output
with C{-n}) and would write its own text lines there; popgate replaces
that observer with a L{ServerLog} on the same destination, through the
application's C{ILogObserver} component (the twistd way: see
L{install_on}).  twistd's own C{--logger} still wins over it.

The JSON format is popgate's own, not Twisted's C{jsonFileLogObserver}:
that one writes every key of an event (loggers, format strings, objects
it cannot serialise) after an RS character, which suits replaying events
into Twisted but gives log tools no stable keys.  The keys are listed in
L{popgate.events}.

The level filter applies to what is written only: other observers (the
metrics) see every event, debug ones included.

The C{--workers} processes format their lines here too, marked with their
number (C{[worker=N NAMESPACE#LEVEL]}, C{"worker": N}), and send them to
the first process, which writes them unchanged to its own destination:
its L{ServerLog.sink} (see L{popgate.workers.log_relay}).
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Protocol, cast

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.logfile import LogFile
from twisted.python.syslog import SyslogObserver
from zope.interface import implementer

from popgate.events import CATALOGUE

#: The values of C{--log-level}.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
    "error": LogLevel.error,
}
#: The values of C{--log-format}.
FORMATS = ("text", "json")


def json_line(event: LogEvent, worker: int = 0) -> str:
    """One event as one line of JSON (the keys of L{popgate.events}), with
    C{"worker": N} after C{namespace} from a C{--workers} process."""
    level = event.get("log_level")
    name = event.get("event")
    spec = CATALOGUE.get(name) if isinstance(name, str) else None
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": (datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
                 .replace("+00:00", "Z") if isinstance(when, (int, float)) else None),
        "level": getattr(level, "name", "info"),
        "event": name if spec is not None else "log",
        "text": event_text(event),
        "namespace": event.get("log_namespace", "-"),
    }
    if worker:
        record["worker"] = worker
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a log line must never fail
            record["traceback"] = repr(failure)
    if spec is not None:
        for f in spec.fields:
            record[f.name] = event.get(f.name)
    return json.dumps(record, default=str) + "\n"


def event_text(event: LogEvent) -> str | None:
    """The event's text: rendered once by L{popgate.events.emit}
    (C{log_text}), else by Twisted's formatter (events of other code)."""
    text = event.get("log_text")
    if isinstance(text, str):
        return text
    return formatEvent(event)


class _SecondClock:
    """twistd's timestamp (RFC 3339 to the second, local time), made once
    per second rather than once per line."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


_timestamp = _SecondClock()


def text_line(event: LogEvent, worker: int = 0) -> str | None:
    """One event as twistd writes it: C{TIME [NAMESPACE#LEVEL] TEXT}, or
    C{TIME [worker=N NAMESPACE#LEVEL] TEXT} from a C{--workers} process
    (still one bracket, which the fail2ban filter skips)."""
    if worker:
        level = event.get("log_level")
        system = event.get("log_system") or (
            f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}")
        event = {**event, "log_system": f"worker={worker} {system}"}
    text = event.get("log_text")
    if isinstance(text, str) and "log_failure" not in event:
        # formatEventAsClassicLogText's line, without its formatter.
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        text = text.replace("\n", "\n\t")
        return f"{_timestamp(event.get('log_time'))} [{system}] {text}\n"
    return formatEventAsClassicLogText(event)


class FileSink:
    """
    Where a L{ServerLog} writes lines to a file (C{--logfile}, with
    twistd's L{LogFile} rotation, or standard output): the workers' lines
    are written there unchanged too.
    """

    #: How a worker must send its lines for this sink (L{worker_log}).
    form = "lines"

    def __init__(self, out: IO[Any]) -> None:
        self.out = out

    def write_lines(self, text: str) -> None:
        """Write complete lines, as they are."""
        self.out.write(text)
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()


_PRIORITY = re.compile(r"<(\d{1,4})>")


class SyslogSink:
    """
    Where a L{ServerLog} sends lines to syslog (C{--syslog}): a worker's
    line is C{<PRIORITY>MESSAGE}, sent with that priority through the
    same syslog connection the first process opened.
    """

    form = "syslog"

    def __init__(self, send: Callable[[int, str], Any]) -> None:
        self.send = send

    def write_lines(self, text: str) -> None:
        """Send each line; one without a priority at C{LOG_INFO}."""
        import syslog

        for line in text.splitlines():
            match = _PRIORITY.match(line)
            priority = int(match.group(1)) if match else syslog.LOG_INFO
            if match and priority < 1024:
                line = line[match.end():]
            else:
                priority = syslog.LOG_INFO
            self.send(priority, line)


class LineSink(Protocol):
    """What takes the lines the C{--workers} processes send
    (L{ServerLog.sink}): L{FileSink}, L{SyslogSink}."""

    #: How a worker must write its lines for it (L{worker_log}'s C{form}).
    form: str

    def write_lines(self, text: str) -> None:
        """Write C{text}, one or more complete lines, unchanged."""


@implementer(ILogObserver)
class ServerLog:
    """
    The observer of a running server: events at C{level} or above go to
    C{writer} (see L{file_log}, L{syslog_log}).  L{set_level} changes the
    level live (a reload).  C{sink} writes the C{--workers} processes'
    lines to the same destination.
    """

    def __init__(self, writer: ILogObserver, level: str = "info",
                 sink: LineSink | None = None) -> None:
        # One level for every namespace: a comparison, not Twisted's
        # per-namespace predicate (a dictionary walk per event).
        self._writer = writer
        self._minimum = LEVELS[level]
        self.level = level
        self.sink = sink

    def set_level(self, level: str) -> None:
        """Write events at C{level} and above from now on."""
        self._minimum = LEVELS[level]
        self.level = level

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        # As LogLevelFilterPredicate: an event without a level is dropped.
        if level is not None and not level < self._minimum:
            self._writer(event)


def file_log(out: IO[Any], log_format: str = "text", level: str = "info",
             worker: int = 0) -> ServerLog:
    """A L{ServerLog} writing C{log_format} lines to the file C{out}
    (marked as worker C{worker}'s, unless 0)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    line = json_line if log_format == "json" else text_line

    def format_event(event: LogEvent) -> str | None:
        return line(event, worker)

    return ServerLog(FileLogObserver(out, format_event), level, FileSink(out))


def syslog_log(prefix: str, log_format: str = "text", level: str = "info",
               worker: int = 0, relay_to: IO[Any] | None = None) -> ServerLog:
    """
    A L{ServerLog} for twistd's C{--syslog}: Twisted's syslog observer
    (syslog adds the time; the priority follows the level); JSON lines
    are sent as the message.  A worker (C{worker}, not 0) writes each
    message as a C{<PRIORITY>MESSAGE} line to C{relay_to}, its pipe to
    the first process (L{SyslogSink}), instead.
    """
    syslog = SyslogObserver(prefix) if relay_to is None else _RelayedSyslog(relay_to)
    legacy = LegacyLogObserverWrapper(cast(legacy_log.ILogObserver, syslog.emit))
    marked = {"log_system": f"worker={worker}"} if worker else {}

    def send(event: LogEvent) -> None:
        # A copy: the wrapper adds legacy keys to the event it is given,
        # which the other observers share.
        mark = marked
        if worker and event.get("log_system"):
            mark = {"log_system": f"worker={worker} {event['log_system']}"}
        if log_format == "text":
            legacy({**event, **mark})
            return
        line = json_line(event, worker).rstrip("\n")
        legacy({**{k: v for k, v in event.items() if k != "log_failure"}, **mark,
                "log_format": "{popgate_json}", "popgate_json": line})

    sink = SyslogSink(syslog.syslog) if relay_to is None else None
    return ServerLog(cast(ILogObserver, send), level, sink)


class _RelayedSyslog(SyslogObserver):
    """Twisted's syslog observer (its priorities, its one message per
    line), writing C{<PRIORITY>MESSAGE} lines to a worker's pipe instead
    of calling syslog: the first process sends them (L{SyslogSink})."""

    def __init__(self, out: IO[Any]) -> None:  # no openlog: the parent did
        self.out = out

    def syslog(self, priority: int, message: str) -> None:
        self.out.write(f"<{priority}>{message}\n")


#: How a worker sends its lines (L{worker_log}): C{lines} for a file or
#: standard output, C{syslog} for syslog.
FORMS = ("lines", "syslog")


def worker_log(form: str, out: IO[Any], log_format: str, level: str,
               worker: int) -> ServerLog:
    """
    The observer of C{--workers} process C{worker}: its lines, marked with
    its number, as the first process's sink of C{form} takes them, to
    C{out} (the pipe to the first process).
    """
    if form == "syslog":
        return syslog_log("", log_format, level, worker, relay_to=out)
    if form != "lines":
        raise ValueError(f"log form {form!r} is not one of {', '.join(FORMS)}")
    return file_log(out, log_format, level, worker)


def twistd_log(twistd: Mapping[str, Any], log_format: str, level: str,
               reactor: Any) -> ServerLog | None:
    """
    The L{ServerLog} for where twistd's options send the log, opened as
    twistd would: standard output with C{-n} and no C{--logfile} (or
    C{--logfile=-}), else the file (C{twistd.log} by default), rotated at
    1 MB and on SIGUSR1; syslog with C{--syslog}.  None with C{--logger}:
    twistd's own observer wins then.

    @raise usage.UsageError: C{--logfile=-} without C{-n}, as twistd says.
    """
    if twistd.get("logger"):
        return None
    if twistd.get("syslog"):
        return syslog_log(twistd.get("prefix") or "twisted", log_format, level)
    name = twistd.get("logfile") or ""
    nodaemon = bool(twistd.get("nodaemon"))
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            raise usage.UsageError("daemons cannot log to stdout: give --logfile FILE or -n")
        return file_log(sys.stdout, log_format, level)
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum: int, frame: Any) -> None:
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return file_log(log_file, log_format, level)


def install_on(application: Any, observer: ILogObserver) -> bool:
    """
    Make C{observer} twistd's log observer for C{application}: twistd
    starts logging to the application's C{ILogObserver} component, after
    C{makeService} has returned and the application holds the service.
    False when C{application} is no twistd application.
    """
    set_component = getattr(application, "setComponent", None)
    if set_component is None:
        return False
    set_component(ILogObserver, observer)
    return True
