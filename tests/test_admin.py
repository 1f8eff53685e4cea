"""
The admin command's parts in memory: the user store catalogue
(C{--help-auth}, stock checkers refused, missing libraries), the key
documentation, every password scheme C{popgate pw} writes, C{popgate
passwd}'s file handling, the session registry and its AMP protocol
(C{who}, C{kick}), the reachability probes and C{check-config}'s findings.
Real processes are in L{tests.test_cli}.
"""

from __future__ import annotations

import datetime
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python import usage
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from popgate import tap
from popgate.admin import check
from popgate.admin.commands import MAX_LISTED, Kick, Who
from popgate.admin.passwd import (
    NEW_FILE_MODE,
    PasswdError,
    ask_password,
    check_user_name,
    set_password,
)
from popgate.admin.server import AdminFactory
from popgate.backends import CREDENTIALS, build_checker
from popgate.build import Server, listen_failure
from popgate.cred import catalog, ldap_settings, schemes, sql_settings
from popgate.cred.htpasswd import HtpasswdChecker
from popgate.cred.memory import MemoryChecker
from popgate.errors import TemporaryFailure
from popgate.interfaces import IReachable, IUserLookup
from popgate.limits import process as limits_process
from popgate.probes import StartupProbe, probe_all
from tests.helpers import InlineReactor, connect, make_portal
from tests.services import need
from tests.tlscerts import make_pki

_sync = SynchronousTestCase()
# strcred loads every checker plugin, Twisted's unix one too.
pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")


# -- the user store catalogue: --help-auth, --help-auth-type, --auth


def test_help_auth_lists_popgate_stores_only() -> None:
    text = catalog.describe_all(CREDENTIALS)
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ")
              and not line.startswith("   ")}
    assert listed == {"htpasswd", "passwd-file", "ldap", "sql"}
    for stock in ("memory", "file", "unix", "anonymous", "sshkeys"):
        assert f"  {stock} " not in text


@pytest.mark.parametrize("kind, spec", [("ldap", ldap_settings.ARGS), ("sql", sql_settings.ARGS)])
def test_help_auth_type_documents_every_key(kind: str, spec: Any) -> None:
    text = catalog.describe_type(kind, CREDENTIALS)
    for key in spec.keys:
        assert spec.help.get(key), f"{kind}: key {key}= has no help"
        assert f"  {key}=" in text
    assert text.count("(required)") == len(spec.required)


def test_options_help_auth(capsys: pytest.CaptureFixture[str]) -> None:
    options = tap.Options()
    options.authOutput = io.StringIO()
    with pytest.raises(SystemExit) as e:
        options.parseOptions(["--help-auth-type", "ldap"])
    assert e.value.code == 0
    assert "bindpw_file=" in options.authOutput.getvalue()
    with pytest.raises(usage.UsageError, match="'unix' is Twisted's checker"):
        tap.Options().parseOptions(["--help-auth-type", "unix"])


