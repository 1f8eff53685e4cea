"""
The guard of C{tests/conftest.py}: a test not marked C{integration} that
connects or binds a network socket or starts a process fails, saying to
mark it; UNIX sockets and socketpairs stay allowed.  The refusals are
checked with a guard of their own inside the test's, so the test's own
guard sees nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import conftest

Refused = pytest.fail.Exception


class _Item:
    """Just enough of a pytest item for L{conftest._guarded}."""

    def __init__(self, marked: bool) -> None:
        self.marked = marked

    def get_closest_marker(self, name: str) -> Any:
        return object() if self.marked and name == "integration" else None


def test_network_sockets_and_processes_are_refused(tmp_path: Path) -> None:
    violations: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        conftest._in_memory(monkeypatch, violations)
        with socket.socket() as s, pytest.raises(Refused, match=r"socket\.bind.*AF_INET; mark it integration"):
            s.bind(("127.0.0.1", 0))
        with socket.socket() as s, pytest.raises(Refused, match=r"socket\.connect_ex"):
            s.connect_ex(("127.0.0.1", 9))
        with pytest.raises(Refused, match=r"socket\.connect.*AF_INET6"):
            socket.create_connection(("::1", 9))
        with pytest.raises(Refused, match=r"started a process: \['true'\]"):
            subprocess.run(["true"])
        with pytest.raises(Refused, match=r"os\.fork"):
            os.fork()
        # What stays allowed: socketpairs and UNIX sockets.
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"x")
            assert b.recv(1) == b"x"
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(str(tmp_path / "s"))
            server.listen()
            client.connect(str(tmp_path / "s"))
    assert len(violations) == 5


def _unguarded_bind() -> Any:
    return socket.socket.__mro__[1].bind  # type: ignore[attr-defined]


def test_this_unmarked_test_runs_guarded() -> None:
    assert socket.socket.bind is not _unguarded_bind()
    assert "connect" in socket.socket.__dict__ and "__init__" in subprocess.Popen.__dict__


@pytest.mark.integration
def test_an_integration_test_runs_unguarded() -> None:
    assert socket.socket.bind is _unguarded_bind()
    assert "connect" not in socket.socket.__dict__


def test_a_refusal_the_code_under_test_swallows_still_fails_the_test() -> None:
    phase = conftest._guarded(_Item(marked=False))
    next(phase)
    try:  # code that catches everything, as a reactor callback might
        socket.create_connection(("127.0.0.1", 9))
    except BaseException:
        pass
    with pytest.raises(Refused, match="caught the failure.*mark it integration"):
        phase.send(None)
    assert socket.socket.bind is not _unguarded_bind()  # only the outer guard left


def test_a_marked_phase_is_left_alone() -> None:
    outer = socket.socket.bind
    phase = conftest._guarded(_Item(marked=True))
    next(phase)
    assert socket.socket.bind is outer  # no guard of its own
    with pytest.raises(StopIteration) as stop:
        phase.send("result")
    assert stop.value.value == "result"
