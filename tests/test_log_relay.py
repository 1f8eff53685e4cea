"""
The --workers processes' log: each worker formats its lines as the first
process would (marked with its number) and writes them to a pipe; the
first process writes each complete line, unchanged, to its own sink,
keeping a bounded buffer.  Over real twistd processes: L{tests.test_workers}
and L{tests.test_fail2ban}.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import syslog
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent

from popgate import logs
from popgate.workers import child
from popgate.workers.log_relay import MAX_LINE, LineRelay, LoggedSink, PipeWriter
from popgate.workers.pool import LOG_FORM_OPTION, WorkerPool, _Worker
from tests.popgate_server import REPO


def filter_prefix() -> re.Pattern[str]:
    """The shipped fail2ban filter's C{prefregex}, as Python reads it."""
    conf = configparser.ConfigParser()
    conf.read(os.path.join(REPO, "etc", "fail2ban", "filter.d", "popgate.conf"))
    pattern = conf["Definition"]["prefregex"]
    return re.compile(pattern.replace("<F-CONTENT>", "(?P<content>").replace("</F-CONTENT>", ")"))


FILTER_PREFIX = filter_prefix()


class Lines:
    """A sink that keeps what it is given."""

    form = "lines"

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_lines(self, text: str) -> None:
        self.written.append(text)


def login_failed(observer: Any) -> None:
    Logger(namespace="popgate.pop3.protocol.POP3ServerProtocol", observer=observer).info(
        "pop3-login: Login failed: reason=bad-password, user=<a>, method=USER, rip=192.0.2.1, ",
        event="pop3.login")


# -- the first process's end


def test_complete_lines_are_written_unchanged_and_a_split_one_waits() -> None:
    sink = Lines()
    relay = LineRelay(sink, 1)
    relay.data_received(b"one\ntwo\nthr")
    assert sink.written == ["one\ntwo\n"]
    relay.data_received(b"ee\n")
    relay.data_received(b"\tcontinued\xff\n")  # bad UTF-8 is replaced, not fatal
    assert sink.written == ["one\ntwo\n", "three\n", "\tcontinued\ufffd\n"]
    relay.data_received(b"last words")
    relay.end()  # the worker died mid-line: its last words still count
    assert sink.written[-1] == "last words\n"


def test_a_line_too_long_is_dropped_counted_and_never_kept() -> None:
    sink = Lines()
    relay = LineRelay(sink, 3, max_line=100)
    with capturedLogs() as events:
        for _ in range(50):  # 50 KB without a newline: the buffer stays bounded
            relay.data_received(b"x" * 1000)
            assert len(relay._partial) <= 100
        relay.data_received(b"x\nafter\n" + b"y" * 101 + b"\nok\n")
    assert sink.written == ["after\nok\n"]
    assert relay.dropped == 2
    assert [formatEvent(e) for e in events] == [
        "worker 3: a log line longer than 100 bytes dropped (1 so far)",
        "worker 3: a log line longer than 100 bytes dropped (2 so far)"]
    assert MAX_LINE == 64 * 1024


def test_a_failing_sink_is_logged_not_raised() -> None:
    class Broken(Lines):
        def write_lines(self, text: str) -> None:
            raise OSError("disk full")

    with capturedLogs() as events:
        LineRelay(Broken(), 2).data_received(b"x\n")
    assert [e.get("log_failure") is not None for e in events] == [True]


def test_without_a_sink_and_from_stderr_lines_are_the_first_process_events() -> None:
    with capturedLogs() as events:
        LineRelay(LoggedSink(2, "warn"), 2).data_received(b"Traceback (most recent call last):\n")
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.warn, "worker 2: Traceback (most recent call last):")]


def test_the_file_sink_writes_and_flushes() -> None:
    out = io.StringIO()
    sink = logs.file_log(out).sink
    assert sink is not None and sink.form == "lines"
    sink.write_lines("a\nb\n")
    assert out.getvalue() == "a\nb\n"


