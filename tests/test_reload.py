"""
The reload (popgate.reload): in memory, each kind of change is applied,
logged as needing a restart, or refused whole with one line; over real
twistd processes (plain, TLS, --config, --workers 2), SIGHUP leaves the
process running and the change is visible on the wire.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, endpoints
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from popgate import tap
from popgate.build import Server, build_server
from popgate.cred.schemes import hash_password
from popgate.interfaces import IMaildrop
from popgate.limits import process as limits_process
from popgate.logs import file_log
from popgate.reload import Outcome, Reloader, install
from popgate.settings import SETTINGS
from tests.harness import alive
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess
from tests.tlscerts import PKI, make_pki

pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_descriptor_limit_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_limits raises the soft descriptor limit: not of the test runner."""
    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (4096, 4096))


def endpoint(reactor: Any, description: str) -> Any:
    return endpoints.serverFromString(reactor, description)


class Site:
    """A server built from a TOML file (and a command line), in memory,
    with its reload installed; L{write} changes the file."""

    def __init__(self, tmp_path: Path, toml: str, args: tuple[str, ...] = ()) -> None:
        self.path = tmp_path / "popgate.toml"
        self.write(toml)
        self.reactor = MemoryReactorClock()
        self.server: Server = build_server(
            tap.parse_config(["--config", str(self.path), *args]), self.reactor, endpoint)
        self.output = io.StringIO()
        self.server.log_observer = file_log(self.output, "text", self.server.config.log_level)
        self.reloader = install(self.server, tap.parse_config, self.reactor)

    def write(self, toml: str) -> None:
        self.path.write_text(toml)

    def reload(self) -> tuple[Outcome, list[dict[str, Any]]]:
        """Reload (inline: a memory reactor has no threads); the outcome
        and the config.reload events logged."""
        observer = self.server.log_observer
        assert observer is not None
        globalLogPublisher.addObserver(observer)
        try:
            with capturedLogs() as events:
                d = self.reloader.reload()
        finally:
            globalLogPublisher.removeObserver(observer)
        assert d.called, "a reload on a memory reactor runs inline"
        return d.result, [e for e in events if e.get("event") == "config.reload"]


BASE = '[popgate]\nstore = "memory:"\nauth = ["memory:alice:secret"]\npop3 = ["tcp:1110"]\n'


def one_line(events: list[dict[str, Any]]) -> tuple[LogLevel, str]:
    (event,) = events
    return event["log_level"], formatEvent(event)


def login(server: Server, user: bytes, password: bytes) -> bool:
    d = server.portal.login(UsernamePassword(user, password), None, IMaildrop)
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        return False
    result[2]()  # log out: the maildrop is free again
    return True


def greeting(server: Server) -> bytes:
    """The first line a new POP3 session sends."""
    proto = server.pop3.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    line = transport.value().split(b"\r\n")[0]
    proto.connectionLost(Failure(ConnectionError()))
    return line


# -- what applies live


def test_liveness_is_declared_with_each_setting() -> None:
    live = {s.key for s in SETTINGS if s.live}
    assert {"greeting", "auth", "tls_cert", "tls_key", "max_connections", "log_level",
            "idle_timeout", "hostname"} <= live
    assert not live & {"pop3", "pop3s", "lmtp", "store", "workers", "metrics", "log_format",
                       "admin_socket", "config", "worker", "worker_number"}


def test_new_session_settings_go_to_new_sessions_and_open_ones_keep_theirs(
        tmp_path: Path) -> None:
    site = Site(tmp_path, BASE + 'greeting = "old hello"\nidle_timeout = 600\n')
    before = site.server.pop3.buildProtocol(None)
    assert b"old hello" in greeting(site.server)
    site.write(BASE + 'greeting = "new hello"\nidle_timeout = 60\nmax_auth_failures = 5\n')
    outcome, events = site.reload()
    assert outcome == Outcome("ok", ("greeting", "idle_timeout", "max_auth_failures"))
    assert b"new hello" in greeting(site.server)
    assert site.server.pop3.settings.idle_timeout == 60
    assert site.server.pop3.settings.max_auth_failures == 5
    assert before.settings.greeting == "old hello"  # open sessions keep theirs
    assert site.server.config.greeting == "new hello"
    assert one_line(events) == (LogLevel.info, "config: Reloaded: changed=<greeting,idle_timeout,"
                                "max_auth_failures>, restart_needed=<>, certificate=<>")
    # Nothing changed: a reload says so.
    outcome, events = site.reload()
    assert outcome == Outcome("ok")
    assert one_line(events)[1] == "config: Reloaded: changed=<>, restart_needed=<>, certificate=<>"


