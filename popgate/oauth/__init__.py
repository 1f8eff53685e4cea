"""
OAuth 2.0 bearer tokens for POP3 logins (SASL OAUTHBEARER, RFC 7628, and
XOAUTH2): whose token it is, as a checker the portal asks like any other.

The mechanisms (L{popgate.pop3.oauth}) turn the client's message into
L{OAuthCredentials}; L{TokenChecker} asks the configured
L{popgate.interfaces.ITokenValidator} (C{--oauth TYPE:ARGS}, a plugin:
L{popgate.oauth.registry}) and answers with the token's user, so the login
penalty, the limits, the session log and the events apply unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from popgate.cred.names import normalize_user
from popgate.interfaces import IOAuthCredentials, ITokenValidator

__all__ = ["InvalidToken", "OAuthCredentials", "TokenChecker"]


class InvalidToken(UnauthorizedLogin):
    """The token is not valid (expired, badly signed, another issuer, not
    active, another user's): a failed login.  The text is for the log
    only; the client gets RFC 7628's error, never this."""


@implementer(IOAuthCredentials)
class OAuthCredentials:
    """A bearer token and the user the client named with it (or C{b""})."""

    def __init__(self, username: bytes, token: bytes) -> None:
        self.username = username
        self.token = token


@implementer(ICredentialsChecker)
class TokenChecker:
    """
    The portal's checker for L{IOAuthCredentials}: the validator's user,
    which must be the one the client named, if it named one (RFC 7628's
    authzid, XOAUTH2's C{user=}; compared as user stores compare names,
    the domain case-insensitively).
    """

    credentialInterfaces = (IOAuthCredentials,)

    def __init__(self, validator: Any) -> None:
        self.validator = ITokenValidator(validator)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(self.validator.validate, credentials.token)
        return d.addCallback(self._same_user, credentials.username)

    @staticmethod
    def _same_user(user: str, named: bytes) -> str:
        if not isinstance(user, str) or not user:
            raise InvalidToken("the validator gave no user")
        if named:
            try:
                claimed = named.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidToken("the user named is not UTF-8") from None
            if normalize_user(claimed) != normalize_user(user):
                raise InvalidToken("the token is another user's")
        return user