@pytest.mark.parametrize("description, message", [
    ("file:/etc/passwd", r"^--auth: 'file' is Twisted's checker, not a user store popgate"),
    ("unix", r"^--auth: 'unix' is Twisted's checker"),
    ("nosuch:x", r"^--auth: unknown user store type 'nosuch' \(see --help-auth\)$"),
    ("memory:", r"^--auth memory: give USER:PASSWORD pairs"),
    ("memory:alice", r"^--auth memory: give USER:PASSWORD pairs"),
])
def test_auth_types_refused_in_one_line(description: str, message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        build_checker(description)


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = next(f for f in catalog.offered(CREDENTIALS) if f.authType == "ldap")

    def missing(argstring: str) -> Any:
        raise ModuleNotFoundError("No module named 'ldaptor'", name="ldaptor")

    monkeypatch.setattr(factory, "generateChecker", missing)
    with pytest.raises(usage.UsageError) as e:
        build_checker("ldap:url=ldap://127.0.0.1/,base=dc=x")
    assert str(e.value) == "--auth ldap: the ldaptor module is missing: pip install 'popgate[ldap]'"
    assert catalog.missing_library(ModuleNotFoundError("x", name="psycopg.pq")) == (
        "the psycopg module is missing: pip install 'popgate[sql]'")


def test_memory_is_popgates_own_and_logs_people_in() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        checker = build_checker("memory:alice:secret:Bob@Example.ORG:pw")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert isinstance(checker, MemoryChecker)
    assert any(e.get("log_level") == LogLevel.warn and "tests and demos" in e["log_format"]
               for e in events)
    for interface in (IUserLookup, IReachable):
        assert verifyObject(interface, checker)
    ok = checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
    assert _sync.successResultOf(ok) == "alice"
    assert _sync.successResultOf(checker.requestAvatarId(
        UsernamePassword(b"Bob@example.org", b"pw"))) == "Bob@example.org"
    _sync.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"x")),
                          UnauthorizedLogin)
    _sync.failureResultOf(checker.requestAvatarId(UsernamePassword(b"carol", b"x")),
                          UnauthorizedLogin)
    assert _sync.successResultOf(checker.lookup_user("Bob@EXAMPLE.org")).name == "Bob@example.org"
    assert _sync.successResultOf(checker.lookup_user("bob@example.org")) is None  # as the files
    assert _sync.successResultOf(checker.lookup_user("carol")) is None


# -- popgate pw: every scheme


@pytest.mark.parametrize("scheme", sorted(schemes.HASH_SCHEMES))
def test_every_scheme_pw_writes_is_checked(scheme: str) -> None:
    rounds = {"BLF-CRYPT": 4, "CRYPT": 4, "ARGON2ID": 1, "ARGON2I": 1, "SHA512-CRYPT": 1000,
              "SHA256-CRYPT": 1000}.get(scheme)
    stored = schemes.hash_password("pass word é", scheme, rounds=rounds)
    assert stored.startswith("{" + scheme + "}")
    assert schemes.verify_password("pass word é".encode(), stored)
    assert not schemes.verify_password(b"wrong", stored)


def test_unknown_scheme() -> None:
    with pytest.raises(schemes.UnknownScheme):
        schemes.hash_password("x", "ROT13")


# -- popgate passwd


def test_passwd_creates_0640_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert set_password(str(path), "alice", "pw-1") is False
    assert stat.S_IMODE(path.stat().st_mode) == NEW_FILE_MODE
    path.write_bytes(b"# users\r\n" + path.read_bytes() + b"bob:$2y$04$x\ncarol:{PLAIN}c")
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert set_password(str(path), "alice", "pw-2") is True
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[0] == b"# users\r\n" and lines[2:] == [b"bob:$2y$04$x\n", b"carol:{PLAIN}c"]
    assert schemes.verify_password(b"pw-2", lines[1].split(b":", 1)[1].strip().decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a new file renamed into place
    assert sorted(os.listdir(tmp_path)) == ["users"]  # no temporary file left
    set_password(str(path), "dave", "pw-3")
    assert path.read_bytes().splitlines()[-2:][0] == b"carol:{PLAIN}c"
    assert path.read_bytes().splitlines()[-1].startswith(b"dave:$2y$")


def test_passwd_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    set_password(str(real), "alice", "pw")
    link = tmp_path / "users"
    link.symlink_to(real)
    set_password(str(link), "bob", "pw")
    assert link.is_symlink() and b"bob:" in real.read_bytes()


def test_passwd_keeps_the_owner(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "changing a file's owner needs root")
    path = tmp_path / "users"
    set_password(str(path), "alice", "pw")
    os.chown(path, 65534, 65534)
    set_password(str(path), "alice", "pw-2")
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)


@pytest.mark.parametrize("name", ["", "bad:name", "bad name", "tab\tname", "nl\nname",
                                  "#comment", "zero\u200bwidth"])