def test_connection_limits_and_exempt_networks_change_in_place(tmp_path: Path) -> None:
    site = Site(tmp_path, BASE + "max_connections = 50\nmax_connections_per_ip = 20\n")
    connections = site.server.limits.connections
    ticket, _ = connections.admit(None)  # an open connection stays counted
    site.write(BASE + 'max_connections = 70\nmax_connections_per_ip = 3\n'
                      'exempt_networks = ["10.0.0.0/8"]\n')
    outcome, _ = site.reload()
    assert outcome.changed == ("max_connections", "max_connections_per_ip", "exempt_networks")
    assert site.server.limits.connections is connections  # the listeners' own object
    assert (connections.max_connections, connections.max_per_ip) == (70, 3)
    assert [str(n) for n in connections.exempt] == ["10.0.0.0/8"]
    assert [str(n) for n in site.server.penalty.exempt_networks] == ["10.0.0.0/8"]
    assert connections.total == 1
    assert ticket is not None
    ticket.release()
    assert connections.total == 0


def test_user_stores_are_swapped_and_unchanged_ones_kept(tmp_path: Path) -> None:
    site = Site(tmp_path, BASE)
    kept = site.server.checkers[0]
    assert login(site.server, b"alice", b"secret")
    site.write(BASE.replace('auth = ["memory:alice:secret"]',
                            'auth = ["memory:alice:secret", "memory:bob:pw"]'))
    outcome, _ = site.reload()
    assert outcome.changed == ("auth",)
    assert site.server.checkers[0] is kept  # its connections, its file watch
    assert login(site.server, b"bob", b"pw") and login(site.server, b"alice", b"secret")
    site.write(BASE.replace('auth = ["memory:alice:secret"]', 'auth = ["memory:bob:pw"]'))
    site.reload()
    assert not login(site.server, b"alice", b"secret")
    assert login(site.server, b"bob", b"pw")


def test_an_edited_htpasswd_file_is_read_again(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}secret\n")
    site = Site(tmp_path, BASE.replace("memory:alice:secret", f"htpasswd:{users}"))
    other = tmp_path / "other"
    other.write_text("bob:{PLAIN}pw\n")
    site.write(BASE.replace('"memory:alice:secret"', f'"htpasswd:{users}", "htpasswd:{other}"'))
    outcome, _ = site.reload()
    assert outcome.result == "ok" and outcome.changed == ("auth",)
    assert [c.path for c in site.server.checkers] == [str(users), str(other)]  # type: ignore


def test_the_certificate_is_reloaded_into_the_object_the_listeners_hold(
        tmp_path: Path, pki: PKI) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    toml = BASE + f'tls_cert = "{cert}"\ntls_key = "{key}"\npop3s = ["tcp:1995"]\n'
    site = Site(tmp_path, toml)
    tls = site.server.tls
    assert tls is not None and site.server.pop3.tls is tls
    before = tls.serverConnectionForTLS(None).get_context()
    # Renewed in place (certbot): the same paths, new files.
    shutil.copy(pki.other_cert, cert)
    shutil.copy(pki.other_key, key)
    outcome, events = site.reload()
    assert outcome.result == "ok" and outcome.changed == ()
    assert site.server.tls is tls and site.server.pop3.tls is tls
    assert tls.serverConnectionForTLS(None).get_context() is not before
    assert outcome.certificate.startswith(f"{cert}, expires 20")
    assert f"certificate=<{cert}, expires 20" in one_line(events)[1]
    # A new path: applied too.
    site.write(toml.replace(str(cert), str(pki.cert)).replace(str(key), str(pki.key)))
    outcome, _ = site.reload()
    assert outcome.changed == ("tls_cert", "tls_key") and tls.cert_path == str(pki.cert)


