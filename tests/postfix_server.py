"""
A throwaway Postfix (Debian's package) for end-to-end tests: its own
main.cf and master.cf, queue and data directories in a temp dir, one SMTP
listener on a free 127.0.0.1 port, nothing of the system's Postfix touched
(C{postfix -c DIR start}, run as root as Postfix requires).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ServerProcess, alive, free_port, greets
from tests.popgate_server import REPO

PIPE_USER = "nobody"


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def runs_as(user: str, argv: list[str]) -> bool:
    """Whether C{argv} succeeds when run as C{user}."""
    try:
        return _run(["runuser", "-u", user, "--", *argv], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class PipePython:
    """How a user other than root runs popgate: an interpreter, the site
    directory holding popgate's dependencies, the directory holding the
    C{popgate} package (and its C{twisted/plugins} dropin).  The
    interpreter runs with C{-S}: a system python would otherwise put
    Debian's dist-packages (older cryptography, say) before C{site}."""

    python: str
    site: str
    source: str

    def argv(self, statement: str) -> list[str]:
        """The command line that runs C{statement}."""
        return [self.python, "-S", "-c", self.code(statement)]

    def code(self, statement: str) -> str:
        return (f"import site, sys; site.addsitedir({self.site!r}); "
                f"sys.path.insert(0, {self.source!r}); {statement}")


def find_pipe_python(user: str, scratch: Path) -> PipePython | None:
    """
    A way for C{user} to run popgate: this interpreter and environment if
    C{user} can reach them, or the system's python of the same version;
    and when this checkout or its venv sit where C{user} cannot reach (a
    0700 directory), copies of them in C{scratch}.  None if nothing works.
    """
    probe = "import popgate.cli, popgate.stores.registry, twisted, zope.interface, bcrypt"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pythons = [p for p in (os.path.realpath(sys.executable),
                           shutil.which(version, path="/usr/bin:/usr/local/bin")) if p]
    for layout in (lambda: (sysconfig.get_paths()["purelib"], REPO), lambda: _copy_for(scratch)):
        site_dir, source = layout()
        for python in pythons:
            candidate = PipePython(python, site_dir, source)
            if runs_as(user, candidate.argv(probe)):
                return candidate
    return None


def _copy_for(scratch: Path) -> tuple[str, str]:
    target = scratch / "pipe-python"
    if not target.exists():
        shutil.copytree(sysconfig.get_paths()["purelib"], target / "site-packages", symlinks=True)
        shutil.copytree(os.path.join(REPO, "popgate"), target / "src" / "popgate",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (target / "src" / "twisted" / "plugins").mkdir(parents=True)
        shutil.copy(os.path.join(REPO, "twisted", "plugins", "popgate_plugin.py"),
                    target / "src" / "twisted" / "plugins")
        for path in (scratch, target):
            path.chmod(0o755)
    return str(target / "site-packages"), str(target / "src")


def write_popgate_wrapper(path: Path, how: PipePython) -> Path:
    """C{path}: an executable C{popgate} command, as an install would put
    one in /usr/local/bin, that any user can run."""
    argv = shlex.join(how.argv("from popgate.cli import main; sys.exit(main())"))
    path.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    path.chmod(0o755)
    return path


MASTER_CF = """\
{smtp_listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServer(ServerProcess):
    """
    One Postfix instance under C{root}; use as a context manager.  Its
    master is no child of ours (C{postfix start} detaches it): its PID
    comes from the pid file, and a SIGKILL goes to its whole group, as
    C{postfix stop} does when SIGTERM is not enough.

    @param main_cf: settings added to (or overriding) the base main.cf.
    @param master_cf: extra master.cf lines (transports).
    """

    name = "postfix"
    stop_timeout = 20.0
    kill_group = True
    log_tail = 6000

    def __init__(self, root: Path, main_cf: dict[str, str], master_cf: str = "") -> None:
        super().__init__()
        self.root = root
        self.config = root / "etc"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.log_path = str(self.maillog)
        self.port = free_port()
        self.main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.popgate.test",
            "mydomain": "popgate.test",
            "myorigin": "$myhostname",
            "mydestination": "localhost",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_reject_unlisted_recipient": "no",
            "relayhost": "",
            "default_transport": "error:no outside mail from the tests",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(root),
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "queue_run_delay": "2s",
            "delay_warning_time": "0",
            "smtputf8_enable": "no",
            **main_cf,
        }
        self.master_cf = MASTER_CF.format(smtp_listen=f"127.0.0.1:{self.port}") + master_cf

    def launch(self) -> None:
        self.config.mkdir(parents=True)
        (self.config / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.main_cf.items()))
        (self.config / "master.cf").write_text(self.master_cf)
        self.queue.mkdir(mode=0o755)
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postfix")
        for step in (["set-permissions"], ["check"], ["start"]):
            result = _run(["postfix", "-c", str(self.config), *step], timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"postfix {step[0]} failed: {result.stdout}{result.stderr}{self.log()}")

    def ready(self) -> bool:
        return greets(self.port, b"220")

    def pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def exit_status(self) -> int | None:
        return None  # a master that died shows as "not ready" until the deadline

    def __enter__(self) -> PostfixServer:
        self.start()
        return self