def test_passwd_refuses_names_that_corrupt_the_file(name: str) -> None:
    with pytest.raises(PasswdError):
        check_user_name(name)


def test_passwd_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PasswdError, match="^empty password refused$"):
        set_password(str(tmp_path / "users"), "alice", "")
    with pytest.raises(PasswdError, match="^cannot create .*: no directory .*missing$"):
        set_password(str(tmp_path / "missing" / "users"), "alice", "pw")
    with pytest.raises(PasswdError, match="is a directory$"):
        set_password(str(tmp_path), "alice", "pw")
    with pytest.raises(PasswdError, match="72 bytes"):
        set_password(str(tmp_path / "users"), "alice", "x" * 73)


def test_ask_password_twice() -> None:
    answers = iter(["a", "a"])
    assert ask_password(lambda prompt: next(answers)) == "a"
    answers = iter(["a", "b"])
    with pytest.raises(PasswdError, match="do not match"):
        ask_password(lambda prompt: next(answers))
    with pytest.raises(PasswdError, match="empty"):
        ask_password(lambda prompt: "")

    def eof(prompt: str) -> str:
        raise EOFError

    with pytest.raises(PasswdError, match="standard input ended"):
        ask_password(eof)


# -- the session registry and the admin socket's protocol


def _admin_pair(factory: Any) -> tuple[amp.AMP, Any]:
    client, server, pump = iosim.connectedServerAndClient(
        lambda: AdminFactory(factory.sessions).buildProtocol(None), amp.AMP)
    return client, pump


def test_who_and_kick_over_amp() -> None:
    portal, _ = make_portal()
    alice, bob, anonymous = (connect(portal) for _ in range(3))
    factory = alice.protocol.factory
    # One registry per factory; these sessions came from three factories.
    for session in (bob, anonymous):
        factory.sessions.add(session.protocol)
    alice.login(b"alice", b"secret")
    bob.login(b"bob", b"hunter2")
    anonymous.send(b"USER carol\r\nPASS wrong\r\n")
    client, pump = _admin_pair(factory)

    d = client.callRemote(Who, match="")
    pump.flush()
    answer = _sync.successResultOf(d)
    assert answer["total"] == 3 and answer["pid"] == os.getpid()
    users = [(s["user"], s["tried"], s["state"]) for s in answer["sessions"]]
    assert users == [("alice", "", "TRANSACTION"), ("bob", "", "TRANSACTION"),
                     ("", "carol", "AUTHORIZATION")]
    d = client.callRemote(Who, match="ALICE")
    pump.flush()
    assert [s["user"] for s in _sync.successResultOf(d)["sessions"]] == ["alice"]

    d = client.callRemote(Kick, match="alice")
    pump.flush()
    assert _sync.successResultOf(d)["kicked"] == 1
    assert alice.take() == b"-ERR [SYS/PERM] Disconnected by the administrator.\r\n"
    assert alice.transport.disconnecting
    assert alice.protocol.report.end_reason == "kicked"
    alice.lose()
    assert len(factory.sessions) == 2

    peer_ip = bob.protocol.report.rip
    d = client.callRemote(Kick, match=f"{peer_ip}/32")
    pump.flush()
    assert _sync.successResultOf(d)["kicked"] == 2  # bob and the one not logged in
    d = client.callRemote(Kick, match="nobody")
    pump.flush()
    assert _sync.successResultOf(d)["kicked"] == 0


def test_who_lists_a_bounded_number() -> None:
    portal, _ = make_portal()
    first = connect(portal)
    factory = first.protocol.factory
    for _ in range(MAX_LISTED + 5):
        factory.sessions.add(connect(portal).protocol)
    client, pump = _admin_pair(factory)
    d = client.callRemote(Who, match="")
    pump.flush()
    answer = _sync.successResultOf(d)
    assert answer["total"] == MAX_LISTED + 6 and len(answer["sessions"]) == MAX_LISTED


