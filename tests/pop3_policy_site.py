"""
A POP3 server in memory for the LOGIN-DELAY and EXPIRE tests: a passwd-file
(users may carry their own values), a Maildir or mbox store whose threads
run inline, and one fake clock for the sessions and the realm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.task import Clock

from popgate.cred.passwdfile import PasswdFileChecker
from popgate.pop3.settings import SessionSettings
from popgate.realm import MaildropRealm
from popgate.stores.maildir import MaildirStore
from popgate.stores.maildir_scan import _order_key, base_name
from popgate.stores.mbox import MboxStore, parse_argstring
from tests.helpers import InlineReactor, Session, connect

#: 2023-11-14: a clock far from 0, so "no record" and "time 0" differ.
T0 = 1_700_000_000.0
DAY = 86400.0
USERS = "alice:{PLAIN}secret::::::\nbob:{PLAIN}hunter2::::::\n"


class Site:
    """
    @param kind: C{maildir} or C{mbox}.
    @param users: the passwd-file's text.
    """

    def __init__(self, tmp: Path, kind: str = "maildir", users: str = USERS,
                 **settings: Any) -> None:
        self.tmp = tmp
        self.kind = kind
        self.clock = Clock()
        self.clock.advance(T0)
        self.reactor = InlineReactor()
        self.users = tmp / "users"
        self.users.write_text(users)
        self.checker = PasswdFileChecker(str(self.users), self.reactor)
        self.store = self.make_store()
        # Sessions on a StringTransport never see their connection lost:
        # no idle timeout may close one while the clock jumps by days.
        settings.setdefault("idle_timeout", 1e9)
        self.settings = SessionSettings(implementation="", **settings)

    def make_store(self) -> Any:
        """A store on the same mail (as another process or node has)."""
        if self.kind == "maildir":
            return MaildirStore(str(self.tmp / "mail" / "%n"), reactor=self.reactor)
        (self.tmp / "mail").mkdir(exist_ok=True)
        return MboxStore(parse_argstring(str(self.tmp / "mail" / "%n")), reactor=self.reactor)

    def portal(self, store: Any = None) -> Portal:
        realm = MaildropRealm(store or self.store, self.reactor, self.clock)
        return Portal(realm, [self.checker])

    def session(self, store: Any = None) -> Session:
        return connect(self.portal(store), self.clock, self.settings)

    def deliver(self, user: str, *messages: bytes) -> None:
        for message in messages:
            if self.kind == "maildir":
                self.store.deliver(user, message)
            else:
                with open(self.tmp / "mail" / user, "ab") as f:
                    f.write(b"From sender@example.org Thu Jan  1 00:00:00 2024\n" + message
                            + b"\n")

    def subjects(self, user: str) -> list[bytes]:
        """The Subject of each message in the mailbox now, in order."""
        if self.kind == "maildir":
            root = self.tmp / "mail" / user
            # In delivery order as the store orders it: the microseconds
            # (M<usec>) are not zero-padded, so the names' text order is
            # wrong when a delivery crosses M99999 -> M100000.
            names = sorted(os.listdir(root / "new") + os.listdir(root / "cur"),
                           key=lambda name: _order_key(base_name(name)))
            found = []
            for name in names:
                sub = "new" if (root / "new" / name).exists() else "cur"
                found.append((root / sub / name).read_bytes().split(b"\n", 1)[0])
            return found
        data = (self.tmp / "mail" / user).read_bytes() if (self.tmp / "mail" / user).exists() else b""
        return [line for line in data.split(b"\n") if line.startswith(b"Subject:")]

    def history_file(self, user: str, name: str) -> Path:
        """popgate-lastlogin / popgate-retrieved of C{user}."""
        if self.kind == "maildir":
            return self.tmp / "mail" / user / name
        return self.tmp / "mail" / f"{user}.{name}"


def quit(session: Session) -> bytes:
    return session.send(b"QUIT\r\n")
