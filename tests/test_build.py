"""
The composition root in memory, as Twisted's own C{mail/test/test_options.py}
tests C{makeService}: L{popgate.build.build_server} on a
L{MemoryReactorClock} with an endpoint maker that records what it is asked
for.  No socket is opened, no process started.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.systemd import ListenFDs

from popgate import tap
from popgate.build import build_server, systemd_socket_missing
from popgate.limits import process as limits_process
from popgate.plugin_support import LazyStoreFactory, call_maker
from popgate.plural import plural
from popgate.stores import registry
from popgate.stores.maildir import MaildirStore
from tests.tlscerts import PKI, make_pki

# strcred loads every checker plugin, Twisted's unix one too, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")

BASE = ["--store", "memory:", "--auth", "memory:alice:secret"]


class Endpoints:
    """An endpoint maker that records each description, then makes the
    real endpoint on the (memory) reactor it is given."""

    def __init__(self) -> None:
        self.descriptions: list[str] = []

    def __call__(self, reactor: Any, description: str) -> Any:
        self.descriptions.append(description)
        return endpoints.serverFromString(reactor, description)


class RefusingEndpoint:
    """An endpoint whose port is taken."""

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(CannotListenError("127.0.0.1", 1110, OSError("in use")))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_descriptor_limit_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_limits raises the soft descriptor limit: not of the test runner."""
    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))


@pytest.fixture
def restore_sighup() -> Any:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def listeners(server: Any) -> list[str]:
    """The names of C{server}'s listeners, in order (the other services,
    metrics, probes, are not counted)."""
    return [s.name for s in server if s.name and s.name.split()[0] in ("pop3", "pop3s", "lmtp")]


def config(args: list[str]) -> Any:
    options = tap.Options()
    options.parseOptions(args)
    return options.config