def test_a_certificate_added_live_offers_stls(tmp_path: Path, pki: PKI) -> None:
    site = Site(tmp_path, BASE)
    assert site.server.pop3.tls is None
    site.write(BASE + f'tls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\n')
    outcome, _ = site.reload()
    assert outcome.changed == ("tls_cert", "tls_key")
    assert site.server.tls is not None and site.server.pop3.tls is site.server.tls


def test_the_log_level_changes_and_the_line_says_so(tmp_path: Path) -> None:
    site = Site(tmp_path, BASE)
    assert site.server.log_observer is not None
    site.write(BASE + 'log_level = "warn"\n')
    outcome, _ = site.reload()
    assert outcome.changed == ("log_level",)
    assert site.server.log_observer.level == "warn"
    # Written before the level went up to warn, and after it came down.
    site.write(BASE + 'log_level = "debug"\n')
    site.reload()
    assert site.server.log_observer.level == "debug"
    lines = [line for line in site.output.getvalue().splitlines() if "config: Reloaded" in line]
    assert len(lines) == 2 and all("changed=<log_level>" in line for line in lines)


def test_the_hostname_goes_to_pop3_and_lmtp(tmp_path: Path) -> None:
    toml = BASE + 'lmtp = ["tcp:2424"]\nhostname = "mx1.example"\n'
    site = Site(tmp_path, toml)
    assert site.server.lmtp is not None and site.server.lmtp.hostname_bytes == b"mx1.example"
    site.write(toml.replace("mx1", "mx2"))
    outcome, _ = site.reload()
    assert outcome.changed == ("hostname",)
    assert site.server.lmtp.hostname_bytes == b"mx2.example"
    assert site.server.pop3.settings.hostname == "mx2.example"


# -- what needs a restart


def test_listeners_and_the_store_are_logged_as_needing_a_restart_and_not_applied(
        tmp_path: Path) -> None:
    site = Site(tmp_path, BASE + 'greeting = "a"\n')
    store = site.server.store
    site.write(BASE.replace("tcp:1110", "tcp:1111").replace('"memory:"', f'"maildir:{tmp_path}/%n"')
               + 'greeting = "b"\nworkers = 2\nlog_format = "json"\n')
    outcome, events = site.reload()
    assert outcome.result == "ok"
    assert outcome.changed == ("greeting",)
    assert outcome.restart_needed == ("pop3", "store", "log_format", "workers")
    level, text = one_line(events)
    assert level == LogLevel.warn
    assert text == ("config: Reloaded: changed=<greeting>, "
                    "restart_needed=<pop3,store,log_format,workers>, certificate=<>")
    assert site.server.store is store
    assert site.server.config.pop3 == ("tcp:1110",) and site.server.config.workers == 1
    assert [s.name for s in site.server if s.name and s.name.startswith("pop3")] == [
        "pop3 tcp:1110"]
    # Until the restart, every reload says so again.
    outcome, _ = site.reload()
    assert outcome.changed == () and "pop3" in outcome.restart_needed


# -- what is refused, whole


