"""
An authentication cache in front of a slow checker (SQL, LDAP).

POP3 clients poll every few minutes with the same password; without a cache
each poll costs a database round trip and a deliberately slow hash.

Entries are keyed by (credential interface, user name, HMAC-SHA256 of the
password under a random per-checker salt), so the plaintext password is
never kept, and a new password simply misses the cache: a password change
takes effect at the latest when the old entry's TTL runs out.

The user name in the key has its domain lower-cased (every store and the
realm treat the domain so: one user), and its local part exactly as typed:
whether C{Bob} is C{bob} is the user store's to say, so a case variant of
the local part is always asked of the store, never answered from another
variant's entry (which, in a case-sensitive file, is another user).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from popgate.cred.text import user_name
from popgate.errors import UnknownUser
from popgate.interfaces import IScramLookup, IUserLookup

_Key = tuple[Any, Any, bytes]


@implementer(ICredentialsChecker)
class CachingChecker:
    """
    Cache C{wrapped}'s answers for L{IUsernamePassword} credentials.

    Successes are remembered C{positive_ttl} seconds, L{UnauthorizedLogin}
    C{negative_ttl} seconds; a TTL of 0 turns that half off.  Any other
    failure (L{popgate.errors.TemporaryFailure}, a bug) is never cached, so
    a database outage is not remembered after the database is back.
    Credentials that carry no password (APOP's
    L{twisted.cred.credentials.IUsernameHashedPassword}) go straight through.

    At most C{max_entries} answers are kept; the least recently used goes
    first.  If C{wrapped} provides L{IUserLookup} or L{IScramLookup}, so
    does the cache (lookups are passed through uncached; so are SCRAM
    proofs, which are never the same twice).

    @param clock: tells the time entries expire.
    """

    def __init__(
        self,
        wrapped: ICredentialsChecker,
        positive_ttl: float = 60.0,
        negative_ttl: float = 10.0,
        *,
        clock: IReactorTime,
        max_entries: int = 10000,
    ) -> None:
        if positive_ttl < 0 or negative_ttl < 0:
            raise ValueError("cache TTLs must not be negative")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.wrapped = wrapped
        self.credentialInterfaces = tuple(wrapped.credentialInterfaces)
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._salt = os.urandom(32)
        # key -> (expires_at, avatar id, or the exception class of a cached refusal)
        self._entries: OrderedDict[_Key, tuple[float, Any]] = OrderedDict()
        if IUserLookup.providedBy(wrapped):
            alsoProvides(self, IUserLookup)
        if IScramLookup.providedBy(wrapped):
            alsoProvides(self, IScramLookup)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        key = self._key(credentials)
        if key is None:
            return defer.maybeDeferred(self.wrapped.requestAvatarId, credentials)
        hit = self._get(key)
        if hit is not None:
            avatar_id = hit[1]
            if isinstance(avatar_id, type):  # a cached refusal: its kind
                return defer.fail(avatar_id())
            return defer.succeed(avatar_id)
        d = defer.maybeDeferred(self.wrapped.requestAvatarId, credentials)
        d.addCallbacks(self._remember_success, self._remember_refusal,
                       callbackArgs=(key,), errbackArgs=(key,))
        return d

    def lookup_user(self, name: str) -> Any:
        """Pass through to the wrapped checker's L{IUserLookup}."""
        return self.wrapped.lookup_user(name)  # type: ignore[attr-defined]

    def scram_mechanisms(self) -> frozenset[str]:
        """Pass through to the wrapped checker's L{IScramLookup}."""
        return self.wrapped.scram_mechanisms()  # type: ignore[attr-defined,no-any-return]

    def lookup_scram(self, name: str | bytes, mechanism: str) -> Any:
        """Pass through to the wrapped checker's L{IScramLookup}."""
        return self.wrapped.lookup_scram(name, mechanism)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._entries)

    def _remember_success(self, avatar_id: Any, key: _Key) -> Any:
        if self.positive_ttl > 0:
            self._put(key, self.positive_ttl, avatar_id)
        return avatar_id

    def _remember_refusal(self, failure: Failure, key: _Key) -> Failure:
        if self.negative_ttl > 0 and failure.check(UnauthorizedLogin):
            # The class, so the log still tells an unknown user from a
            # wrong password.
            refusal = UnknownUser if failure.check(UnknownUser) else UnauthorizedLogin
            self._put(key, self.negative_ttl, refusal)
        return failure

    def _key(self, credentials: Any) -> _Key | None:
        if not (self.positive_ttl or self.negative_ttl):
            return None
        if not IUsernamePassword.providedBy(credentials):
            return None
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        digest = hmac.new(self._salt, password, hashlib.sha256).digest()
        return (IUsernamePassword, _name_key(credentials.username), digest)

    def _get(self, key: _Key) -> tuple[float, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock.seconds() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _put(self, key: _Key, ttl: float, avatar_id: Any) -> None:
        self._entries[key] = (self._clock.seconds() + ttl, avatar_id)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _name_key(username: Any) -> Any:
    """The user name as cached: text with its domain lower-cased."""
    if not isinstance(username, (bytes, str)):
        return username
    # A name that names nobody (not UTF-8) keeps its bytes: apart from any text.
    name = user_name(username)
    return name if name is not None else username
