"""
A route source's answer made into what a store connects to.

The store says which URLs it serves (its C{parse}: C{pop3://} and
C{pop3s://} for C{proxy:}, C{imap://} and C{imaps://} for C{imap:}) and
its fallback (its own C{upstream=}, if given).  For each user, as
perdition and Dovecot's proxy decide it:

  - a URL the store serves: that upstream;
  - no route (no entry, no row, an empty value): the fallback, else
    L{UnknownUser} (C{-ERR [AUTH]}, as for a user who does not exist, and
    the login penalty counts it);
  - a URL the store cannot serve (malformed, or another store's scheme):
    L{PermanentFailure} (C{-ERR [SYS/PERM]}) saying why, which the login's
    one error line shows with the user: the directory needs fixing,
    retrying will not help;
  - the directory cannot answer: its L{TemporaryFailure}
    (C{-ERR [SYS/TEMP]}) passes through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from popgate.errors import PermanentFailure, UnknownUser
from popgate.routes.source import RouteSource

__all__ = ["Router"]

U = TypeVar("U")


class Router(Generic[U]):
    """
    C{router(name)}: a L{Deferred} firing with C{name}'s upstream.

    @param parse: the URL as the store's upstream; C{ValueError} (with a
        one-line reason) when the store cannot serve it.
    @param default: the upstream of users without a route, or C{None}.
    @param store: the store's name, for the log.
    """

    log = Logger()

    def __init__(self, source: RouteSource, parse: Callable[[str], U], default: U | None,
                 store: str) -> None:
        self.source = source
        self.parse = parse
        self.default = default
        self.store = store

    def __call__(self, name: str) -> Deferred[U]:
        return Deferred.fromCoroutine(self._route(name))

    async def _route(self, name: str) -> U:
        url = await self.source.lookup(name)
        if url is None or not url.strip():
            if self.default is not None:
                return self.default
            self.log.info("{store}: no route for {user!r}", store=self.store, user=name)
            raise UnknownUser(f"no route for {name}")
        try:
            return self.parse(url)
        except ValueError as e:
            # The login's error line says this (why=), naming the user.
            raise PermanentFailure(f"the route of {name} is unusable: {e}") from None

    def probe(self) -> Deferred[str]:
        """Whether the source answers."""
        return self.source.probe()
