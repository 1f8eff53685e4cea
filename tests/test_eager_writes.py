"""
popgate.eager_writes over real loopback sockets, in the reactor thread: a
reply goes to the kernel at once (the socket is never registered for
writing), the replies to one read leave in one piece, what the kernel
cannot take is queued in order with back-pressure, and an aborted
connection, a pull producer and STLS keep Twisted's behaviour.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer

from popgate.eager_writes import EagerServer, eager_writes, paced
from popgate.tls import ServerTLS
from tests import reactor_thread
from tests.tlscerts import PKI, make_pki

pytestmark = pytest.mark.integration


class Recorder(protocol.Protocol):
    """Runs the test's C{on_data(self, data)} for each read, in the reactor
    thread, and keeps what it notes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.notes: list[Any] = []

    def connectionMade(self) -> None:
        self.server.connections.append(self)
        if self.server.greeting is not None:
            self.transport.write(self.server.greeting)
            self.notes.append(self.registered_for_writing())

    def dataReceived(self, data: bytes) -> None:
        assert self.server.on_data is not None
        self.server.on_data(self, data)

    def registered_for_writing(self) -> bool:
        from twisted.internet import reactor
        return self.transport in reactor.getWriters()


class Server(protocol.Factory):
    def __init__(self) -> None:
        self.connections: list[Recorder] = []
        self.greeting: bytes | None = None
        self.on_data: Any = None
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> Recorder:
        return Recorder(self)

    def start(self) -> int:
        def listen() -> int:
            from twisted.internet import reactor
            self.port = eager_writes(reactor.listenTCP(0, self, interface="127.0.0.1"))
            return int(self.port.getHost().port)
        return int(reactor_thread.run(listen))

    def stop(self) -> None:
        reactor_thread.run(self.port.stopListening)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.start()
    yield s
    s.stop()


def connect(server: Server) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", server.port.getHost().port), timeout=10)
    return client


def read_exactly(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} octets"
        data += chunk
    return data


def in_reactor(fn: Any) -> Any:
    return reactor_thread.run(fn)


def test_the_ports_connections_are_eager(server: Server) -> None:
    server.greeting = b"+OK hello\r\n"
    client = connect(server)
    assert read_exactly(client, 11) == b"+OK hello\r\n"
    conn = server.connections[0]
    assert type(conn.transport) is EagerServer
    # Sent in write() itself: the socket was never handed to epoll for it.
    # (Read in the reactor thread: the greeting can arrive before
    # connectionMade has noted it.)
    assert in_reactor(lambda: list(conn.notes)) == [False]
    client.close()


def test_other_ports_are_left_alone() -> None:
    class NotATCPPort:
        transport = object()
    port = NotATCPPort()
    assert eager_writes(port) is port and port.transport is NotATCPPort.transport


def test_the_replies_to_one_read_leave_together_and_in_order(server: Server) -> None:
    client = connect(server)

    def on_data(conn: Recorder, data: bytes) -> None:
        for n in range(50):
            conn.transport.write(b"+OK %d\r\n" % n)
        # Nothing left yet: the 50 replies go when this read returns.
        readable, _, _ = select.select([client], [], [], 0.05)
        conn.notes.append("sent early" if readable else "held")

    server.on_data = on_data
    client.sendall(b"PIPELINED\r\n")
    expected = b"".join(b"+OK %d\r\n" % n for n in range(50))
    assert read_exactly(client, len(expected)) == expected
    assert in_reactor(lambda: list(server.connections[0].notes)) == ["held"]
    client.close()


@implementer(IPushProducer)
class Pausable:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


