"""
Several user stores for one kind of credentials, tried in order.

Twisted's Portal keeps one checker per credentials interface (the last one
registered wins); with C{--auth} given twice, popgate puts the checkers in
a chain instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from zope.interface import alsoProvides, implementer

from popgate.errors import UnknownUser
from popgate.interfaces import IScramLookup


@implementer(ICredentialsChecker)
class ChainedChecker:
    """
    Ask each checker in turn; the next one is tried only when the previous
    one said the credentials are wrong.  Any other failure (a directory that
    is down) stops the chain, so an outage is never reported as a bad
    password.

    If some of the checkers hold SCRAM keys (L{IScramLookup}), so does the
    chain: it offers what any of them offers, and a lookup takes the keys
    of the first store that has some for the user.
    """

    def __init__(self, checkers: Sequence[Any]) -> None:
        self.checkers = list(checkers)
        interfaces: list[Any] = []
        for checker in self.checkers:
            for interface in checker.credentialInterfaces:
                if interface not in interfaces:
                    interfaces.append(interface)
        self.credentialInterfaces = tuple(interfaces)
        self._scram = [c for c in self.checkers if IScramLookup.providedBy(c)]
        if self._scram:
            alsoProvides(self, IScramLookup)

    async def _request(self, credentials: Any) -> Any:
        last: Exception | None = None
        for checker in self.checkers:
            if not any(i.providedBy(credentials) for i in checker.credentialInterfaces):
                continue
            try:
                return await defer.maybeDeferred(checker.requestAvatarId, credentials)
            except (UnauthorizedLogin, UnhandledCredentials) as e:
                # A store that knows the user outranks those that do not:
                # the log says "bad password" then, not "unknown user".
                if last is None or isinstance(last, UnknownUser):
                    last = e
        raise last or UnauthorizedLogin()

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._request(credentials))

    def scram_mechanisms(self) -> frozenset[str]:
        return frozenset().union(*(c.scram_mechanisms() for c in self._scram))

    def lookup_scram(self, name: str | bytes, mechanism: str) -> defer.Deferred[Any]:
        async def first() -> Any:
            # A store that cannot answer stops the chain, as for passwords.
            for checker in self._scram:
                keys = await defer.maybeDeferred(checker.lookup_scram, name, mechanism)
                if keys is not None:
                    return keys
            return None

        return defer.Deferred.fromCoroutine(first())
