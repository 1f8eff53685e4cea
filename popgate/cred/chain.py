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
from zope.interface import implementer

from popgate.errors import UnknownUser


@implementer(ICredentialsChecker)
class ChainedChecker:
    """
    Ask each checker in turn; the next one is tried only when the previous
    one said the credentials are wrong.  Any other failure (a directory that
    is down) stops the chain, so an outage is never reported as a bad
    password.
    """

    def __init__(self, checkers: Sequence[Any]) -> None:
        self.checkers = list(checkers)
        interfaces: list[Any] = []
        for checker in self.checkers:
            for interface in checker.credentialInterfaces:
                if interface not in interfaces:
                    interfaces.append(interface)
        self.credentialInterfaces = tuple(interfaces)

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