def test_the_syslog_sink_sends_each_line_with_its_priority() -> None:
    sent: list[tuple[int, str]] = []
    sink = logs.SyslogSink(lambda priority, message: sent.append((priority, message)))
    sink.write_lines("<6>[worker=1] hello\n<1>[worker=1] broke\n\tat line 2\n<9999>odd\n")
    assert sent == [(6, "[worker=1] hello"), (1, "[worker=1] broke"),
                    (syslog.LOG_INFO, "\tat line 2"), (syslog.LOG_INFO, "<9999>odd")]


# -- the worker's end


def test_a_worker_text_line_names_it_in_the_one_bracket_fail2ban_skips() -> None:
    first, worker = io.StringIO(), io.StringIO()
    login_failed(logs.file_log(first))
    login_failed(logs.worker_log("lines", worker, "text", "info", 2))
    assert "[popgate.pop3.protocol.POP3ServerProtocol#info] pop3-login" in first.getvalue()
    line = worker.getvalue()
    assert "[worker=2 popgate.pop3.protocol.POP3ServerProtocol#info] pop3-login" in line
    assert FILTER_PREFIX.match(line.rstrip("\n")) and line.count("\n") == 1
    # A legacy event's system is kept after the number.
    Logger(namespace="x", observer=logs.worker_log("lines", worker, "text", "info", 2)).info(
        "hi", log_system="POP3,7,127.0.0.1")
    assert worker.getvalue().splitlines()[1].endswith(" [worker=2 POP3,7,127.0.0.1] hi")


def test_a_worker_json_line_has_its_number_after_the_fixed_keys() -> None:
    out = io.StringIO()
    login_failed(logs.worker_log("lines", out, "json", "info", 1))
    record = json.loads(out.getvalue())
    assert list(record)[:6] == ["time", "level", "event", "text", "namespace", "worker"]
    assert record["worker"] == 1 and FILTER_PREFIX.match(out.getvalue().rstrip("\n"))
    first = io.StringIO()
    login_failed(logs.file_log(first, "json"))
    assert "worker" not in json.loads(first.getvalue())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_worker_under_syslog_writes_priority_lines_for_the_first_process(
        log_format: str) -> None:
    out = io.StringIO()
    observer = logs.worker_log("syslog", out, log_format, "info", 1)
    assert observer.sink is None  # a worker has no syslog connection of its own
    login_failed(observer)
    Logger(namespace="x", observer=observer).error("broke\nat line 2")
    lines = out.getvalue().splitlines()
    if log_format == "text":
        assert lines[0] == ("<6>[worker=1] pop3-login: Login failed: reason=bad-password, "
                            "user=<a>, method=USER, rip=192.0.2.1, ")
        assert lines[1:] == ["<1>[worker=1] broke", "<1>[worker=1] \tat line 2"]
    else:
        # As the first process's syslog lines: "[-] {...}" there.
        prefix = "<6>[worker=1] "
        assert lines[0].startswith(prefix + "{")
        assert json.loads(lines[0][len(prefix):])["worker"] == 1
        assert lines[1].startswith("<1>[worker=1] {") and len(lines) == 2
    sent: list[tuple[int, str]] = []
    logs.SyslogSink(lambda p, m: sent.append((p, m))).write_lines(out.getvalue())
    assert [p for p, _ in sent] == [syslog.LOG_INFO] + [syslog.LOG_ALERT] * (len(lines) - 1)
    # As syslog writes it (less the date, which fail2ban cuts first): the
    # filter still finds the login.
    assert FILTER_PREFIX.match(f"mail twistd[12]: {sent[0][1]}")


def test_the_worker_level_filters_what_it_sends() -> None:
    out = io.StringIO()
    observer = logs.worker_log("lines", out, "text", "warn", 1)
    login_failed(observer)
    assert out.getvalue() == ""
    with pytest.raises(ValueError):
        logs.worker_log("carrier-pigeon", out, "text", "info", 1)


