"""
What the C{proxy:} and C{imap:} stores share: each user's upstream (the
one C{upstream=}, or a C{--route} L{Router}), who checks the password
(L{IAuthenticatingStore}), the login for upstream authentication, and
C{popgate check-config}'s probe.  A store adds how it logs in and greets
(L{UpstreamStore.connect_and_log_in}, L{UpstreamStore.greet}) and its
maildrops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer

from popgate.routes.router import Router
from popgate.routes.source import RouteSource
from popgate.stores.proxy_auth import PasswordForwarder, UpstreamChecker, claim_upstream
from popgate.stores.proxy_settings import ProxySettings, Upstream, parse_args, parse_upstream

__all__ = ["Route", "UpstreamStore", "make_upstream_store"]

#: Chooses the upstream of a user: by default the store's one upstream,
#: with --route a L{Router} asking a directory.
Route = Callable[[str], defer.Deferred[Upstream]]

S = TypeVar("S", bound="UpstreamStore")


def make_upstream_store(cls: type[S], protocol: str, argstring: str, reactor: Any,
                        route: RouteSource | None = None) -> S:
    """
    A C{cls} store from its argument string.

    @param protocol: the upstream's (C{"pop3"} or C{"imap"}): its URL schemes.
    @param route: the C{--route} source, if any; C{upstream=} is then the
        upstream of users it has no route for.
    """
    settings = parse_args(argstring, protocol, routed=route is not None)
    if route is None:
        return cls(settings, reactor)
    parse = partial(parse_upstream, ca_file=settings.ca_file, protocol=protocol, what="route")
    return cls(settings, reactor, Router(route, parse, settings.upstream, cls.kind))


class UpstreamStore:
    """
    @cvar kind: the store's name, for messages (C{proxy}, C{imap}).
    @param route: the upstream of each user (default: C{settings}').
    """

    kind = "upstream"

    def __init__(self, settings: ProxySettings, reactor: Any, route: Route | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        if route is None:
            upstream = settings.upstream
            if upstream is None:
                raise ValueError(f"{self.kind}: no upstream= and no route")
            route = lambda user: defer.succeed(upstream)  # noqa: E731
        self.route: Route = route

    # -- what a store adds

    async def connect_and_log_in(self, upstream: Upstream, user: bytes, password: bytes) -> Any:
        """A connection to C{upstream}, logged in as C{user}."""
        raise NotImplementedError

    async def greet(self, upstream: Upstream) -> None:
        """Connect to C{upstream}, read its greeting, leave."""
        raise NotImplementedError

    async def log_in_for(self, avatar_id: str) -> Any:
        """Local authentication: popgate's user stores said yes; a
        connection logged in upstream for the user."""
        raise NotImplementedError

    def maildrop(self, connection: Any, name: str) -> Any:
        """The session's maildrop on C{connection}, not yet loaded."""
        raise NotImplementedError

    # -- IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[Any]:
        """On the connection the login made (upstream authentication) or
        a new one (local authentication), the snapshot loaded."""
        return defer.Deferred.fromCoroutine(self._open(avatar_id))

    async def _open(self, avatar_id: str) -> Any:
        connection = claim_upstream(avatar_id)
        if connection is None:
            connection = await self.log_in_for(avatar_id)
        maildrop = self.maildrop(connection, str(avatar_id))
        try:
            await maildrop.load()
        except BaseException:
            maildrop.close()
            raise
        return maildrop

    # -- who checks the password (IAuthenticatingStore)

    def checkers(self, given: Sequence[ICredentialsChecker]) -> list[ICredentialsChecker]:
        if not given:
            return [UpstreamChecker(self)]
        if self.settings.master_user:
            return list(given)
        return [PasswordForwarder(checker) for checker in given]

    def log_in(self, name: str, user: bytes, password: bytes) -> defer.Deferred[Any]:
        """Log in to C{name}'s upstream as C{user} (upstream authentication)."""
        async def routed() -> Any:
            upstream = await self.route(name)
            return await self.connect_and_log_in(upstream, user, password)

        return defer.Deferred.fromCoroutine(routed())

    # -- IReachable (popgate check-config)

    def probe(self) -> defer.Deferred[str]:
        """Ask the route source, if any; reach C{upstream=}, if given (TLS
        and its certificate included)."""
        async def probed() -> str:
            said = []
            probe = getattr(self.route, "probe", None)
            if probe is not None:
                said.append(f"routes from {await probe()}")
            upstream = self.settings.upstream
            if upstream is not None:
                await self.greet(upstream)
                said.append(f"{upstream.url} answers")
            return "; ".join(said)

        return defer.Deferred.fromCoroutine(probed())
