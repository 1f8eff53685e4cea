"""
popgate.testing without sockets: L{MemoryPOP3Server} and its
C{pop3_memory_server} fixture (bytes in, bytes out, time on a fake clock),
and the shaping and faults both test servers share.  The socket server is
tested in C{test_testing_fixture.py} (integration).
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper

from popgate.pop3.settings import SessionSettings
from popgate.stores.memory import MemoryStore
from popgate.testing import TEST_SETTINGS, Faults, MemoryPOP3Server
from popgate.testing.shaping import ShapingFactory
from tests.pop3_oracle import wire
from tests.popgate_server import REPO

MESSAGE = b"Subject: hello\r\n\r\n.starts with a dot\r\nbye\r\n"
LOGIN = b"USER alice\r\nPASS pw\r\n"
LOGGED_IN = b"+OK\r\n+OK Logged in.\r\n"


@pytest.fixture
def server() -> Any:
    with MemoryPOP3Server(users={"alice": "pw", b"bob": b"bobpw"},
                          mailboxes={"alice": [MESSAGE, b"second\n"]}) as running:
        yield running


# -- the server


def test_serves_users_and_mailboxes_byte_for_byte(server):
    session = server.connect()
    assert session.greeting.startswith(b"+OK popgate test server ready. <")
    assert session.send(LOGIN) == LOGGED_IN
    assert session.send(b"STAT\r\n") == b"+OK 2 %d\r\n" % (len(MESSAGE) + len(b"second\r\n"))
    assert session.send(b"RETR 1\r\n") == b"+OK %d octets\r\n" % len(MESSAGE) + wire(MESSAGE)
    assert session.send(b"DELE 2\r\nQUIT\r\n") == (b"+OK Marked to be deleted.\r\n"
                                                    b"+OK Logging out, messages deleted.\r\n")
    assert session.closed
    assert server.messages("alice") == [MESSAGE]
    assert server.messages("bob") == []
    with pytest.raises(ConnectionError):
        session.send(b"NOOP\r\n")


def test_a_wrong_password_is_answered_at_once_and_time_stands_still(server):
    session = server.connect()
    assert session.send(b"USER alice\r\nPASS wrong\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert session.clock.seconds() == 0


def test_the_real_failure_delay_passes_on_the_clock():
    settings = SessionSettings(auth_failure_delay=2.0, hostname="localhost")
    server = MemoryPOP3Server(users={"alice": "pw"}, settings=settings)
    session = server.connect()
    assert session.send(b"USER alice\r\nPASS wrong\r\n").endswith(b"-ERR [AUTH] Authentication failed.\r\n")
    assert session.clock.seconds() >= 2.0


def test_apop_is_offered(server):
    from hashlib import md5

    session = server.connect()
    stamp = session.greeting.split()[-1]
    digest = md5(stamp + b"bobpw").hexdigest().encode()
    assert session.send(b"APOP bob " + digest + b"\r\n").startswith(b"+OK")


def test_one_session_per_mailbox_and_a_hang_up_changes_nothing(server):
    first = server.connect()
    first.send(LOGIN + b"DELE 1\r\n")
    second = server.connect()
    assert second.send(LOGIN) == b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
    first.close()
    assert first.closed
    assert server.messages("alice") == [MESSAGE, b"second\n"]
    assert second.send(LOGIN) == LOGGED_IN


def test_add_message_and_user(server):
    uid = server.add_message("alice", b"third\n")
    server.add_user("carol", "carolpw")
    server.add_message(b"carol", b"for carol\n")
    session = server.connect()
    session.send(LOGIN)
    assert session.send(b"UIDL 3\r\n") == b"+OK 3 " + uid + b"\r\n"
    carol = server.connect()
    assert carol.send(b"USER carol\r\nPASS carolpw\r\nRETR 1\r\n").endswith(b"for carol\r\n.\r\n")


def test_a_store_of_your_own():
    store = MemoryStore()
    store.add_message("alice", b"x\n")
    server = MemoryPOP3Server(users={"alice": "pw"}, store=store)
    assert server.connect().send(LOGIN + b"STAT\r\n") == LOGGED_IN + b"+OK 1 3\r\n"


def test_timeouts_come_only_when_time_is_moved_on(server):
    session = server.connect()
    assert session.advance(TEST_SETTINGS.login_timeout - 1) == b""
    assert not session.closed
    assert session.advance(1) == b"-ERR Disconnected: no login in time.\r\n"
    assert session.closed


def test_half_close_answers_what_was_sent(server):
    session = server.connect()
    session._protocol.dataReceived(LOGIN + b"STAT\r\n")  # not yet run: the client shuts now
    out = session.half_close()
    assert out == LOGGED_IN + b"+OK 2 %d\r\n" % (len(MESSAGE) + len(b"second\r\n")), out
    assert session.closed


def test_stop_drops_every_session_without_update(server):
    session = server.connect()
    session.send(LOGIN + b"DELE 1\r\n")
    server.stop()
    assert session.closed
    assert server.messages("alice") == [MESSAGE, b"second\n"]


def test_a_session_from_a_remote_address_must_use_tls_first(server):
    session = server.connect("192.0.2.7")
    assert session.send(b"USER alice\r\n").startswith(b"-ERR")


# -- faults, in memory


@pytest.mark.parametrize("code", ["IN-USE", "SYS/TEMP", "SYS/PERM"])
def test_login_errors(server, code):
    server.faults.login_error = code
    server.faults.login_error_times = 1
    session = server.connect()
    assert session.send(LOGIN).startswith(b"+OK\r\n-ERR [%s]" % code.encode())
    assert session.send(LOGIN) == LOGGED_IN


def test_split_writes_arrive_in_pieces():
    server = MemoryPOP3Server(users={"alice": "pw"}, mailboxes={"alice": [MESSAGE]},
                              faults=Faults(split_writes=(1, 3)), seed=1)
    session = server.connect()
    assert session.greeting.startswith(b"+OK popgate test server ready.")
    assert len(session.writes) >= len(session.greeting) // 3
    assert all(1 <= len(piece) <= 3 for piece in session.writes)
    assert session.send(LOGIN + b"RETR 1\r\n") == LOGGED_IN + b"+OK %d octets\r\n" % len(MESSAGE) + wire(MESSAGE)


def test_response_delay_passes_on_the_clock():
    server = MemoryPOP3Server(users={"alice": "pw"}, faults=Faults(response_delay=2.0))
    session = server.connect()
    assert session.greeting.startswith(b"+OK")
    assert session.clock.seconds() == pytest.approx(2.0)


def test_drop_during_retr(server):
    server.faults.drop_during_retr = True
    session = server.connect()
    out = session.send(LOGIN + b"RETR 1\r\n")
    assert out.startswith(LOGGED_IN + b"+OK %d octets\r\n" % len(MESSAGE))
    rest = out[len(LOGGED_IN + b"+OK %d octets\r\n" % len(MESSAGE)):]
    assert 0 < len(rest) < len(MESSAGE) and wire(MESSAGE).startswith(rest)
    assert session.closed
    assert server.messages("alice") == [MESSAGE, b"second\n"]


def test_hide_uidl_top(server):
    server.faults.hide_uidl_top = True
    session = server.connect()
    capa = session.send(b"CAPA\r\n")
    assert b"\r\nUIDL\r\n" not in capa and b"\r\nTOP\r\n" not in capa
    session.send(LOGIN)
    assert session.send(b"UIDL\r\n").startswith(b"-ERR")
    assert session.send(b"TOP 1 0\r\n").startswith(b"-ERR")


def test_the_clock_can_be_given():
    clock = Clock()
    clock.advance(1000)
    server = MemoryPOP3Server(clock=clock)
    assert server.connect().clock is clock


# -- the fixture


@pytest.fixture
def pop3_server_config():  # overrides the plugin's, as users do
    return {"users": {"alice": "pw"}, "mailboxes": {"alice": [MESSAGE]}}


def test_pop3_memory_server_fixture(pop3_memory_server):
    assert isinstance(pop3_memory_server, MemoryPOP3Server)
    session = pop3_memory_server.connect()
    assert session.send(LOGIN + b"DELE 1\r\nQUIT\r\n").endswith(b"+OK Logging out, messages deleted.\r\n")
    assert pop3_memory_server.messages("alice") == []


def test_the_plugin_is_a_pytest11_entry_point():
    """
    Installing popgate makes pop3_server and pop3_memory_server available
    to every test suite.  The entry point is named like its module, so
    C{-p popgate.testing.pytest_plugin} or C{pytest_plugins = [...]} on
    top of it finds it registered instead of registering the module twice.
    """
    entry_point = "popgate.testing.pytest_plugin"
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project.get("entry-points", {}).get("pytest11") == {entry_point: entry_point}


# -- shaping: split writes and delays, on a fake clock


class _RecordingTransport(StringTransport):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), data))
        super().write(data)


def _shaped(faults: Faults) -> tuple[ProtocolWrapper, _RecordingTransport, Clock, Any]:
    from twisted.internet.protocol import Factory, Protocol

    clock = Clock()
    received: list[bytes] = []

    class Inner(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    factory = ShapingFactory(Factory.forProtocol(Inner), faults, clock, seed=1)
    wrapper = factory.buildProtocol(None)
    transport = _RecordingTransport(clock)
    wrapper.makeConnection(transport)
    return wrapper, transport, clock, factory


def test_split_writes_one_piece_per_timer():
    wrapper, transport, clock, _ = _shaped(Faults(split_writes=(1, 7), split_interval=0.5))
    wrapper.write(b"+OK " + b"x" * 100 + b"\r\n")
    wrapper.loseConnection()
    assert transport.writes == []
    while clock.getDelayedCalls():
        clock.advance(0.5)
    pieces = [data for _, data in transport.writes]
    assert b"".join(pieces) == b"+OK " + b"x" * 100 + b"\r\n"
    assert all(1 <= len(p) <= 7 for p in pieces)
    assert len({len(p) for p in pieces}) > 1
    times = [t for t, _ in transport.writes]
    assert times == sorted(set(times))  # never two pieces at once
    assert transport.disconnecting  # closed only after the last piece


def test_response_delay_holds_every_write():
    wrapper, transport, clock, _ = _shaped(Faults(response_delay=2.0))
    wrapper.write(b"+OK one\r\n")
    clock.advance(1.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert transport.value() == b"+OK one\r\n"
    wrapper.write(b"+OK two\r\n")
    clock.advance(2.0)
    assert transport.value() == b"+OK one\r\n+OK two\r\n"


def test_a_failed_send_closes_after_what_was_sent():
    wrapper, transport, clock, _ = _shaped(Faults())
    wrapper.write(b"+OK 10 octets\r\npart")
    wrapper.abortConnection()
    assert transport.value() == b"+OK 10 octets\r\npart"
    assert transport.disconnecting


def test_shaping_pauses_a_producer_with_a_full_queue():
    wrapper, transport, clock, _ = _shaped(Faults(response_delay=0.5))
    events: list[str] = []

    class Producer:
        def pauseProducing(self) -> None:
            events.append("pause")

        def resumeProducing(self) -> None:
            events.append("resume")

        def stopProducing(self) -> None:
            events.append("stop")

    wrapper.registerProducer(Producer(), True)
    wrapper.write(b"x" * 70000)
    assert events == ["pause"]
    clock.advance(0.5)
    assert events == ["pause", "resume"]
    wrapper.unregisterProducer()


def test_faults_are_checked_and_reset():
    faults = Faults()
    with pytest.raises(ValueError):
        faults.login_error = "BUSY"
    with pytest.raises(ValueError):
        faults.split_writes = (0, 3)
    with pytest.raises(ValueError):
        Faults(response_delay=-1)
    with pytest.raises(ValueError):
        Faults(split_interval=-1)
    faults.login_error = "IN-USE"
    faults.hide_uidl_top = True
    faults.reset()
    assert faults == Faults()
