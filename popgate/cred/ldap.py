"""
An LDAP user store: search for the user, then bind as the entry found.

Why search-then-bind and not ldaptor's C{LDAPBindingChecker}: that checker
puts the raw user name into the filter (LDAP injection) and renders bytes
as C{b'alice'} on Python 3.  Here every user-supplied value is escaped per
RFC 4515 before it reaches the filter (L{popgate.cred.ldap_filter}).

Failures are split on purpose: a wrong password, an unknown user or an
ambiguous search is L{UnauthorizedLogin} (C{-ERR [AUTH]}); a directory that
is down, slow, refuses the service bind or answers oddly is
L{TemporaryFailure} (C{-ERR [SYS/TEMP]}), so clients retry instead of
telling users their password is wrong.

The name a login or a recipient gets (and so its mailbox) is the
directory's spelling, not the client's: the C{user_attribute} value, or
else the value of the attribute the filter matched C{%n}/C{%u} against
(C{uid=%n}: the entry's C{uid}).  Directories match C{uid} and C{mail}
case-insensitively, so C{BOB@Example.ORG} finds C{uid=bob} and is named
C{bob@example.org}, as is a recipient C{Bob@Example.org}.

The arguments are parsed by L{popgate.cred.ldap_settings}; the connections
are L{popgate.cred.ldap_directory}'s.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from popgate.cred import scram
from popgate.cred.factories import global_reactor
from popgate.cred.ldap_directory import Directory, Entry
from popgate.cred.ldap_filter import expand_filter, name_attributes, parse_filter
from popgate.cred.ldap_settings import LDAPSettings, parse_args
from popgate.cred.names import normalize_user
from popgate.cred.templates import Template
from popgate.cred.text import user_name
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.errors import TemporaryFailure, UnknownUser
from popgate.interfaces import (
    IPerUserPolicy,
    IReachable,
    IScramCredentials,
    IScramLookup,
    IUserLookup,
)
from popgate.policy import EXPIRE, LOGIN_DELAY, UserPolicy, user_policy

__all__ = ["LDAPChecker", "LDAPSettings", "make_checker", "parse_args"]


@implementer(ICredentialsChecker, IUserLookup, IReachable, IPerUserPolicy, IScramLookup)
class LDAPChecker:
    """
    Checks user names and passwords against an LDAP directory, and answers
    whether a user exists (for delivery).

    With C{scram_attribute} (say C{userPassword}), SCRAM logins too: the
    service account reads the user's C{{SCRAM-SHA-256}...} value (no bind
    as the user: SCRAM never sends the password) and the proof is checked
    against it.

    @param reactor: connects, and times each operation.
    """

    credentialInterfaces: tuple[Any, ...] = (IUsernamePassword,)
    log = Logger()

    def __init__(self, settings: LDAPSettings, reactor: Any) -> None:
        self.settings = settings
        self._scram = frozenset(scram.MECHANISMS if settings.scram_attribute else ())
        if self._scram:
            self.credentialInterfaces = (IUsernamePassword, IScramCredentials)
        self._filter = Template(settings.filter, "filter")
        self._name_attributes = name_attributes(settings.filter)
        wanted = [settings.user_attribute, settings.mail_attribute,
                  settings.login_delay_attribute, settings.expire_attribute,
                  settings.scram_attribute, *(a for a, _ in self._name_attributes)]
        fetch: dict[str, str] = {}
        for attribute in wanted:
            if attribute:
                fetch.setdefault(attribute.lower(), attribute)
        self.directory = Directory(settings, list(fetch.values()), reactor)

    # -- the Twisted edge --

    # popgate's avatar ids are str (the user name), not Twisted's bytes.
    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]
        """
        @return: a L{Deferred} firing with the user name (C{str}), failing
            with L{UnauthorizedLogin} or L{TemporaryFailure}.
        """
        if IScramCredentials.providedBy(credentials):
            return Deferred.fromCoroutine(self._check_scram(credentials))
        return Deferred.fromCoroutine(
            self._authenticate(credentials.username, credentials.password))

    def scram_mechanisms(self) -> frozenset[str]:
        return self._scram

    def lookup_scram(self, name: str | bytes, mechanism: str) -> Deferred[Any]:
        async def keys() -> scram.ScramKeys | None:
            user = user_name(name)
            entry = await self._find(user) if user is not None and self._scram else None
            return self._keys(entry, mechanism) if entry is not None else None

        return Deferred.fromCoroutine(keys())

    def lookup_user(self, name: str | bytes) -> Deferred[UserInfo | None]:
        """
        @return: a L{Deferred} firing with a L{UserInfo}, C{None} when no
            entry matches, or failing with L{TemporaryFailure} when the
            directory cannot answer or several entries match.
        """
        return Deferred.fromCoroutine(self._lookup(name))

    def probe(self) -> Deferred[str]:
        """Connect, bind and read the base entry (L{Directory.probe})."""
        return Deferred.fromCoroutine(self.directory.probe())

    def policy_fields(self) -> frozenset[str]:
        """The per-user fields an attribute is configured for."""
        return frozenset(field for field, attribute in (
            (LOGIN_DELAY, self.settings.login_delay_attribute),
            (EXPIRE, self.settings.expire_attribute)) if attribute)

    # -- the work --

    async def _authenticate(self, username: bytes | str, password: bytes | str) -> str:
        user = user_name(username)
        if user is None:
            raise UnauthorizedLogin("empty or not UTF-8 user name")
        secret = password.encode("utf-8") if isinstance(password, str) else password
        if not secret:
            # An empty password makes a simple bind unauthenticated, which
            # many servers accept: never send one.
            raise UnauthorizedLogin("empty password")
        entry = await self._find(user)
        if entry is None:
            self.log.info("LDAP login refused for {user!r}: no single entry", user=user)
            raise UnknownUser("no such user")
        if not await self.directory.bind_as_user(entry.dn, secret):
            self.log.info("LDAP login refused for {user!r}: wrong password", user=user)
            raise UnauthorizedLogin("wrong password")
        name = self._canonical(entry, user)
        return AvatarId(name, entry.first(self.settings.mail_attribute), self._policy(entry, name))

    async def _check_scram(self, credentials: Any) -> str:
        user = user_name(credentials.username)
        if user is None or not self._scram:
            raise UnauthorizedLogin("empty or not UTF-8 user name")
        entry = await self._find(user)
        if entry is None:
            self.log.info("LDAP login refused for {user!r}: no single entry", user=user)
            raise UnknownUser("no such user")
        keys = self._keys(entry, credentials.mechanism)
        if keys is None or not credentials.check(keys):
            self.log.info("LDAP {mechanism} login refused for {user!r}: "
                          "{why}", mechanism=credentials.mechanism, user=user,
                          why="wrong proof" if keys is not None else "no keys stored")
            raise UnauthorizedLogin("wrong proof")
        name = self._canonical(entry, user)
        return AvatarId(name, entry.first(self.settings.mail_attribute), self._policy(entry, name))

    def _keys(self, entry: Entry, mechanism: str) -> scram.ScramKeys | None:
        """The first value of C{scram_attribute} holding keys for C{mechanism}."""
        for value in entry.values(self.settings.scram_attribute):
            keys = scram.parse_keys(value)
            if keys is not None and keys.mechanism == mechanism:
                return keys
        return None

    async def _lookup(self, name: str | bytes) -> UserInfo | None:
        user = user_name(name)
        if user is None:
            return None
        entry = await self._find(user, ambiguous_is_error=True)
        if entry is None:
            return None
        name = self._canonical(entry, user)
        return UserInfo(
            name=name,
            mail_location=entry.first(self.settings.mail_attribute),
            policy=self._policy(entry, name),
        )

    def _policy(self, entry: Entry, name: str) -> UserPolicy | None:
        """The user's LOGIN-DELAY and EXPIRE attributes, if configured and set."""
        return user_policy(entry.first(self.settings.login_delay_attribute),
                           entry.first(self.settings.expire_attribute), name, self.log)

    def _canonical(self, entry: Entry, user: str) -> str:
        """
        The directory's spelling of C{user}: the C{user_attribute} value,
        else the value that matched C{%u}/C{%n} in the filter (when several
        values, the one equal to C{user} ignoring case), else C{user}; its
        domain lower-cased.  Login and delivery both name the user so.
        """
        stored = entry.first(self.settings.user_attribute)
        if stored:
            return normalize_user(stored)
        local, at, domain = user.rpartition("@")
        if not at:
            local = user
        for attribute, whole in self._name_attributes:
            typed = (user if whole else local).casefold()
            for value in entry.values(attribute):
                if value.casefold() == typed:
                    return normalize_user(value if whole or not at else f"{value}@{domain}")
        return user

    async def _find(self, user: str, ambiguous_is_error: bool = False) -> Entry | None:
        """The one entry the filter finds for C{user}, or C{None}."""
        entries = await self.directory.search(parse_filter(expand_filter(self._filter, user)))
        if len(entries) > 1:
            self.log.warn("LDAP filter matched several entries for {user!r}", user=user)
            if ambiguous_is_error:
                raise TemporaryFailure("LDAP filter matched several entries")
            return None
        return entries[0] if entries else None


def make_checker(argstring: str) -> LDAPChecker:
    """The C{ldap:} strcred factory: see L{parse_args}."""
    return LDAPChecker(parse_args(argstring), global_reactor())