@pytest.mark.parametrize("toml, why", [
    ('[popgate\nstore = "memory:"\n', "config file {path}: "),
    (BASE + 'gretting = "x"\n', "config file {path}: unknown key 'gretting' "
                                "(did you mean 'greeting'?)"),
    (BASE + 'idle_timeout = "soon"\n', "config file {path}: idle_timeout has the wrong type"),
    (BASE.replace("memory:alice:secret", "htpasswd:/nonexistent/users"),
     "--auth htpasswd: htpasswd: no such file: /nonexistent/users"),
    (BASE.replace('"memory:"', '"nosuch:x"'), "--store: unknown store type 'nosuch'"),
    (BASE + 'tls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"\n',
     "--tls-cert/--tls-key: cannot read certificate /nonexistent/cert.pem"),
    (BASE + 'tls_cert = "/nonexistent/cert.pem"\n', "--tls-cert and --tls-key go together"),
])
def test_a_broken_configuration_keeps_the_old_one_whole_and_says_why_in_one_line(
        tmp_path: Path, toml: str, why: str) -> None:
    site = Site(tmp_path, BASE + 'greeting = "old"\n')
    server = site.server
    running, checkers, settings = server.config, server.checkers, server.pop3.settings
    # With a live change along, which must not be applied either.
    site.write(toml.replace("[popgate]\n", '[popgate]\ngreeting = "new"\n', 1))
    outcome, events = site.reload()
    why = why.format(path=site.path)
    assert outcome.result == "failed" and outcome.why.startswith(why), outcome.why
    assert site.server.config is running and site.server.checkers is checkers
    assert site.server.pop3.settings is settings and b"old" in greeting(site.server)
    level, text = one_line(events)
    assert level == LogLevel.error
    assert text.startswith("config: Reload failed, keeping the old configuration: why=<")
    assert "\n" not in text
    written = site.output.getvalue().splitlines()
    assert len([line for line in written if "config: " in line]) == 1


def test_a_key_that_does_not_match_keeps_the_old_certificate(tmp_path: Path, pki: PKI) -> None:
    toml = BASE + f'tls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\n'
    site = Site(tmp_path, toml)
    assert site.server.tls is not None
    context = site.server.tls.serverConnectionForTLS(None).get_context()
    site.write(toml.replace(str(pki.key), str(pki.other_key)))
    outcome, _ = site.reload()
    assert outcome.result == "failed" and "does not match" in outcome.why
    assert site.server.tls.serverConnectionForTLS(None).get_context() is context
    assert site.server.tls.key_path == str(pki.key)


def test_pop3s_listeners_keep_their_certificate_until_a_restart(tmp_path: Path, pki: PKI) -> None:
    toml = BASE + f'tls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\npop3s = ["tcp:1995"]\n'
    site = Site(tmp_path, toml)
    site.write(BASE)  # no certificate, no POP3S: the listener runs until a restart
    outcome, _ = site.reload()
    assert outcome.result == "failed"
    assert outcome.why.startswith("the --pop3s listeners need --tls-cert and --tls-key")
    assert site.server.tls is not None


def test_the_command_line_still_wins_over_the_file(tmp_path: Path) -> None:
    site = Site(tmp_path, BASE + 'greeting = "file"\n', ("--greeting", "command line"))
    site.write(BASE + 'greeting = "file, edited"\nidle_timeout = 700\n')
    outcome, _ = site.reload()
    assert outcome.changed == ("idle_timeout",)
    assert b"command line" in greeting(site.server)


# -- one at a time, through the SIGHUP hook


