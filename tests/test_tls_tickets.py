"""
TLS session ticket keys shared between contexts and between --workers
processes (popgate.tls_tickets, popgate.tls_native): Python's ssl client
resumes its session on a context (a worker, a reloaded certificate) other
than the one that made its ticket, and not once the keys were rotated.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.task import Clock

from popgate.cred.schemes import hash_password
from popgate.tls import ServerTLS
from popgate.tls_native import elf_functions, ssl_ctx_ctrl
from popgate.tls_tickets import (
    KEY_BYTES,
    TICKET_KEYS_ENV,
    TicketKeys,
    TicketRotation,
    parse_tickets_line,
    tickets_line,
)
from popgate.workers.child import ParentWatcher
from popgate.workers.pool import WorkerPool
from tests.popgate_server import PopgateProcess
from tests.tlscerts import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    return context


def handshake(server: SSL.Context, client: ssl.SSLContext,
              session: ssl.SSLSession | None) -> ssl.SSLObject:
    """A Python ssl client against a pyOpenSSL server connection, through
    memory BIOs; the server says a line so TLS 1.3 tickets reach the client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, session=session)
    conn = SSL.Connection(server, None)
    conn.set_accept_state()
    sent = False
    for _ in range(20):
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        data = outgoing.read()
        if data:
            conn.bio_write(data)
        try:
            conn.do_handshake()
            if not sent:
                conn.send(b"+OK\r\n")
                sent = True
        except SSL.WantReadError:
            pass
        try:
            while True:
                incoming.write(conn.bio_read(65536))
        except SSL.WantReadError:
            pass
        try:
            if tls.read(100) == b"+OK\r\n":
                return tls
        except ssl.SSLWantReadError:
            pass
    raise AssertionError("no handshake")


VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


def test_the_bundled_openssl_takes_ticket_keys() -> None:
    # This platform's pyOpenSSL (cryptography's wheel) is the one popgate ships on.
    assert ssl_ctx_ctrl() is not None
    assert TicketKeys().shared


def test_elf_functions_reads_a_symbol_table() -> None:
    import OpenSSL._util  # noqa: F401 - loads the extension
    from cryptography.hazmat.bindings import _rust
    found = elf_functions(Path(_rust.__file__).read_bytes(), [b"SSL_CTX_ctrl", b"no_such_thing"])
    assert set(found) == {b"SSL_CTX_ctrl"}
    assert elf_functions(b"not an ELF file", [b"SSL_CTX_ctrl"]) == {}


@pytest.mark.parametrize("version", VERSIONS)
def test_sessions_resume_on_another_context_with_the_same_keys(pki: PKI,
                                                               version: ssl.TLSVersion) -> None:
    keys = TicketKeys()
    first, second, alone = (ServerTLS(str(pki.cert), str(pki.key)) for _ in range(3))
    first.share_tickets(keys)
    second.share_tickets(TicketKeys(keys.keys))  # another process, told the same keys
    client = client_context(version)
    tls = handshake(first._context, client, None)
    assert not tls.session_reused
    resumed = handshake(second._context, client, tls.session)
    assert resumed.session_reused
    # A context with keys of its own (OpenSSL's default) does not resume it.
    assert not handshake(alone._context, client, resumed.session).session_reused


@pytest.mark.parametrize("version", VERSIONS)
def test_rotated_keys_refuse_old_tickets_and_a_reload_keeps_the_keys(
        pki: PKI, version: ssl.TLSVersion) -> None:
    keys = TicketKeys()
    tls = ServerTLS(str(pki.cert), str(pki.key))
    tls.share_tickets(keys)
    client = client_context(version)
    session = handshake(tls._context, client, None).session
    tls.use(ServerTLS(str(pki.other_cert), str(pki.other_key)))  # a reload: a new context
    again = handshake(tls._context, client, session)
    assert again.session_reused
    keys.rotate()
    after = handshake(tls._context, client, again.session)
    assert not after.session_reused
    assert handshake(tls._context, client, after.session).session_reused


def test_keys_from_the_environment_and_the_parents_lines() -> None:
    keys = TicketKeys()
    assert TicketKeys.from_environment(keys.environment()).keys == keys.keys
    assert len(TicketKeys.from_environment({}).keys) == KEY_BYTES
    assert TicketKeys.from_environment({TICKET_KEYS_ENV: "zz"}).keys != keys.keys
    line = tickets_line(keys.keys)
    assert parse_tickets_line(line.rstrip(b"\n")) == keys.keys
    assert parse_tickets_line(b"tickets 00") is None
    assert parse_tickets_line(b"hangup") is None
    got: list[bytes] = []
    hangups: list[int] = []
    watcher = ParentWatcher(Clock(), lambda: hangups.append(1), tickets=got.append)
    watcher.dataReceived(line[:50])  # a line split across two reads
    watcher.dataReceived(line[50:] + b"hangup\n")
    assert got == [keys.keys] and hangups == [1]


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_rotation_passes_new_keys_on_to_the_workers() -> None:
    clock = Clock()
    keys = TicketKeys()
    pool = WorkerPool(clock, 2, [], tickets=keys)
    worker = FakeTransport()
    pool.workers[1] = worker
    rotation = TicketRotation(clock, keys, pool.pass_on_tickets, interval=60)
    rotation.startService()
    before = keys.keys
    clock.advance(59)
    assert keys.keys == before and worker.written == []
    clock.advance(1)
    assert keys.keys != before
    assert worker.written == [tickets_line(keys.keys)]
    rotation.stopService()
    clock.advance(600)
    assert len(worker.written) == 1


@pytest.mark.integration
def test_two_workers_resume_each_others_sessions(pki: PKI, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    (tmp_path / "mail" / "alice" / "new").mkdir(parents=True)
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp_path}/mail/%n",
            "--workers", "2", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with PopgateProcess(args, log_path=str(tmp_path / "log"), pop3s=True) as server:
        assert server.pop3s_port is not None
        client = client_context(ssl.TLSVersion.TLSv1_3)
        session, pids, resumed = None, set(), []
        deadline = time.monotonic() + 30
        # Until both processes served (the kernel picks one per connection).
        while (len(pids) < 2 or len(resumed) < 8) and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", server.pop3s_port), timeout=10) as raw, \
                    client.wrap_socket(raw, session=session) as tls:
                assert tls.recv(512).startswith(b"+OK")
                owner = own_pid(tls.getsockname()[1], server.pop3s_port)
                tls.sendall(b"QUIT\r\n")
                tls.recv(512)
                if session is not None:
                    resumed.append(tls.session_reused)
                    pids.add(owner)
                session = tls.session
        assert len(pids) == 2, "one process served every connection"
        assert all(resumed), resumed


def own_pid(client_port: int, server_port: int) -> int:
    """The pid of the server process holding the connection from C{client_port}."""
    import subprocess
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{server_port}",
                          f"dport = :{client_port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])