def test_what_the_kernel_cannot_take_is_queued_in_order(server: Server) -> None:
    client = connect(server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than the socket buffers

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.write(big)
        conn.transport.write(b"\r\n.\r\n")
        conn.notes.append(conn.registered_for_writing())

    server.on_data = on_data
    client.sendall(b"BIG\r\n")
    got = read_exactly(client, len(big) + 5)
    assert got == big + b"\r\n.\r\n"
    # The rest waited for the socket to drain, in Twisted's buffer.
    assert in_reactor(lambda: list(server.connections[0].notes)) == [True]
    client.close()


def test_a_producers_writes_keep_twisteds_back_pressure(server: Server) -> None:
    """A RETR streams through Twisted's buffer, which pauses it every 64 KiB
    and so lets the reactor serve the other sessions in between."""
    client = connect(server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    chunk = bytes(range(256)) * 1024  # 256 KiB, as the Maildir reads
    producer = Pausable()

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.registerProducer(producer, True)
        conn.transport.write(chunk)
        conn.notes.append((conn.registered_for_writing(), producer.paused))

    server.on_data = on_data
    client.sendall(b"RETR 1\r\n")
    assert read_exactly(client, len(chunk)) == chunk
    conn = server.connections[0]
    assert in_reactor(lambda: list(conn.notes)) == [(True, 1)]
    assert in_reactor(lambda: producer.resumed) == 1
    in_reactor(conn.transport.unregisterProducer)
    client.close()


def test_an_aborted_connection_sends_nothing_more(server: Server) -> None:
    client = connect(server)

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.write(b"before\r\n")
        conn.transport.abortConnection()
        conn.transport.write(b"after\r\n")

    server.on_data = on_data
    client.sendall(b"x\r\n")
    received = b""
    while True:
        try:
            chunk = client.recv(100)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    # Twisted drops what was still queued at the abort; nothing after it.
    assert b"after" not in received
    client.close()


@implementer(IPullProducer)
class Pulled:
    """Writes one chunk each time the transport asks, then unregisters."""

    def __init__(self, transport: Any, chunks: int) -> None:
        self.transport = transport
        self.left = chunks

    def resumeProducing(self) -> None:
        if self.left == 0:
            self.transport.unregisterProducer()
            self.transport.write(b"end\r\n")
            return
        self.left -= 1
        self.transport.write(b"chunk %03d\r\n" % self.left)

    def stopProducing(self) -> None:
        pass


def test_a_pull_producer_is_still_asked_for_more(server: Server) -> None:
    client = connect(server)

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.registerProducer(Pulled(conn.transport, 20), False)

    server.on_data = on_data
    client.sendall(b"go\r\n")
    expected = b"".join(b"chunk %03d\r\n" % n for n in reversed(range(20))) + b"end\r\n"
    assert read_exactly(client, len(expected)) == expected
    client.close()


def test_lose_connection_sends_everything_first(server: Server) -> None:
    client = connect(server)

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.write(b"+OK bye\r\n")
        conn.transport.loseConnection()

    server.on_data = on_data
    client.sendall(b"QUIT\r\n")
    received = b""
    while chunk := client.recv(100):
        received += chunk
    assert received == b"+OK bye\r\n"
    client.close()


def test_written_after_lose_connection_still_goes_first(server: Server) -> None:
    # The close without a write round waits for the reactor's next turn;
    # what the protocol writes meanwhile (8 MiB, more than the kernel
    # takes at once) is sent whole, then Twisted's path closes.
    client = connect(server)
    big = b"x" * (8 << 20)

    def on_data(conn: Recorder, data: bytes) -> None:
        conn.transport.loseConnection()
        conn.transport.write(big)

    server.on_data = on_data
    client.sendall(b"QUIT\r\n")
    received = bytearray()
    while chunk := client.recv(1 << 16):
        received += chunk
    assert len(received) == len(big) and received == big
    client.close()


def test_what_a_producer_asks_for_pacing() -> None:
    from twisted.protocols.tls import _ProducerMembrane

    from popgate.pop3.output import OutputGate

    class Unsaid:
        pass

    gate = OutputGate(lambda: None, lambda: None, lambda: None)
    assert not paced(None)
    assert paced(Unsaid())  # one that does not say is paced
    assert not paced(gate) and not paced(_ProducerMembrane(gate))  # TLS's membrane
    gate.child = object()  # type: ignore[assignment]  # a message being streamed
    assert paced(gate) and paced(_ProducerMembrane(gate))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_stls_reply_in_the_clear_then_tls(server: Server, pki: PKI) -> None:
    tls = ServerTLS(str(pki.cert), str(pki.key))
    client = connect(server)

    def on_data(conn: Recorder, data: bytes) -> None:
        if data == b"STLS\r\n":
            conn.transport.write(b"+OK begin TLS\r\n")  # gathered, then STLS
            conn.transport.startTLS(tls)
        else:
            conn.transport.write(b"+OK secure " + data)

    server.on_data = on_data
    client.sendall(b"STLS\r\n")
    assert read_exactly(client, 15) == b"+OK begin TLS\r\n"
    context = ssl.create_default_context(cafile=str(pki.ca))
    secure = context.wrap_socket(client, server_hostname="localhost")
    secure.sendall(b"NOOP\r\n")
    assert read_exactly(secure, 17) == b"+OK secure NOOP\r\n"
    secure.close()