def test_reloads_asked_for_during_one_wait_and_share_the_next(tmp_path: Path) -> None:
    site = Site(tmp_path, BASE)
    calls: list[defer.Deferred[Any]] = []
    ran: list[Callable[[], Any]] = []

    def held(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        calls.append(d)
        ran.append(lambda: d.callback(f(*args)))
        return d

    reloader = Reloader(site.server, tap.parse_config, site.reactor, held)
    first = reloader.reload()
    second, third = reloader.reload(), reloader.reload()
    assert len(calls) == 1  # no overlap
    ran.pop(0)()
    assert first.called and not second.called
    assert first.result.changed == ()
    site.write(BASE + 'greeting = "second"\n')
    assert len(calls) == 2  # one more for both
    ran.pop(0)()
    assert second.result is third.result and second.result.changed == ("greeting",)
    assert len(calls) == 2


def test_sighup_runs_the_reload_and_the_start_up_line_says_what_it_reads(
        tmp_path: Path, pki: PKI) -> None:
    site = Site(tmp_path, BASE + f'tls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\n')
    ((_, description),) = site.server.hangup._reloads
    assert description == (f"the config file {site.path}, the user stores, the TLS certificate "
                           f"{pki.cert} (expires {site.server.tls.expires})")  # type: ignore
    site.write(BASE + f'greeting = "hup"\ntls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\n')
    with capturedLogs() as events:
        d = site.server.hangup.hangup()
    # The reload's own line, and no "SIGHUP:" line to repeat it.
    assert d.result == ""
    texts = [formatEvent(e) for e in events]
    assert [t for t in texts if t.startswith("config: ")] == [
        f"config: Reloaded: changed=<greeting>, restart_needed=<>, certificate=<{pki.cert}, "
        f"expires {site.server.tls.expires:%Y-%m-%dT%H:%M:%SZ}>"]  # type: ignore
    assert not [t for t in texts if t.startswith("SIGHUP")]


def test_make_service_installs_the_reload(tmp_path: Path) -> None:
    options = tap.Options()
    options.parseOptions(["--store", "memory:", "--auth", "memory:alice:secret",
                          "--pop3", "tcp:1110"])
    server = tap.makeService(options, MemoryReactorClock())
    ((_, description),) = server.hangup._reloads
    assert description == "the command line, the user stores"


# -- real twistd processes

PASSWORD = b"pw"


def htpasswd(path: Path, *users: str) -> Path:
    path.write_text("".join(f"{u}:{hash_password(PASSWORD.decode(), rounds=4, prefix=False)}\n"
                            for u in users))
    return path


def mailboxes(tmp_path: Path, *users: str) -> str:
    for user in users:
        new = tmp_path / "mail" / user / "new"
        new.mkdir(parents=True)
        (new / "1700000000.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    return f"maildir:{tmp_path}/mail/%n"


def wait_for(server: PopgateProcess, text: str, count: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = Path(server.log_path or "").read_text(errors="replace")
        if log.count(text) >= count:
            return log
        assert server.process is not None and server.process.poll() is None, log[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} x{count} in: {log[-3000:]}"
        time.sleep(0.1)


def hang_up(server: PopgateProcess, count: int, line: str = "config: Reloaded: ") -> str:
    """SIGHUP to the process this test started; the log once C{line} is
    there C{count} times in all."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)
    log = wait_for(server, line, count)
    assert server.process.poll() is None and alive(server.process.pid)
    return log


def logs_in(port: int, user: bytes) -> bool:
    with RawClient(port) as client:
        client.cmd(b"USER " + user)
        ok = client.cmd(b"PASS " + PASSWORD).startswith(b"+OK")
        if ok:
            assert client.cmd(b"STAT").startswith(b"+OK 1 ")
        client.cmd(b"QUIT")
        return ok


def greets(port: int) -> bytes:
    with RawClient(port) as client:
        assert client.greeting is not None
        client.cmd(b"QUIT")
        return client.greeting


def serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a POP3S listener presents."""
    context = ssl.create_default_context(cafile=str(ca))
    with RawClient(port, tls=context) as client:
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        client.cmd(b"QUIT")
    return x509.load_der_x509_certificate(der).serial_number


def toml_file(path: Path, **values: Any) -> Path:
    lines = ["[popgate]"]
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(str(v)) for v in value)}]")
        else:
            lines.append(f"{key} = {value!r}")
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


@pytest.mark.integration
def test_sighup_without_tls_or_config_file_rereads_the_user_file(tmp_path: Path) -> None:
    users = htpasswd(tmp_path / "users", "alice")
    args = ["--auth", f"htpasswd:{users}", "--store", mailboxes(tmp_path, "alice", "bob"),
            "--auth-failure-delay", "0", "--auth-cache-negative-ttl", "3600"]
    with PopgateProcess(args, log_path=str(tmp_path / "log")) as server:
        wait_for(server, "SIGHUP reloads: the command line, the user stores")
        assert logs_in(server.port, b"alice") and not logs_in(server.port, b"bob")
        htpasswd(users, "alice", "bob")
        # bob's failure is cached for an hour: the reload empties the cache.
        log = hang_up(server, 1)
        assert "config: Reloaded: changed=<>, restart_needed=<>, certificate=<>" in log
        assert logs_in(server.port, b"bob")
        hang_up(server, 2)  # and again: the handler stays
        assert logs_in(server.port, b"alice")


