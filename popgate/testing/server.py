"""
L{POP3TestServer}: a real popgate on a loopback port, in this process, for
testing POP3 clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from popgate.eager_writes import eager_writes
from popgate.pop3.settings import SessionSettings
from popgate.testing import reactor_thread
from popgate.testing.faults import Faults
from popgate.testing.shaping import ShapingFactory
from popgate.testing.site import TEST_SETTINGS, TestSite

__all__ = ["TEST_SETTINGS", "POP3TestServer"]


class POP3TestServer(TestSite):
    """
    A popgate POP3 server on a free loopback port, with users and mailboxes
    in memory.  The Twisted reactor runs in a background thread (one per
    process, see L{reactor_thread}); every method here is called from the
    test's thread and waits for the reactor.

        with POP3TestServer(users={"alice": "pw"},
                            mailboxes={"alice": [b"Subject: x\\r\\n\\r\\nhi\\r\\n"]}) as server:
            client = poplib.POP3(server.host, server.port)

    The users, mailboxes, store, faults, settings and seed are those of
    L{TestSite}.
    """

    def __init__(
        self,
        users: Mapping[str | bytes, str | bytes] | None = None,
        mailboxes: Mapping[str | bytes, Sequence[bytes]] | None = None,
        *,
        store: Any = None,
        faults: Faults | None = None,
        settings: SessionSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(users, mailboxes, store=store, faults=faults, settings=settings, seed=seed)
        self.host = host
        self.port = port
        self._listening: Any = None
        self._connections: ShapingFactory | None = None

    # -- life cycle

    def start(self) -> POP3TestServer:
        """Listen; C{port} is then the real port number."""
        if self._listening is None:
            reactor_thread.run(self._start, reactor_thread.start_reactor())
        return self

    def _start(self, reactor: Any) -> None:
        self._connections = self._serving(reactor)
        # As popgate's own listeners: replies sent at once (popgate.eager_writes).
        self._listening = eager_writes(
            reactor.listenTCP(self.port, self._connections, interface=self.host))
        self.port = self._listening.getHost().port

    def stop(self) -> None:
        """Stop listening and drop every open connection (without UPDATE:
        a session that did not QUIT changes nothing)."""
        if self._listening is not None:
            reactor_thread.run(self._stop)

    async def _stop(self) -> None:
        listening, self._listening = self._listening, None
        await listening.stopListening()
        assert self._connections is not None
        await self._connections.close_all()

    def __enter__(self) -> POP3TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _call(self, f: Any, *args: Any) -> Any:
        if self._listening is None:
            return f(*args)
        return reactor_thread.run(f, *args)
