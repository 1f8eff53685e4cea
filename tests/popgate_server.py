"""
Running the real thing: C{twistd -n popgate ...} as a subprocess on a free
loopback port, for integration tests with real clients.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd_command() -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


class PopgateProcess:
    """
    A popgate server process; use as a context manager.

    @param pop3s: also listen for POP3S on C{self.pop3s_port} (give
        C{--tls-cert} and C{--tls-key} in C{args}).
    @param popen: more keyword arguments for C{subprocess.Popen}
        (C{preexec_fn} setting a resource limit, C{pass_fds}).
    """

    def __init__(self, args: Sequence[str], port: int | None = None, log_path: str | None = None,
                 pop3s: bool = False, popen: dict[str, Any] | None = None) -> None:
        self.port = port or free_port()
        self.pop3s_port: int | None = free_port() if pop3s else None
        self.args = list(args)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.popen = popen or {}

    def __enter__(self) -> "PopgateProcess":
        cmd = twistd_command() + ["-n", "--pidfile=", "popgate",
                                  "--pop3", f"tcp:{self.port}:interface=127.0.0.1"] + self.args
        if self.pop3s_port is not None:
            cmd += ["--pop3s", f"tcp:{self.pop3s_port}:interface=127.0.0.1"]
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=child_env(), cwd=REPO, **self.popen)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"popgate exited with {self.process.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"+OK"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("popgate did not start: " + self.log())

    def log(self) -> str:
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_twistd(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (option errors, --help)."""
    return subprocess.run(twistd_command() + list(args), capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=timeout)
