"""Start, watch and stop the servers under test (popgate, Dovecot 2.3).

Every server is started in its own session (process group), so stopping it
never touches anything the harness did not start: SIGTERM to the pid, then
SIGKILL to that process group if it does not go away.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
MAIL_UID = 65534  # nobody: Dovecot refuses uid 0 for mail processes
MAIL_GID = 65534  # nogroup


# ------------------------------------------------------------------ /proc helpers
def _stat(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        s = f.read()
    return s[s.rfind(b")") + 2:].split()


def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                children.setdefault(int(_stat(int(d))[1]), []).append(int(d))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds (user+sys, children included) of a process tree."""
    tot = 0
    for p in proc_tree(root):
        try:
            f = _stat(p)
            tot += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError):
            pass
    return tot / CLK


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_greeting(port: int, proc: subprocess.Popen, timeout: float, log: Path | None,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} during start-up\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"no POP3 greeting on port {port} after {timeout}s ({last})")


class Server:
    name = "server"
    kind = "?"
    host = "127.0.0.1"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lmtp_port = 0  # 0: no LMTP listener

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, cmd: list[str], log: Path, env: dict | None = None) -> None:
        self.cmd = cmd
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)

    def stop(self, timeout: float = 10.0) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group we created (pgid == our child's pid).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Popgate(Server):
    kind = "popgate"

    def __init__(self, name: str, twistd: str, rundir: Path, passwd: Path, root: Path,
                 extra: list[str] | None = None, store: str | None = None,
                 env: dict | None = None, kind: str = "popgate", host: str = "127.0.0.1",
                 lmtp: bool = False) -> None:
        super().__init__()
        self.kind = kind  # "pg" for the PostgreSQL store (bench/pgstore.py)
        self.host = host
        self.lmtp = lmtp
        self.name = name
        self.twistd = twistd
        self.rundir = rundir
        self.passwd = passwd
        self.root = root
        self.extra = extra or []
        self.store = store or f"maildir:{root}/%n"
        self.env = env  # None: this process's environment
        self.log = rundir / f"{name}.log"

    def command(self, port: int) -> list[str]:
        return [self.twistd, "-n", "--pidfile=", "--logfile", str(self.log), "popgate",
                "--pop3", f"tcp:{port}:interface={self.host}",
                *(["--lmtp", f"tcp:{self.lmtp_port}:interface={self.host}"] if self.lmtp else []),
                "--auth", f"passwd-file:{self.passwd}",
                "--store", self.store,
                # The load comes from one address; Dovecot has no per-IP
                # connection limit either.
                "--max-connections-per-ip", "0", *self.extra]

    def start(self) -> None:
        self.port = free_port(self.host)
        if self.lmtp:
            self.lmtp_port = free_port(self.host)
        self._spawn(self.command(self.port), self.rundir / f"{self.name}.stdout", self.env)
        wait_greeting(self.port, self.proc, 30, self.log, self.host)


DOVECOT_CONF = """\
# Generated by popgate's bench/run.py: Dovecot 2.3 POP3 in the "tuned"
# (high-performance) mode of shared/bench/conf/dovecot-tuned.conf, with
# paths under the run directory and limits raised for 500 idle sessions.
base_dir = {base}
state_dir = {base}/state
instance_name = {instance}
log_path = {log}
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
default_client_limit = {client_limit}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/%n
}}
mail_location = maildir:{root}/%n
service pop3-login {{
  # high-performance mode: long-lived login processes, each serving many clients
  service_count = 0
  process_min_avail = 2
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
pop3_uidl_format = %08Xu%08Xv
# reuse pop3 processes (safe here: all users share one uid); one process per
# open session, so allow the 500 of the idle-session scenario
service pop3 {{
  service_count = 100
  process_min_avail = 2
  process_limit = {process_limit}
}}
protocol pop3 {{
  mail_max_userip_connections = {userip_limit}
}}
# take message sizes from the index/filename (S=/W=) instead of reading mails
pop3_fast_size_lookups = yes
{extra}
"""

# LMTP beside POP3 (the lmtp scenario): the package's defaults for the lmtp
# service (a process per connection, reused), delivering into the same
# Maildirs with the same static userdb; users are checked against the
# passwd-file passdb.
DOVECOT_LMTP = """
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


DOVECOT_IMAP = """
service imap-login {{
  service_count = 0
  process_min_avail = 2
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  service_count = 0
  process_limit = 600
}}
"""


class Dovecot(Server):
    kind = "dovecot"

    #: client_limit, pop3 process_limit, mail_max_userip_connections: for
    #: 500 open sessions (bench/scale.py raises them for its own instances)
    LIMITS = {"client_limit": 2048, "process_limit": 1024, "userip_limit": 1000}

    def __init__(self, name: str, rundir: Path, passwd: Path, root: Path, extra: str = "",
                 lmtp: bool = False, imap: bool = False, limits: dict | None = None) -> None:
        super().__init__()
        self.limits = dict(self.LIMITS, **(limits or {}))
        self.lmtp = lmtp  # needs Debian's dovecot-lmtpd (ensure_dovecot_lmtp)
        self.imap = imap  # needs Debian's dovecot-imapd; listens on imap_port too
        self.name = name
        self.rundir = rundir
        self.passwd = passwd
        self.root = root
        self.extra = extra
        self.base = rundir / name
        self.conf = rundir / f"{name}.conf"
        self.log = rundir / f"{name}.log"

    def start(self) -> None:
        self.port = free_port()
        self.base.mkdir(parents=True, exist_ok=True)
        extra = self.extra
        if self.lmtp:
            self.lmtp_port = free_port()
            extra += DOVECOT_LMTP.format(port=self.lmtp_port)
        protocols = "pop3" + (" lmtp" if self.lmtp else "")
        if self.imap:
            self.imap_port = free_port()
            extra += DOVECOT_IMAP.format(port=self.imap_port)
            protocols += " imap"
        self.conf.write_text(DOVECOT_CONF.format(protocols=protocols,
            base=self.base, instance=f"popgate-bench-{self.name}-{os.getpid()}", log=self.log,
            passwd=self.passwd, root=self.root, port=self.port, uid=MAIL_UID, gid=MAIL_GID,
            extra=extra, **self.limits))
        self._spawn(["dovecot", "-F", "-c", str(self.conf)], self.rundir / f"{self.name}.stdout")
        wait_greeting(self.port, self.proc, 30, self.log)

    def log_problems(self) -> list[str]:
        if not self.log.exists():
            return []
        bad = re.compile(r"(Fatal|Panic|Error):")
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if bad.search(ln)][:10]


# ------------------------------------------------------------------ Dovecot install
def ensure_dovecot() -> str:
    """Install Debian's dovecot-pop3d if needed; stop a system Dovecot the
    package may have started.  Returns `dovecot --version`."""
    if not (shutil.which("dovecot") and Path("/usr/lib/dovecot/pop3").exists()):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "dovecot-pop3d"]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    stop_system_dovecot()
    return subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()


def ensure_dovecot_lmtp() -> bool:
    """Install Debian's dovecot-lmtpd if needed (for the lmtp scenario's
    Dovecot); whether Dovecot's lmtp is there."""
    if not Path("/usr/lib/dovecot/lmtp").exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "dovecot-lmtpd"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop_system_dovecot()
    return Path("/usr/lib/dovecot/lmtp").exists()


def stop_system_dovecot() -> None:
    pidfile = Path("/run/dovecot/master.pid")
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return
    print(f"stopping the system Dovecot (pid {pid}) started by the package")
    subprocess.run(["doveadm", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
