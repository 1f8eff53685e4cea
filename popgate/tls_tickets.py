"""
TLS session ticket keys, the same in every C{--workers} process, so a
client resumes its session (TLS 1.3 and 1.2 tickets) whichever worker
the kernel hands its next connection to.

OpenSSL gives each context random keys of its own: with several
processes a ticket would only be accepted by the one that issued it.  So
the first process makes the keys (random, in memory only, never written
to disk), hands them to each worker it starts (in its environment,
readable only by the same user and root), and makes new ones every
L{ROTATE_SECONDS}, which it passes on over each worker's standard input
(L{popgate.workers.pool}).  A ticket made with the keys before is then
refused and that client does one full handshake.  Where pyOpenSSL's
OpenSSL cannot be told the keys (L{popgate.tls_native}), each process
keeps its own, as before.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from popgate.tls_native import SSL_CTRL_SET_TLSEXT_TICKET_KEYS, context_pointer, ssl_ctx_ctrl

log = Logger()

#: Where a worker finds the first process's keys (hex).
TICKET_KEYS_ENV = "POPGATE_TLS_TICKET_KEYS"
#: A key name (16 bytes), an HMAC key and an AES key (32 bytes each).
KEY_BYTES = 80
#: How long one set of keys makes tickets: a ticket's own lifetime is
#: OpenSSL's 2 hours, so at most one resumption per client is lost each time.
ROTATE_SECONDS = 12 * 3600.0


def new_keys() -> bytes:
    return os.urandom(KEY_BYTES)


class TicketKeys:
    """
    This process's ticket keys, installed in every TLS context it hands
    new connections (L{popgate.tls.ServerTLS} watches for new ones).

    """

    def __init__(self, keys: bytes | None = None) -> None:
        self.keys = keys if keys is not None else new_keys()
        if len(self.keys) != KEY_BYTES:
            raise ValueError(f"TLS ticket keys must be {KEY_BYTES} bytes")
        self._watchers: list[Callable[[], None]] = []

    @property
    def shared(self) -> bool:
        """Whether contexts take the keys (False where OpenSSL cannot be
        told them: each context then has its own).  Looked up on first use,
        so a server without TLS never reads OpenSSL's symbol table."""
        return ssl_ctx_ctrl() is not None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TicketKeys:
        """The first process's keys in a worker, or new ones."""
        value = (os.environ if environ is None else environ).get(TICKET_KEYS_ENV, "")
        try:
            return cls(bytes.fromhex(value)) if value else cls()
        except ValueError:
            log.warn("${env} is not {n} bytes of hex; this worker's TLS tickets are its own",
                     env=TICKET_KEYS_ENV, n=KEY_BYTES)
            return cls()

    def install(self, context: Any) -> bool:
        """Give the pyOpenSSL C{context} these keys; whether it took them."""
        ctrl = ssl_ctx_ctrl()
        if ctrl is None:
            return False
        buffer = ctypes.create_string_buffer(self.keys, KEY_BYTES)
        try:
            return ctrl(context_pointer(context), SSL_CTRL_SET_TLSEXT_TICKET_KEYS,
                        KEY_BYTES, buffer) == 1
        finally:
            ctypes.memset(buffer, 0, KEY_BYTES)

    def watch(self, changed: Callable[[], None]) -> None:
        """Call C{changed} whenever the keys change (to install them)."""
        self._watchers.append(changed)

    def replace(self, keys: bytes) -> None:
        """Use C{keys} from now on (a worker told by the first process)."""
        if len(keys) != KEY_BYTES:
            raise ValueError(f"TLS ticket keys must be {KEY_BYTES} bytes")
        self.keys = keys
        for changed in list(self._watchers):
            changed()

    def rotate(self) -> bytes:
        """New random keys; returns them (to pass on)."""
        self.replace(new_keys())
        return self.keys

    def environment(self) -> dict[str, str]:
        """What a worker's environment needs to share these keys."""
        return {TICKET_KEYS_ENV: self.keys.hex()}


def tickets_line(keys: bytes) -> bytes:
    """What the first process writes to a worker for new keys."""
    return b"tickets " + keys.hex().encode("ascii") + b"\n"


def parse_tickets_line(line: bytes) -> bytes | None:
    """The keys of a L{tickets_line} (without its newline), or None."""
    if not line.startswith(b"tickets "):
        return None
    try:
        keys = bytes.fromhex(line[len(b"tickets "):].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return keys if len(keys) == KEY_BYTES else None


class TicketRotation(service.Service):
    """In the first process: new keys every L{ROTATE_SECONDS}, passed on
    with C{pass_on} (the worker pool's) when there are workers."""

    def __init__(self, reactor: Any, tickets: TicketKeys,
                 pass_on: Callable[[bytes], Any] | None = None,
                 interval: float = ROTATE_SECONDS) -> None:
        self.reactor = reactor
        self.tickets = tickets
        self.pass_on = pass_on
        self.interval = interval
        self._loop: LoopingCall | None = None

    def rotate(self) -> None:
        keys = self.tickets.rotate()
        if self.pass_on is not None:
            self.pass_on(keys)
        log.info("tls: new session ticket keys")

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.rotate)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
