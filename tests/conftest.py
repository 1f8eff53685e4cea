"""
Shared pytest set-up.

Tests that need an outside service (slapd, PostgreSQL, MariaDB, curl, ...)
call L{tests.services.need} which skips with the reason when it is missing.
With C{POPGATE_REQUIRE_SERVICES=1} (as CI sets it) any skip is a failure, so
nothing can silently go untested.

Tests run in memory unless marked C{integration} (C{pytest -m integration}
runs only those, C{-m "not integration"} only the fast rest): an unmarked
test that connects or binds a network socket or starts a process fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Generator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

REQUIRE_SERVICES = os.environ.get("POPGATE_REQUIRE_SERVICES") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but POPGATE_REQUIRE_SERVICES=1: {reason}"



# -- the integration guard
#
# A test not marked C{integration} runs in memory: a non-UNIX socket it
# connects or binds, or a process it starts, fails it (socketpair and
# AF_UNIX stay allowed).  The guard is on while the test's fixtures are set
# up (session and module ones too: a slapd started for an unmarked test is
# caught) and while it runs.  The failure is raised where the call is made
# and, in case the code under test swallowed it (a reactor callback, an
# C{except OSError}), again when the phase ends.

_HINT = "; mark it integration (pytest.mark.integration) or run it in memory"
_PROCESS_CALLS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system")


def _in_memory(monkeypatch: pytest.MonkeyPatch, violations: list[str]) -> None:
    """Make network sockets and new processes fail, recording each attempt."""

    def refuse(what: str) -> None:
        violations.append(what)
        pytest.fail(f"a test not marked integration {what}{_HINT}")

    def guard_socket(name: str) -> None:
        original = getattr(socket.socket, name)

        def guarded(self: socket.socket, address: object, *a: object) -> object:
            family = self.family
            if family != socket.AF_UNIX:
                refuse(f"called socket.{name}({address!r}) on {getattr(family, 'name', family)}")
            return original(self, address, *a)

        monkeypatch.setattr(socket.socket, name, guarded)

    for name in ("connect", "connect_ex", "bind"):
        guard_socket(name)

    def guarded_popen(self: object, args: object, *a: object, **kw: object) -> None:
        refuse(f"started a process: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    for name in _PROCESS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, lambda *a, _name=name, **kw: refuse(f"called os.{_name}{a!r}"))


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker("integration") is not None:
        return (yield)
    violations: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        _in_memory(monkeypatch, violations)
        result = yield
    if violations:
        pytest.fail(f"a test not marked integration {violations[0]} (the code under test caught "
                    f"the failure){_HINT}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.fixture()
def log_events() -> Generator[list[dict[str, Any]], None, None]:
    """Everything logged during a test; no error may be among it (a module
    that wants it for every test says C{pytestmark =
    pytest.mark.usefixtures("log_events")})."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "log_failure" in e or e.get("isError")]


@pytest.fixture
def captured() -> Generator[list[dict[str, Any]], None, None]:
    """Every event of popgate's catalogue (L{popgate.events}) emitted
    during the test."""
    from popgate import events

    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("event") in events.CATALOGUE:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)
