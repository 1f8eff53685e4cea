"""
What the two test servers share: the users, the mailboxes, the faults and
the factory serving them.  L{POP3TestServer} puts that factory on a
loopback port; L{MemoryPOP3Server} connects it to in-memory transports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal

from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.memory import MemoryStore
from popgate.testing.faults import Faults, FaultyFactory, FaultyStore
from popgate.testing.shaping import ShapingFactory

#: Test-friendly settings: no delay after a failed login.
TEST_SETTINGS = SessionSettings(greeting="popgate test server ready.",
                                auth_failure_delay=0.0, hostname="localhost")


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class TestSite:
    """
    Users and mailboxes in memory, and the faults to inject.

    @param users: user name -> password.  The checker also verifies APOP,
        so the greeting carries an APOP timestamp.
    @param mailboxes: user name -> messages (bytes, as stored: LF or CRLF).
    @param store: serve this L{popgate.interfaces.IMailStore} instead of
        an in-memory one (then L{add_message} and L{messages} are
        unavailable unless it is a L{MemoryStore}).
    @param faults: initial L{Faults}; change C{faults} at any time.
    @param settings: L{SessionSettings}; default L{TEST_SETTINGS}.
    @param seed: seeds the random piece sizes of C{split_writes}.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        users: Mapping[str | bytes, str | bytes] | None = None,
        mailboxes: Mapping[str | bytes, Sequence[bytes]] | None = None,
        *,
        store: Any = None,
        faults: Faults | None = None,
        settings: SessionSettings | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = MemoryStore() if store is None else store
        self.faults = faults if faults is not None else Faults()
        self.settings = settings or TEST_SETTINGS
        self._seed = seed
        self._checker = InMemoryUsernamePasswordDatabaseDontUse()
        for name, password in (users or {}).items():
            self._checker.addUser(_bytes(name), _bytes(password))
        self._initial = {_text(user): list(messages)
                         for user, messages in (mailboxes or {}).items()}

    def _serving(self, clock: Any) -> ShapingFactory:
        """The initial mail stored; the factory of connections, on C{clock}."""
        for user, messages in self._initial.items():
            for message in messages:
                self.store.add_message(user, message)
        self._initial = {}
        store = FaultyStore(self.store, self.faults, clock)
        portal = Portal(MaildropRealm(store, clock), [self._checker])
        pop3 = FaultyFactory(portal, self.settings, clock, self.faults)
        return ShapingFactory(pop3, self.faults, clock, self._seed)

    def _call(self, f: Any, *args: Any) -> Any:
        """Run C{f} where the server's state may be touched."""
        return f(*args)

    # -- users and mail

    def add_user(self, name: str | bytes, password: str | bytes) -> None:
        """Add a user (or change a password), also while running."""
        self._call(self._checker.addUser, _bytes(name), _bytes(password))

    def add_message(self, user: str | bytes, message: bytes) -> bytes:
        """Deliver C{message} to C{user}; return its UIDL.  A session that
        is open sees it at its next login, as with a real mailbox."""
        uid: bytes = self._on_store("add_message", _text(user), message)
        return uid

    def messages(self, user: str | bytes) -> list[bytes]:
        """The messages C{user} has now: what is left after the QUITs."""
        messages: list[bytes] = self._on_store("messages", _text(user))
        return messages

    def _on_store(self, name: str, *args: Any) -> Any:
        if not isinstance(self.store, MemoryStore):
            raise TypeError(f"{name}() needs the in-memory store")
        return self._call(getattr(self.store, name), *args)
