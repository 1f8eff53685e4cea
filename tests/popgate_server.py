"""
Running the real thing: C{twistd -n popgate ...} as a subprocess on a free
loopback port, for integration tests with real clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from tests.harness import ServerProcess, free_port, greets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["REPO", "PopgateProcess", "child_env", "free_port", "run_twistd", "twistd_command"]


def twistd_command() -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


class PopgateProcess(ServerProcess):
    """
    A popgate server process, ready once it greets on C{self.port}.

    @param pop3s: also listen for POP3S on C{self.pop3s_port} (give
        C{--tls-cert} and C{--tls-key} in C{args}).
    @param popen: more keyword arguments for C{subprocess.Popen}
        (C{preexec_fn} setting a resource limit, C{pass_fds}).
    """

    name = "popgate"

    def __init__(self, args: Sequence[str], port: int | None = None, log_path: str | None = None,
                 pop3s: bool = False, popen: dict[str, Any] | None = None) -> None:
        super().__init__(log_path=log_path, env=child_env(), cwd=REPO, popen=popen)
        self.port = port or free_port()
        self.pop3s_port: int | None = free_port() if pop3s else None
        self.args = list(args)

    def command_line(self) -> list[str]:
        # twistd_command is looked up now: tests replace it (--uid nobody).
        cmd = twistd_command() + ["-n", "--pidfile=", "popgate",
                                  "--pop3", f"tcp:{self.port}:interface=127.0.0.1"] + self.args
        if self.pop3s_port is not None:
            cmd += ["--pop3s", f"tcp:{self.pop3s_port}:interface=127.0.0.1"]
        return cmd

    def ready(self) -> bool:
        return greets(self.port, b"+OK", timeout=1)

    def __enter__(self) -> PopgateProcess:
        self.start()
        return self


def run_twistd(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (option errors, --help)."""
    return subprocess.run(twistd_command() + list(args), capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=timeout)
