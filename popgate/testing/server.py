"""
L{POP3TestServer}: a real popgate on a loopback port, in this process, for
testing POP3 clients.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal

from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.memory import MemoryStore
from popgate.testing import reactor_thread
from popgate.testing.faults import Faults, FaultyFactory, FaultyStore
from popgate.testing.shaping import ShapingFactory

#: Test-friendly settings: no delay after a failed login.
TEST_SETTINGS = SessionSettings(greeting="popgate test server ready.",
                                auth_failure_delay=0.0, hostname="localhost")


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class POP3TestServer:
    """
    A popgate POP3 server on a free loopback port, with users and mailboxes
    in memory.  The Twisted reactor runs in a background thread (one per
    process, see L{reactor_thread}); every method here is called from the
    test's thread and waits for the reactor.

        with POP3TestServer(users={"alice": "pw"},
                            mailboxes={"alice": [b"Subject: x\\r\\n\\r\\nhi\\r\\n"]}) as server:
            client = poplib.POP3(server.host, server.port)

    @param users: user name -> password.  The checker also verifies APOP,
        so the greeting carries an APOP timestamp.
    @param mailboxes: user name -> messages (bytes, as stored: LF or CRLF).
    @param store: serve this L{popgate.interfaces.IMailStore} instead of
        an in-memory one (then L{add_message} and L{messages} are
        unavailable unless it is a L{MemoryStore}).
    @param faults: initial L{Faults}; change C{server.faults} at any time.
    @param settings: L{SessionSettings}; default L{TEST_SETTINGS}.
    @param seed: seeds the random piece sizes of C{split_writes}.
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
        self.store = MemoryStore() if store is None else store
        self.faults = faults if faults is not None else Faults()
        self.settings = settings or TEST_SETTINGS
        self.host = host
        self.port = port
        self._seed = seed
        self._checker = InMemoryUsernamePasswordDatabaseDontUse()
        for name, password in (users or {}).items():
            self._checker.addUser(_bytes(name), _bytes(password))
        self._initial = {_text(user): list(messages) for user, messages in (mailboxes or {}).items()}
        self._listening: Any = None
        self._connections: ShapingFactory | None = None

    # -- life cycle

    def start(self) -> "POP3TestServer":
        """Listen; C{port} is then the real port number."""
        if self._listening is None:
            reactor_thread.run(self._start)
        return self

    def _start(self) -> None:
        from twisted.internet import reactor

        for user, messages in self._initial.items():
            for message in messages:
                self.store.add_message(user, message)
        self._initial = {}
        portal = Portal(MaildropRealm(FaultyStore(self.store, self.faults)), [self._checker])
        pop3 = FaultyFactory(portal, self.settings, reactor, self.faults)
        self._connections = ShapingFactory(pop3, self.faults, reactor, self._seed)
        self._listening = reactor.listenTCP(self.port, self._connections, interface=self.host)
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

    def __enter__(self) -> "POP3TestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users and mail

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def add_user(self, name: str | bytes, password: str | bytes) -> None:
        """Add a user (or change a password), also while running."""
        if self._listening is None:
            self._checker.addUser(_bytes(name), _bytes(password))
        else:
            reactor_thread.run(self._checker.addUser, _bytes(name), _bytes(password))

    def add_message(self, user: str | bytes, message: bytes) -> bytes:
        """Deliver C{message} to C{user}; return its UIDL.  A session that
        is open sees it at its next login, as with a real mailbox."""
        return self._on_store("add_message", _text(user), message)

    def messages(self, user: str | bytes) -> list[bytes]:
        """The messages C{user} has now: what is left after the QUITs."""
        return self._on_store("messages", _text(user))

    def _on_store(self, name: str, *args: Any) -> Any:
        if not isinstance(self.store, MemoryStore):
            raise TypeError(f"{name}() needs the in-memory store")
        f = getattr(self.store, name)
        if self._listening is None:
            return f(*args)
        return reactor_thread.run(f, *args)
