"""
Password guessing against the real server: one address with 20 parallel
connections gets its guesses checked one at a time, each after a growing
penalty, while a user on another address logs in without delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.1"
USER_ADDRESS = "127.0.0.2"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PopgateProcess]:
    users = tmp_path / "users"
    users.write_text("victim:{PLAIN}correct horse\nalice:{PLAIN}alicepw\n")
    for user in ("victim", "alice"):
        for sub in ("new", "cur", "tmp"):
            (tmp_path / "mail" / user / sub).mkdir(parents=True)
    args = ["--auth", f"passwd-file:{users}", "--store", f"maildir:{tmp_path}/mail/%u",
            # The auth cache would answer repeated guesses without a check.
            "--auth-cache-ttl", "0", "--auth-cache-negative-ttl", "0"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as process:
        yield process


def guess(port: int, password: bytes, patience: float, source: str = ATTACKER) -> bytes | None:
    """One guess on a fresh connection: the answer, or None if none came
    within C{patience} seconds of PASS."""
    with RawClient(port, timeout=10, source=source) as client:
        assert client.greeting is not None
        if not client.greeting.startswith(b"+OK"):
            return None  # over the per-address connection limit
        client.cmd(b"USER victim")
        client.send(b"PASS " + password + b"\r\n")
        try:
            return client.line(timeout=patience)
        except (TimeoutError, EOFError, ConnectionError):
            return None


def attack(port: int, seconds: float, patience: float, threads: int = 20) -> list[tuple[float, bytes]]:
    """C{threads} connections guessing in parallel for C{seconds}; the
    answers received, with when they came."""
    answers: list[tuple[float, bytes]] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds
    counter = iter(range(10**6))

    def worker() -> None:
        while time.monotonic() < stop:
            with lock:
                n = next(counter)
            try:
                answer = guess(port, b"guess %d" % n,
                               min(patience, max(0.05, stop - time.monotonic())))
            except (ConnectionError, OSError, EOFError):
                answer = None
            if answer is not None:
                with lock:
                    answers.append((time.monotonic() - start, answer))

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    return answers


def test_parallel_guesses_from_one_address_are_checked_one_at_a_time(server: PopgateProcess) -> None:
    """A patient attacker: 20 connections, each waiting for its answer."""
    answers = attack(server.port, seconds=10, patience=30)
    failures = [t for t, a in answers if a.startswith(b"-ERR [AUTH]")]
    # A clean address: a first burst of at most 4 checks, each failure
    # doubling the penalty (2, 4, 8, 15 s), then one check at a time after
    # it: 4 or 5 in 10 s (before: 20 threads x 10 s / the 1 s failure
    # delay = 200).
    assert 1 <= len(failures) <= 6, answers
    assert all(a.startswith(b"-ERR") for _, a in answers)


def test_impatient_guesses_never_reach_the_check(server: PopgateProcess) -> None:
    """Giving up 150 ms after PASS (the old timing oracle: a correct
    password was answered at once) gets nothing once penalised, and even
    the correct password then waits as long as a wrong one."""
    # Two failures first: the address is penalised.
    for n in range(2):
        assert guess(server.port, b"first %d" % n, patience=30).startswith(b"-ERR [AUTH]")
    answers = attack(server.port, seconds=4, patience=0.15)
    assert answers == []
    started = time.monotonic()
    assert guess(server.port, b"correct horse", patience=30).startswith(b"+OK")
    assert time.monotonic() - started > 1.0, "a correct password is delayed like a wrong one"


def test_another_address_logs_in_at_once_during_an_attack(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("victim:{PLAIN}correct horse\nalice:{PLAIN}alicepw\n")
    for user in ("victim", "alice"):
        for sub in ("new", "cur", "tmp"):
            (tmp_path / "mail" / user / sub).mkdir(parents=True)
    args = ["--auth", f"passwd-file:{users}", "--store", f"maildir:{tmp_path}/mail/%u",
            "--auth-cache-ttl", "0", "--auth-cache-negative-ttl", "0"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        result: dict[str, list[tuple[float, bytes]]] = {}
        attacker = threading.Thread(target=lambda: result.setdefault(
            "answers", attack(server.port, seconds=6, patience=30)))
        attacker.start()
        time.sleep(3)  # the attacker's address is penalised by now
        timings = []
        for _ in range(5):
            started = time.monotonic()
            with RawClient(server.port, timeout=10, source=USER_ADDRESS) as client:
                client.send(b"USER alice\r\nPASS alicepw\r\n")
                client.line()
                assert client.line() == b"+OK Logged in."
                timings.append(time.monotonic() - started)
                client.cmd(b"QUIT")
            time.sleep(0.2)
        attacker.join(60)
        assert max(timings) < 0.1, timings
        assert len([a for _, a in result["answers"] if a.startswith(b"-ERR")]) <= 5
