"""
A real HAProxy (Debian's C{haproxy}) for integration tests: a throwaway
configuration in a test's directory, run in the foreground as our child,
stopped by its PID (L{tests.harness.ServerProcess}).

The configuration is the test's own text with two placeholders filled in:
C{@PORT@}, a free loopback port for the frontend (L{HAProxyProcess.port}),
and C{@STATS@}, the path of an admin socket in the directory, so a test
can wait until HAProxy's health checks find the backends up
(L{HAProxyProcess.wait_until_up}) and read their states.  HAProxy's own
log goes to the log file with C{log stdout} in the text's C{global}
section.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.harness import ServerProcess, accepts, free_port
from tests.services import need_program

__all__ = ["HAProxyProcess", "start"]


class HAProxyProcess(ServerProcess):
    """HAProxy on C{config_text}, ready once its frontend accepts.

    @ivar port: what C{@PORT@} became: the frontend's port.
    @ivar stats: what C{@STATS@} became: the admin socket's path.
    """

    name = "haproxy"

    def __init__(self, config_text: str, directory: Path, host: str = "127.0.0.1") -> None:
        program = need_program("haproxy", "haproxy")
        self.port = free_port()
        self.host = host
        self.stats = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.template = config_text
        self.config.write_text(config_text.replace("@PORT@", str(self.port))
                               .replace("@STATS@", str(self.stats)))
        # -db: in the foreground, our child, its log on stdout.
        super().__init__([program, "-db", "-f", str(self.config)],
                         log_path=directory / "haproxy.log")

    def ready(self) -> bool:
        # Asking the admin socket, when there is one, rather than
        # connecting: a connection to the frontend reaches a backend.
        if "@STATS@" in self.template:
            return self.stats.exists() and "Name: HAProxy" in self.admin("show info")
        return accepts(self.port, self.host)

    def admin(self, line: str) -> str:
        """One command on the admin socket (C{show stat}), its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats))
            s.sendall(line.encode() + b"\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode()

    def server_states(self) -> dict[str, str]:
        """Each backend server (C{backend/server}) and its status (C{UP},
        C{DOWN}, C{no check}...), from C{show stat}."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") not in (None, "FRONTEND", "BACKEND"):
                states[f"{row['pxname']}/{row['svname']}"] = row["status"]
        return states

    def wait_until_up(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait until every backend server is C{UP} (its health checks
        passed); the states, or an error naming the ones that are not."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.server_states()
            if states and all(s == "UP" for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy backends not up in {timeout:g} s: {states}\n"
                                   f"{self.log()}")
            time.sleep(0.1)


def start(config_text: str, directory: Path) -> tuple[HAProxyProcess, int]:
    """Start HAProxy on C{config_text} (see the module's placeholders) in
    C{directory}; the process (stop it with C{.stop()}, by its PID) and
    the frontend's port.  Skips when HAProxy is not installed."""
    process = HAProxyProcess(config_text, directory)
    process.start()
    return process, process.port