def test_the_pipe_writer_writes_whole_lines_and_goes_quiet_when_the_parent_is_gone() -> None:
    read, write = os.pipe()
    try:
        writer = PipeWriter(write)
        assert os.get_blocking(write)  # a full pipe makes the worker wait, not fail
        writer.write("caf\u00e9\n")
        assert os.read(read, 100) == "caf\u00e9\n".encode()
        os.close(read)
        writer.write("nobody reads this\n")  # EPIPE: no exception, no retry loop
        assert writer.broken
        writer.write("nor this\n")
    finally:
        os.close(write)


def test_the_parent_watcher_reads_stdin_alone() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    stopped: list[bool] = []
    reactor.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    hangups: list[int] = []
    read, write = os.pipe()
    try:
        reader = child.watch_parent(child.ParentWatcher(reactor, lambda: hangups.append(1)),
                                    reactor, read)
        assert reader in reactor.readers and not reactor.writers
        os.write(write, b"hangup\n")
        reader.doRead()
        assert hangups == [1]
        os.close(write)
        write = -1
        reader.connectionLost(reader.doRead())  # the parent's end: the worker stops
        assert stopped == [True]
    finally:
        if write >= 0:
            os.close(write)


def test_the_log_form_is_the_first_argument() -> None:
    assert child.split_log_form([f"{LOG_FORM_OPTION}syslog", "--workers", "2"]) == (
        "syslog", ["--workers", "2"])
    assert child.split_log_form(["--workers", "2"]) == ("lines", ["--workers", "2"])


# -- the pool


class SpawningReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, argv: list[str],
                     **kw: Any) -> Any:
        self.spawned.append((protocol, argv, kw))
        return Transport()


class Transport:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Ended:
    def getErrorMessage(self) -> str:
        return "terminated"


def test_the_pool_tells_each_worker_the_form_and_writes_its_lines_to_the_sink() -> None:
    reactor = SpawningReactor()
    sent: list[tuple[int, str]] = []
    pool = WorkerPool(reactor, 3, ["--workers", "3"],
                      log_sink=logs.SyslogSink(lambda p, m: sent.append((p, m))))
    pool.startService()
    (first, argv, kw), _ = reactor.spawned
    assert argv[3] == f"{LOG_FORM_OPTION}syslog" and argv[4:6] == ["--workers", "3"]
    assert kw["childFDs"] == {0: "w", 1: "r", 2: "r"}  # nothing goes to our own stdout
    assert isinstance(first, _Worker)
    first.outReceived(b"<6>[worker=1] hello\n<6>[worker=1] hal")
    assert sent == [(6, "[worker=1] hello")]
    with capturedLogs() as events:
        first.errReceived(b"boom\n")
    assert [formatEvent(e) for e in events] == ["worker 1: boom"]
    # Without a sink (twistd's --logger): lines, logged as our own events.
    bare = SpawningReactor()
    WorkerPool(bare, 2, []).startService()
    ((worker, argv, _),) = bare.spawned
    assert argv[3] == f"{LOG_FORM_OPTION}lines"
    with capturedLogs() as events:
        worker.outReceived(b"a line\n")
    assert [formatEvent(e) for e in events] == ["worker 1: a line"]


def test_stopping_waits_for_the_workers_last_lines_but_not_forever() -> None:
    reactor = SpawningReactor()
    sink = Lines()
    pool = WorkerPool(reactor, 3, [], log_sink=sink)
    pool.startService()
    workers = [protocol for protocol, _, _ in reactor.spawned]
    stopped = pool.stopService()
    assert isinstance(stopped, defer.Deferred) and not stopped.called
    workers[0].outReceived(b"Main loop terminated.")
    workers[0].processEnded(Ended())
    assert sink.written == ["Main loop terminated.\n"] and not stopped.called
    workers[1].processEnded(Ended())
    assert stopped.called
    # A worker that never ends does not hold up the shutdown.
    other = WorkerPool(reactor, 2, [], log_sink=sink)
    other.startService()
    late = other.stopService()
    assert isinstance(late, defer.Deferred) and not late.called
    reactor.advance(5)
    assert late.called
    reactor.spawned[-1][0].processEnded(Ended())  # after the wait: no error
