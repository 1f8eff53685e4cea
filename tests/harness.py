"""
The one way the tests run a server program: start it with its output in a
log file, wait until it is ready (a callable, a deadline, the log's tail in
the error if it never is), stop it by its PID (SIGTERM, then SIGKILL).
The popgate, slapd, Postfix and Dovecot test servers are L{ServerProcess}es.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

LOOPBACK = "127.0.0.1"


#: Where L{free_port} looks: below Linux's ephemeral range (32768-60999),
#: so no client connection of another test (the other pytest-xdist
#: worker's, a load loop's) can hold the port by the time a server binds it.
PORTS = range(10000, 32768)
_pick = random.SystemRandom()


def free_port() -> int:
    """A loopback TCP port nobody uses (now), chosen at random from
    L{PORTS}: two test processes rarely pick the same one."""
    for _ in range(200):
        port = _pick.choice(PORTS)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # all those tried were taken: the kernel's choice
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on C{port}."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def greets(port: int, prefix: bytes, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """Whether a connection to C{port} is greeted with C{prefix} (C{+OK}, C{220})."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            return s.recv(100).startswith(prefix)
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Whether process C{pid} runs (a zombie nobody reaps does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ServerProcess:
    """
    A server program for a test; a context manager (C{with} starts and
    stops it).  Subclasses say how to start it (L{command_line} or
    L{launch}) and when it is ready (L{ready}); may be started again
    after L{stop}.

    @param command: the program and its arguments (or override
        L{command_line}).
    @param log_path: where its stdout and stderr go (emptied at each
        start); none: nowhere.
    @param ready: returns true once the server serves; an C{OSError} it
        raises counts as "not yet".
    @param popen: more keyword arguments for C{subprocess.Popen}
        (C{preexec_fn} setting a resource limit, C{pass_fds}).
    @ivar process: the C{subprocess.Popen}, for servers that are our child.
    """

    name = "server"
    #: seconds to wait for L{ready}
    start_timeout = 30.0
    #: seconds between SIGTERM and SIGKILL
    stop_timeout = 10.0
    #: SIGKILL the process group, not the process (a master and its children)
    kill_group = False
    #: how many characters of the log an error message quotes
    log_tail = 4000

    def __init__(self, command: Sequence[str] = (), *, log_path: str | os.PathLike[str] | None = None,
                 ready: Callable[[], bool] | None = None, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, popen: dict[str, Any] | None = None) -> None:
        self.command = list(command)
        self.log_path = None if log_path is None else os.fspath(log_path)
        self._ready = ready
        self.env = env
        self.cwd = cwd
        self.popen = popen or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what subclasses change

    def command_line(self) -> list[str]:
        return self.command

    def ready(self) -> bool:
        return True if self._ready is None else bool(self._ready())

    def launch(self) -> None:
        """Start the program (as our child, by default)."""
        output: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = output = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=output,
                                        stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                        **self.popen)

    def pid(self) -> int | None:
        """The server's PID while it runs, else None."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def exit_status(self) -> int | None:
        """How it ended, if it ended by itself before it was ready."""
        return None if self.process is None else self.process.poll()

    def log(self) -> str:
        """The tail of its log."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-self.log_tail:]
        except OSError:
            return ""

    # -- life cycle

    def start(self) -> ServerProcess:
        """Start it and wait until it is ready."""
        try:
            self.launch()
            deadline = time.monotonic() + self.start_timeout
            while True:
                status = self.exit_status()
                if status is not None:
                    raise RuntimeError(f"{self.name} exited with {status}: {self.log()}")
                try:
                    if self.ready():
                        return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} was not ready within {self.start_timeout:g} s: "
                                       f"{self.log()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> None:
        """Send C{sig}; after C{timeout} seconds (L{stop_timeout}) SIGKILL."""
        pid = self.pid()
        if pid is not None:
            self._signal(pid, sig)
            if not self._wait(self.stop_timeout if timeout is None else timeout):
                self._signal(pid, signal.SIGKILL, group=self.kill_group)
                self._wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, pid: int, sig: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait(self, timeout: float) -> bool:
        """Whether it has gone within C{timeout} seconds."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.pid() is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