def test_a_busy_session_is_dropped_at_once() -> None:
    portal, _ = make_portal()
    session = connect(portal)
    session.login()
    session.protocol.paused = True  # a command still running
    session.transport.clear()
    session.protocol.disconnect_by_admin()
    assert session.transport.value() == b""  # no -ERR inside a reply


# -- probes


@implementer(IReachable)
class _Probed:
    def __init__(self, result: Any) -> None:
        self.result = result

    def probe(self) -> defer.Deferred[str]:
        return self.result


def test_probe_all_answers_in_order() -> None:
    clock = Clock()
    hanging: defer.Deferred[str] = defer.Deferred()
    d = defer.Deferred.fromCoroutine(probe_all(
        ["a:1", "b:2", "c:3", "d:4"],
        [_Probed(defer.succeed("fine")),
         _Probed(defer.fail(TemporaryFailure("cannot connect to\nhost:1"))),
         object(), _Probed(hanging)], clock, timeout=5))
    clock.advance(5)
    answers = _sync.successResultOf(d)
    assert [(a.label, a.ok, a.text) for a in answers] == [
        ("--auth a", True, "fine"),
        ("--auth b", False, "cannot connect to host:1"),
        ("--auth c", None, "cannot be probed (no IReachable)"),
        ("--auth d", False, "no answer within 5s"),
    ]


def test_start_up_logs_an_unreachable_store_and_goes_on() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        probe = StartupProbe(Clock(), ["sql:dsn=x", "memory:a:b"],
                             [_Probed(defer.fail(TemporaryFailure("down"))),
                              MemoryChecker({"a": "b"})])
        _sync.successResultOf(probe.start())
    finally:
        globalLogPublisher.removeObserver(events.append)
    errors = [e for e in events if e.get("event") == "userstore.error"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == LogLevel.error and errors[0]["op"] == "probe"
    assert errors[0]["why"] == "--auth sql: down"
    assert any("reachable" in e.get("log_format", "") for e in events)


def test_user_file_probe(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\nbad line\nbob:{PLAIN}b\n")
    checker = HtpasswdChecker(str(path), reactor=InlineReactor())
    assert verifyObject(IReachable, checker)
    assert _sync.successResultOf(checker.probe()) == "2 users, 1 malformed line ignored"
    path.unlink()
    failure = _sync.failureResultOf(checker.probe(), TemporaryFailure)
    assert str(failure.value) == f"cannot read user file {path}: No such file or directory"


# -- check-config's findings


@pytest.fixture(autouse=True)
def no_descriptor_limit_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))


def _config(args: list[str]) -> Any:
    options = tap.Options()
    options.parseOptions(args)
    return options.config


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = _config(["--store", f"maildir:{tmp_path}/nomail/%n",
                      "--auth", f"htpasswd:{tmp_path}/nousers", "--auth", "memory:a:b",
                      "--pop3", "1110", "--lmtp", "tcp:notaport",
                      "--admin-socket", f"{tmp_path}/nodir/admin.sock"])
    found = check.build_parts(config, MemoryReactorClock())
    assert found.problems == [
        f"--auth htpasswd: htpasswd: no such file: {tmp_path}/nousers",
        "--pop3 1110: Unknown endpoint type: '1110'",
        "--lmtp tcp:notaport: invalid literal for int() with base 10: 'notaport'",
        f"--admin-socket {tmp_path}/nodir/admin.sock: no directory {tmp_path}/nodir",
        f"--store maildir: the mail root {tmp_path}/nomail does not exist",
    ]
    assert [d for d, _ in found.checkers] == ["memory:a:b"]
    lines: list[str] = []
    assert check.report(found, lines.append) == 1
    assert lines[-1] == "popgate check-config: 5 problems\n"