def every_listener(pki: PKI) -> list[str]:
    return BASE + ["--pop3", "tcp:1110:interface=127.0.0.1",
                   "--pop3s", "tcp:1995:interface=127.0.0.1",
                   "--lmtp", "tcp:2424:interface=127.0.0.1",
                   "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]


def test_one_listener_per_endpoint_named_by_kind_and_description(pki: PKI) -> None:
    reactor, made = MemoryReactorClock(), Endpoints()
    server = build_server(config(every_listener(pki)), reactor, made)
    assert list(server)[0].name == "hangup"  # first, so SIGHUP is handled before all else
    assert listeners(server) == [
        "pop3 tcp:1110:interface=127.0.0.1", "pop3s tcp:1995:interface=127.0.0.1",
        "lmtp tcp:2424:interface=127.0.0.1"]
    # The endpoint maker got each one, with the listen backlog added.
    assert [d.split(":backlog=")[0] for d in made.descriptions] == [
        "tcp:1110:interface=127.0.0.1", "tcp:1995:interface=127.0.0.1",
        "tcp:2424:interface=127.0.0.1"]
    assert all(":backlog=" in d for d in made.descriptions)
    assert reactor.tcpServers == []  # nothing listens before the service starts


def test_the_server_starts_and_listens_on_the_reactor_it_was_given(
        pki: PKI, restore_sighup: Any) -> None:
    reactor = MemoryReactorClock()
    server = build_server(config(every_listener(pki)), reactor, Endpoints())
    server.privilegedStartService()
    server.startService()
    try:
        ports = {(port, interface) for port, _, _, interface in reactor.tcpServers}
        assert ports == {(1110, "127.0.0.1"), (1995, "127.0.0.1"), (2424, "127.0.0.1")}
        # One SIGHUP hook, installed first, handing the signal to this reactor.
        assert signal.getsignal(signal.SIGHUP) == server.hangup._on_signal
        assert server.hangup.reactor is reactor
    finally:
        server.stopService()
    assert signal.getsignal(signal.SIGHUP) != server.hangup._on_signal


def test_every_part_runs_on_the_one_reactor(tmp_path: Path, pki: PKI) -> None:
    reactor = MemoryReactorClock()
    args = ["--store", f"maildir:{tmp_path}/%n", "--auth", "memory:alice:secret",
            "--lmtp", "tcp:2424:interface=127.0.0.1"]
    server = build_server(config(args), reactor, Endpoints())
    assert isinstance(server.store, MaildirStore)
    assert server.store._reactor is reactor  # its thread pool is the server's
    assert server.pop3.clock is reactor
    assert server.lmtp is not None and server.lmtp.clock is reactor
    assert server.lmtp.target is server.store  # Maildir takes the mail itself
    assert server.portal.realm.reactor is reactor
    assert server.penalty is server.pop3.penalty


def test_a_port_that_cannot_be_bound_stops_start_up(restore_sighup: Any) -> None:
    server = build_server(config(BASE + ["--pop3", "tcp:1110"]), MemoryReactorClock(),
                          lambda reactor, description: RefusingEndpoint())
    with pytest.raises(CannotListenError):
        server.privilegedStartService()


@pytest.mark.parametrize("args, message", [
    (["--store", "nosuch:x", "--auth", "memory:alice:secret"],
     r"^--store: unknown store type 'nosuch' \(known: .*maildir.*\)$"),
    (["--store", "maildir:", "--auth", "memory:alice:secret"],
     r"^--store: maildir: needs a location template"),
    (["--store", "memory:", "--auth", "nosuch:x"],
     r"^--auth: unknown user store type 'nosuch' \(see --help-auth\)$"),
    (BASE + ["--pop3", "nosuch:1110"], r"^--pop3 nosuch:1110: "),
    (BASE + ["--lmtp", "tcp:notaport"], r"^--lmtp tcp:notaport: "),
])
def test_what_cannot_be_built_is_one_usage_line(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message) as e:
        build_server(config(args), MemoryReactorClock(), Endpoints())
    assert "\n" not in str(e.value)


def test_make_service_builds_the_server_or_says_why_in_one_line() -> None:
    options = tap.Options()
    options.parseOptions(BASE + ["--pop3", "tcp:1110:interface=127.0.0.1"])
    server = tap.makeService(options, MemoryReactorClock())
    assert listeners(server) == ["pop3 tcp:1110:interface=127.0.0.1"]
    options = tap.Options()
    options.parseOptions(["--store", "nosuch:", "--auth", "memory:alice:secret"])
    with pytest.raises(SystemExit) as e:
        tap.makeService(options, MemoryReactorClock())
    assert str(e.value).startswith("popgate: --store: unknown store type 'nosuch'")


# -- the configuration file


def test_a_typo_in_the_config_file_is_refused_and_the_close_key_named(tmp_path: Path) -> None:
    path = tmp_path / "popgate.toml"
    path.write_text('stroe = "memory:"\nauth = ["memory:alice:secret"]\n')
    with pytest.raises(usage.UsageError) as e:
        config(["--config", str(path)])
    assert str(e.value) == f"config file {path}: unknown key 'stroe' (did you mean 'store'?)"
    path.write_text('[popgate]\nidle-timeout = 60\n')
    with pytest.raises(usage.UsageError, match=r"unknown key 'idle-timeout' "
                                               r"\(did you mean 'idle_timeout'\?\)"):
        config(["--config", str(path)])
    path.write_text("zzzzzz = 1\n")
    with pytest.raises(usage.UsageError) as e:
        config(["--config", str(path)])
    assert str(e.value) == f"config file {path}: unknown key 'zzzzzz'"


# -- store plugins get the reactor, old ones still work


class NewStyleFactory:
    storeType = "new"

    def makeStore(self, argstring: str, reactor: Any) -> Any:
        return ("new", argstring, reactor)


class OldStyleFactory:
    storeType = "old"

    def makeStore(self, argstring: str) -> Any:
        return ("old", argstring)


def test_the_registry_hands_the_reactor_to_factories_that_take_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    factories = {"new": NewStyleFactory(), "old": OldStyleFactory()}
    monkeypatch.setattr(registry, "store_factories", lambda: factories)
    reactor = MemoryReactorClock()
    assert registry.make_store("new:a", reactor) == ("new", "a", reactor)
    assert registry.make_store("old:b", reactor) == ("old", "b")


def test_a_type_error_inside_a_maker_is_not_taken_for_an_old_signature() -> None:
    calls: list[tuple[Any, ...]] = []

    def broken(argstring: str, reactor: Any) -> Any:
        calls.append((argstring, reactor))
        raise TypeError("a bug in the maker")

    with pytest.raises(TypeError, match="a bug in the maker"):
        call_maker(broken, "x", "reactor")
    assert calls == [("x", "reactor")]  # called once, with the reactor


def test_lazy_store_factories_pass_the_reactor_when_the_maker_takes_it(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    maildir = LazyStoreFactory("maildir", "popgate.stores.maildir.make_store", "", "")
    assert maildir.makeStore(f"{tmp_path}/%n", reactor)._reactor is reactor
    memory = LazyStoreFactory("memory", "popgate.stores.memory.make_store", "", "")
    assert memory.makeStore("", reactor).messages("alice") == []  # a one-argument maker


# -- a systemd: listener whose socket systemd did not pass


def test_a_systemd_endpoint_without_its_socket_is_a_usage_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    config = tap.parse_config(["--store", f"maildir:{tmp_path}/%n", "--auth", "memory:a:b",
                               "--pop3", "systemd:domain=INET:index=0"])
    with pytest.raises(usage.UsageError, match=r"^--pop3 systemd:domain=INET:index=0: no socket "
                                               r"passed by systemd \(LISTEN_FDS unset"):
        build_server(config, MemoryReactorClock())


def test_what_systemd_passed_is_said() -> None:
    one = ListenFDs([3], ("pop3",))
    assert systemd_socket_missing("systemd:domain=INET:index=1", one) == (
        "systemd passed 1 socket, none with index 1 (the first is 0)")
    assert systemd_socket_missing("systemd:domain=INET:name=lmtp", one) == (
        "systemd passed 1 socket, none named 'lmtp' (names: pop3)")
    two = ListenFDs([3, 4], ("pop3", "pop3s"))
    assert systemd_socket_missing("systemd:domain=INET:index=5", two).startswith(
        "systemd passed 2 sockets,")
    none = ListenFDs([])
    assert systemd_socket_missing("systemd:domain=INET:index=0", none, {
        "LISTEN_FDS": "1", "LISTEN_PID": "1"}) == (
        "no socket passed by systemd (LISTEN_PID is not this process)")
    assert systemd_socket_missing("systemd:domain=INET:index=0", none, {}) == (
        "no socket passed by systemd (LISTEN_FDS unset: not started by a socket unit)")
    # What Twisted's parser read at import (and took out of the environment).
    assert systemd_socket_missing("systemd:domain=INET:index=0", environ={}) == (
        "no socket passed by systemd (LISTEN_FDS unset: not started by a socket unit)")


def test_counts_are_plural_unless_one() -> None:
    assert [plural(n, "user") for n in (0, 1, 2)] == ["0 users", "1 user", "2 users"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == (
        "3 entries")
