"""
Start-up refuses what cannot work once twistd has dropped privileges.

twistd parses the options as root, binds the ports, then switches to
C{--uid}/C{--gid} (C{initgroups}, C{setgid}, C{setuid}) before the service
starts.  From then on popgate reads its user files at logins, the TLS
certificate and key on every SIGHUP, the mail at every login, all as that
user: a root-only C{htpasswd} file makes every login C{[SYS/TEMP]} while
the server looks healthy.

So every path popgate will need later is checked I{as that user} at
start-up, in a forked child that switches exactly as twistd will (the same
supplementary groups) and tries each path, reporting over a pipe; the
first problem stops start-up with one line naming the option, the path,
what is missing and the mode and owner that block it.

Why check rather than open the files before the drop and keep them: the
files are meant to change under a running server.  C{htpasswd} and
C{popgate passwd} replace a user file by renaming a new one into place, and
certbot renews by writing new certificate files; a descriptor opened as
root would go on serving the old contents, and the SIGHUP reload could
never see the new ones.  Checking as the user keeps every re-read working
and fails start-up exactly where they would fail.

The check runs only when it means something: as root, with a C{--uid}
other than root's and no C{--chroot} (whose paths differ from these).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.python import usage

from popgate.cred._userfile import UserFileChecker
from popgate.settings import Config, RunAs
from popgate.stores import mailpath
from popgate.stores.maildir import MaildirStore
from popgate.stores.mbox import MboxStore

#: What a path must allow: a file to read; a directory to search or to
#: write in, or to write in once created under its nearest existing ancestor.
READ, SEARCH, WRITE, WRITE_OR_CREATE = ("read", "search", "write", "write-or-create")


@dataclass(frozen=True)
class Need:
    """
    One path the running server will use.

    @ivar option: the option that names it, as the message starts
        (C{--auth htpasswd}, C{--tls-key}, C{--store maildir}).
    @ivar what: what the path is, for the message (C{the mail root}); may
        be empty.
    @ivar why: appended to the message when the reason is not obvious.
    """

    option: str
    path: str
    access: str
    what: str = ""
    why: str = ""


def run_as(options: Any) -> RunAs | None:
    """
    The user twistd's C{--uid}/C{--gid} (the parent C{ServerOptions})
    will switch to, or C{None} when no check is needed: not root, no
    C{--uid} or root's own, C{--chroot} given, or no parent (workers,
    tests, C{popgate deliver}).
    """
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    uid = parent.get("uid")
    if uid is None or uid == 0 or parent.get("chroot"):
        return None
    gid = parent.get("gid")
    try:
        entry: Any = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if gid is None:
        if entry is None:
            return None  # twistd itself cannot pick a group for it
        gid = entry.pw_gid
    return RunAs(uid, gid, entry.pw_name if entry is not None else str(uid))


def needs(config: Config, store: Any, checkers: Iterable[Any], tls: Any) -> list[Need]:
    """Every path the server built from C{config} (its C{store},
    C{checkers} and C{tls}) will use, with the access each must allow."""
    found: list[Need] = []
    found += _checker_needs(checkers)
    if tls is not None:
        reread = "; SIGHUP could not re-read it"
        found.append(Need("--tls-cert", tls.cert_path, READ, "the certificate", reread))
        found.append(Need("--tls-key", tls.key_path, READ, "the key", reread))
    found += _store_needs(config.store, store)
    for kind, endpoints in (("pop3", config.pop3), ("pop3s", config.pop3s),
                            ("lmtp", config.lmtp)):
        for endpoint in endpoints:
            found += _socket_needs(f"--{kind} {endpoint}", endpoint)
    return found


def _checker_needs(checkers: Iterable[Any]) -> list[Need]:
    found = []
    for checker in checkers:
        if isinstance(checker, UserFileChecker):
            found.append(Need(f"--auth {checker.kind}", checker.path, READ))
        cafile = getattr(getattr(checker, "settings", None), "cafile", None)
        if cafile:  # LDAP: read again for each new connection
            found.append(Need("--auth ldap", cafile, READ, "the cafile"))
        dsn = getattr(checker, "dsn", None)
        if isinstance(dsn, str) and urlsplit(dsn).scheme.lower() in ("sqlite", "sqlite3"):
            parts = urlsplit(dsn)
            found.append(Need("--auth sql", unquote(parts.netloc + parts.path), READ,
                              "the database"))
    return found


def _store_needs(description: str | None, store: Any) -> list[Need]:
    option = f"--store {(description or '').partition(':')[0]}"
    if isinstance(store, MaildirStore):
        root = mailpath.fixed_root(store.template)
        if not mailpath.placeholders(store.template) - {"%"}:
            # One shared Maildir (shared=yes): its lock file is created in it.
            return [Need(option, root, WRITE_OR_CREATE if store.create else WRITE, "the Maildir")]
        # Only reachable: many sites keep a root-owned mail root with
        # per-domain or per-user directories made by the admin, so whether
        # a new user's Maildir can be created is only known at its first
        # login (which then logs why it cannot).
        return [Need(option, root, SEARCH, "the mail root")]
    if isinstance(store, MboxStore):
        settings = store.settings
        found = []
        spool_dir = os.path.dirname(settings.template) or "."
        if not mailpath.placeholders(spool_dir) - {"%"}:
            # Every spool is in this one directory: the session locks (without
            # lockdir=), the dotlocks and the QUIT rewrite are created there.
            found.append(Need(option, mailpath.fixed_root(spool_dir), WRITE, "the spool directory",
                              "; popgate creates its lock and rewrite files there"))
        else:
            found.append(Need(option, mailpath.fixed_root(settings.template), SEARCH,
                              "the mail root"))
        if settings.lockdir:
            found.append(Need(option, settings.lockdir, WRITE, "the lock directory (lockdir=)"))
        return found
    return []


def _socket_needs(option: str, endpoint: str) -> list[Need]:
    """
    A UNIX socket is bound as root before the drop, but removed at stop as
    the user: unless the directory lets it, the socket stays and the next
    start fails with "Address already in use".  C{lockfile=1} makes
    Twisted remove a stale socket at start, so then it does not matter.
    """
    kind, _, rest = endpoint.partition(":")
    if kind != "unix":
        return []
    parts = [p.replace("\0", ":") for p in rest.replace("\\:", "\0").split(":")]
    path = ""
    lockfile = False
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq and not path:
            path = key
        elif key == "address":
            path = value
        elif key == "lockfile":
            lockfile = value not in ("", "0")
    if not path or lockfile:
        return []
    return [Need(option, os.path.dirname(os.path.abspath(path)), WRITE, "the socket directory",
                 "; the socket could not be removed at stop and the next start would fail "
                 "(or add :lockfile=1)")]


# -- the probe, in a child running as the user


def _ancestors(path: str) -> list[str]:
    """C{/a/b/c} -> [C{/}, C{/a}, C{/a/b}]."""
    found = []
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            break
        found.append(parent)
        path = parent
    return found[::-1]


def probe(real: str, access: str) -> tuple[str, str]:
    """
    Try C{real} (an absolute, resolved path) as the current user.

    @return: (outcome, the path it is about): C{ok}, C{denied} (that
        directory or file lacks permission), C{missing}, C{cannot-create}
        (missing, and that ancestor is not writable), C{not-a-directory},
        or C{error:<text>}.
    """
    creating = access == WRITE_OR_CREATE
    searchable = "/"
    for directory in _ancestors(real):
        if not os.path.isdir(directory):
            if creating:
                return _creatable(searchable)
            return ("missing", directory)
        if not os.access(directory, os.X_OK):
            return ("denied", directory)
        searchable = directory
    if access == READ:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return ("missing", real)
        except PermissionError:
            return ("denied", real)
        except OSError as e:
            return (f"error:{e.strerror}", real)
        os.close(fd)
        return ("ok", real)
    if not os.path.isdir(real):
        if os.path.lexists(real):
            return ("not-a-directory", real)
        return _creatable(os.path.dirname(real)) if creating else ("missing", real)
    flags = os.X_OK if access == SEARCH else os.W_OK | os.X_OK
    return ("ok", real) if os.access(real, flags) else ("denied", real)


def _creatable(directory: str) -> tuple[str, str]:
    ok = os.access(directory, os.W_OK | os.X_OK)
    return ("ok", directory) if ok else ("cannot-create", directory)


def probe_as(user: RunAs, paths: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """
    L{probe} each (resolved path, access) in a child process that has
    switched to C{user} as twistd will; the answers come back as JSON over
    a pipe.  Root only.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            if user.name != str(user.uid):
                os.initgroups(user.name, user.gid)
            else:
                os.setgroups([user.gid])
            os.setgid(user.gid)
            os.setuid(user.uid)
            data = json.dumps([probe(path, access) for path, access in paths]).encode()
            while data:
                data = data[os.write(write_end, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise usage.UsageError(f"--uid: cannot check the configured files as user {user.name}")
    return [tuple(answer) for answer in json.loads(b"".join(chunks))]


# -- the message


def _owner(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot stat: {e.strerror}"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}, group {group}"


def describe(need: Need, real: str, outcome: str, about: str, user: RunAs) -> str:
    """The one-line message for a failed L{probe}."""
    label = f"{need.what} {need.path}" if need.what else need.path
    blame = _owner(about) if about == real else f"directory {about}: {_owner(about)}"
    if outcome == "denied":
        adjective = {READ: "readable", SEARCH: "searchable"}.get(need.access, "writable")
        return f"{need.option}: {label} is not {adjective} by user {user.name} ({blame}){need.why}"
    if outcome == "cannot-create":
        return (f"{need.option}: {label} does not exist and user {user.name} cannot create it "
                f"({blame}){need.why}")
    if outcome == "missing":
        where = "" if about == real else f" (no directory {about})"
        return f"{need.option}: {label} does not exist{where}"
    if outcome == "not-a-directory":
        return f"{need.option}: {label} is not a directory"
    return f"{need.option}: {label} cannot be opened by user {user.name}: {outcome[6:]}"


def check(config: Config, store: Any, checkers: Iterable[Any], tls: Any) -> None:
    """
    Refuse, with one line, a configuration that would fail once twistd
    runs as its C{--uid} (L{Config.run_as}): called by the composition
    root once the stores and TLS are built, before anything listens.

    @raise usage.UsageError: naming the option, the path and what blocks it.
    """
    if config.run_as is None:
        return
    found = problems(config, store, checkers, tls)
    if found:
        raise usage.UsageError(found[0])


def _this_user() -> RunAs:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return RunAs(uid, os.getegid(), name)


def problems(config: Config, store: Any, checkers: Iterable[Any], tls: Any) -> list[str]:
    """
    Every path of L{needs} that would fail, one line each: tried as
    L{Config.run_as} in a forked child when twistd will switch to it, else
    as this process (C{popgate check-config} without C{--uid}).
    """
    wanted = needs(config, store, checkers, tls)
    if not wanted:
        return []
    resolved = [os.path.realpath(need.path) for need in wanted]
    paths = [(real, need.access) for real, need in zip(resolved, wanted, strict=True)]
    user = config.run_as
    if user is not None:
        answers = probe_as(user, paths)
    else:
        user = _this_user()
        answers = [probe(real, access) for real, access in paths]
    # One answer per path: the child exits 0 only once it wrote them all.
    return [describe(need, real, outcome, about, user)
            for need, real, (outcome, about) in zip(wanted, resolved, answers, strict=True)
            if outcome != "ok"]