def test_check_config_ok(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "mail").mkdir()
    config = _config(["--store", f"maildir:{tmp_path}/mail/%n", "--auth", "memory:a:b",
                      "--pop3", "tcp:1110", "--tls-cert", str(pki.cert), "--tls-key",
                      str(pki.key)])
    reactor = MemoryReactorClock()
    found = check.build_parts(config, reactor)
    assert found.problems == []
    d = defer.Deferred.fromCoroutine(check.probe_stores(found, reactor))
    _sync.successResultOf(d)
    lines: list[str] = []
    assert check.report(found, lines.append) == 0
    assert lines == [f"popgate check-config: ok: store maildir, TLS certificate (expires "
                     f"{found.fine[1][-11:-1]}), 1 listener, memory (1 user given on the "
                     "command line)\n"]


def test_check_config_certificate_expiry(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = _config(["--store", "memory:", "--auth", "memory:a:b", "--tls-cert", str(pki.cert),
                      "--tls-key", str(pki.key)])
    now = datetime.datetime.now(datetime.UTC)
    soon = check.build_parts(config, MemoryReactorClock(), now + datetime.timedelta(days=20))
    assert soon.problems == [] and "the certificate expires on" in soon.warnings[0]
    late = check.build_parts(config, MemoryReactorClock(), now + datetime.timedelta(days=40))
    assert late.problems[0].startswith(f"--tls-cert {pki.cert}: the certificate expired on")


# -- errors in one line under twistd


def test_a_bad_option_under_twistd_is_one_line() -> None:
    options = tap.Options()
    options.parent = {}  # type: ignore[assignment]  # as twistd's ServerOptions sets it
    with pytest.raises(tap.OptionsExit) as e:
        options.parseOptions(["--idle-timeout", "x"])
    assert e.value.code == ("popgate: --idle-timeout must be a number, not 'x' "
                            "(see twistd popgate --help)")
    assert e.value.error == "--idle-timeout must be a number, not 'x'"
    with pytest.raises(usage.UsageError):  # not under twistd: the error itself
        tap.Options().parseOptions(["--idle-timeout", "x"])


class _Refusing:
    name = "pop3 tcp:1110"

    def privilegedStartService(self) -> None:
        from twisted.internet.error import CannotListenError

        raise CannotListenError("127.0.0.1", 1110, OSError(98, "Address already in use"))


def test_a_port_in_use_is_one_line_under_twistd() -> None:
    server = Server.__new__(Server)
    Server.__bases__[0].__init__(server)
    server.exit_on_listen_failure = True
    server.services = [_Refusing()]  # type: ignore[list-item]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(SystemExit) as e:
            server.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert e.value.code == 1
    critical = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert len(critical) == 1
    assert critical[0]["why"] == "cannot listen on 127.0.0.1:1110: Address already in use"
    assert listen_failure(OSError(13, "Permission denied")) == "cannot listen: Permission denied"


# -- the client side of the admin socket


def test_client_says_why_it_cannot_ask() -> None:
    import errno

    from twisted.internet import error

    from popgate.admin.client import _why

    path = "/run/popgate/admin.sock"
    assert _why(path, error.ConnectError(errno.ENOENT, "x")).startswith(
        f"no admin socket at {path} (is popgate running with --admin-socket")
    assert _why(path, error.ConnectError(errno.EACCES, "x")) == (
        f"permission denied on {path}: the admin socket is for root (run as root)")
    assert _why(path, error.ConnectionRefusedError("refused")).startswith(
        f"nothing listens on {path}")


def test_client_finds_the_worker_sockets(tmp_path: Path) -> None:
    from popgate.admin.client import sockets

    base = tmp_path / "admin.sock"
    for name in ("admin.sock", "admin.sock.lock", "admin.sock.2", "admin.sock.10",
                 "admin.sock.1", "admin.sockx.3"):
        (tmp_path / name).write_text("")
    assert sockets(str(base)) == [str(base), f"{base}.1", f"{base}.2", f"{base}.10"]