@pytest.mark.integration
def test_sighup_with_tls_puts_the_renewed_certificate_in_use(tmp_path: Path, pki: PKI) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    args = ["--auth", f"htpasswd:{htpasswd(tmp_path / 'users', 'alice')}",
            "--store", mailboxes(tmp_path, "alice"), "--auth-failure-delay", "0",
            "--tls-cert", str(cert), "--tls-key", str(key)]
    with PopgateProcess(args, log_path=str(tmp_path / "log"), pop3s=True) as server:
        assert server.pop3s_port is not None
        wait_for(server, f"the TLS certificate {cert} (expires ")
        before = serial(server.pop3s_port, pki.ca)
        shutil.copy(pki.other_cert, cert)
        shutil.copy(pki.other_key, key)
        log = hang_up(server, 1)
        assert f"certificate=<{cert}, expires 20" in log
        after = serial(server.pop3s_port, pki.ca)
        assert after != before
        assert after == x509.load_pem_x509_certificate(pki.other_cert.read_bytes()).serial_number
        # A broken key: the renewed certificate stays in use.
        key.write_text("not a key")
        log = hang_up(server, 1, "config: Reload failed, keeping the old configuration: ")
        assert f"no usable PEM private key in {key}" in log
        assert serial(server.pop3s_port, pki.ca) == after
        assert logs_in(server.port, b"alice")


@pytest.mark.integration
def test_sighup_with_a_config_file_applies_it(tmp_path: Path) -> None:
    alice = htpasswd(tmp_path / "alice", "alice")
    bob = htpasswd(tmp_path / "bob", "bob")
    store = mailboxes(tmp_path, "alice", "bob")
    config = toml_file(tmp_path / "popgate.toml", auth=[f"htpasswd:{alice}"], store=store,
                       greeting="popgate one.", auth_failure_delay=0)
    with PopgateProcess(["--config", str(config)], log_path=str(tmp_path / "log")) as server:
        wait_for(server, f"SIGHUP reloads: the config file {config}, the user stores")
        assert greets(server.port) == b"+OK popgate one."
        assert not logs_in(server.port, b"bob")
        toml_file(config, auth=[f"htpasswd:{alice}", f"htpasswd:{bob}"], store=store,
                  greeting="popgate two.", auth_failure_delay=0, lmtp=["tcp:1"])
        log = hang_up(server, 1)
        assert ("config: Reloaded: changed=<auth,greeting>, restart_needed=<lmtp>, "
                "certificate=<>") in log
        assert greets(server.port) == b"+OK popgate two."
        assert logs_in(server.port, b"bob") and logs_in(server.port, b"alice")
        config.write_text("[popgate]\ngreeting = \n")  # broken: the old one stays
        log = hang_up(server, 1, "config: Reload failed, keeping the old configuration: why=<"
                                 f"config file {config}: ")
        assert greets(server.port) == b"+OK popgate two."
        assert logs_in(server.port, b"bob")


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.integration
def test_sighup_with_workers_reloads_every_process(tmp_path: Path) -> None:
    store = mailboxes(tmp_path, "alice")
    users = htpasswd(tmp_path / "users", "alice")
    config = toml_file(tmp_path / "popgate.toml", auth=[f"htpasswd:{users}"], store=store,
                       greeting="popgate one.", auth_failure_delay=0, workers=2)
    with PopgateProcess(["--config", str(config)], log_path=str(tmp_path / "log")) as server:
        assert server.process is not None
        wait_for(server, "SIGHUP reloads: ", 2)  # each process, once its hook is installed
        workers = children_of(server.process.pid)
        assert len(workers) == 1
        toml_file(config, auth=[f"htpasswd:{users}"], store=store, greeting="popgate two.",
                  auth_failure_delay=0, workers=2)
        log = hang_up(server, 2)  # the parent's line and the worker's
        assert log.count("config: Reloaded: changed=<greeting>, restart_needed=<>") == 2
        assert log.count("SIGHUP: passed on to 1 worker") == 1
        for pid in [server.process.pid, *workers]:
            assert alive(pid)
        assert children_of(server.process.pid) == workers and "ended" not in log
        # The kernel spreads new connections over both processes.
        assert {greets(server.port) for _ in range(20)} == {b"+OK popgate two."}
        assert logs_in(server.port, b"alice")
