"""
C{--auth memory:USER:PASSWORD[:USER:PASSWORD...]}: users given on the
command line, for tests and demos.

Twisted ships a C{memory} checker too, but it keys its users by text and
POP3 credentials carry bytes, so it never logs anyone in and says
nothing.  popgate builds this one in its place
(L{popgate.cred.catalog}), and logs a warning when a server uses it: the
passwords are in clear in the process list and in the configuration.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from popgate.cred.names import normalize_user
from popgate.cred.text import user_name
from popgate.cred.userinfo import UserInfo
from popgate.interfaces import IReachable, IUserLookup
from popgate.plural import plural

__all__ = ["MemoryChecker"]


@implementer(ICredentialsChecker, IUserLookup, IReachable)
class MemoryChecker:
    """Users and their passwords, in clear, held in memory."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {normalize_user(name): password for name, password in users.items()}

    @classmethod
    def from_argstring(cls, argstring: str) -> MemoryChecker:
        """
        @raise ValueError: not C{USER:PASSWORD} pairs.
        """
        pieces = argstring.split(":") if argstring else []
        if not pieces or len(pieces) % 2 or not all(pieces[0::2]):
            raise ValueError("give USER:PASSWORD pairs, e.g. memory:alice:secret")
        return cls(dict(zip(pieces[0::2], pieces[1::2], strict=True)))

    # popgate's avatar ids are str (the user name), not Twisted's bytes.
    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # type: ignore[override]
        name = user_name(credentials.username)
        password = self.users.get(name) if name is not None else None
        if name is None or password is None:
            return defer.fail(UnauthorizedLogin())
        if IUsernamePassword.providedBy(credentials):
            given = credentials.password
            given = given.encode("utf-8") if isinstance(given, str) else given
            ok = hmac.compare_digest(given, password.encode("utf-8"))
        else:
            ok = bool(credentials.checkPassword(password.encode("utf-8")))
        return defer.succeed(name) if ok else defer.fail(UnauthorizedLogin())

    def lookup_user(self, name: str | bytes) -> defer.Deferred[UserInfo | None]:
        text = user_name(name)
        if text is None or text not in self.users:
            return defer.succeed(None)
        return defer.succeed(UserInfo(text))

    def probe(self) -> defer.Deferred[str]:
        return defer.succeed(f"{plural(len(self.users), 'user')} given on the command line")
