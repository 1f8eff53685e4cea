"""
Dovecot passwd-files as a twisted.cred checker: C{passwd-file:/path}.

Lines are C{user:password:uid:gid:gecos:home:shell:extra_fields}; the
first two fields matter here, and in the space-separated C{key=value}
extra fields C{login_delay=SECONDS} and C{expire=DAYS|never} (also with
Dovecot's C{userdb_} prefix), the user's own LOGIN-DELAY and EXPIRE
(L{popgate.policy}).  The password is C{{SCHEME}value}, or a bare
crypt(3) hash as Dovecot assumes.  C{{PLAIN}} passwords also serve
challenge-response logins (APOP, CRAM-MD5) through
L{IUsernameHashedPassword}, C{{SCRAM-SHA-256}} keys SCRAM logins.  The
file is re-read when it changes.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from zope.interface import implementer

from popgate.cred._userfile import UserEntry, UserFileChecker
from popgate.cred.factories import global_reactor
from popgate.cred.schemes import plaintext_secret
from popgate.errors import UnknownUser
from popgate.interfaces import IPerUserPolicy, IScramCredentials
from popgate.policy import FIELDS, user_policy

_log = Logger()

__all__ = ["PasswdFileChecker", "make_checker"]


@implementer(IPerUserPolicy)
class PasswdFileChecker(UserFileChecker):
    """Users and password hashes from a Dovecot passwd-file."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword, IScramCredentials)
    kind = "passwd-file"
    default_scheme = "CRYPT"  # Dovecot's default for passwd-file

    def __init__(self, path: str, reactor: IReactorThreads) -> None:
        super().__init__(path, reactor)
        self._fields_of: object = None
        # Until the file is first read for a login, a glance at it (at
        # start-up or in a reload's thread) says which fields it sets.
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        self._policy_fields = frozenset(f for f in FIELDS if f.encode() + b"=" in data)

    @staticmethod
    def parse_line(line: str) -> UserEntry | None:
        fields = line.split(":", 7)
        if len(fields) < 2 or not fields[0]:
            return None
        policy = None
        if len(fields) == 8:
            extra = {}
            for item in fields[7].split():
                key, eq, value = item.partition("=")
                if eq:
                    extra[key.removeprefix("userdb_")] = value
            policy = user_policy(extra.get("login_delay"), extra.get("expire"), fields[0], _log)
        return UserEntry(fields[0], fields[1], policy)

    def policy_fields(self) -> frozenset[str]:
        """The per-user fields some line of the file (as last read) sets."""
        return self._policy_fields

    async def _users(self) -> dict[str, UserEntry]:
        users = await super()._users()
        if users is not self._fields_of:
            self._fields_of = users
            self._policy_fields = frozenset(
                field for field in FIELDS
                if any(getattr(e.policy, field, None) is not None for e in users.values()))
        return users

    async def _check_other(self, entry: UserEntry | None, credentials: Any) -> str:
        # Challenge-response needs the password itself: only {PLAIN} has it.
        if not IUsernameHashedPassword.providedBy(credentials):
            return await super()._check_other(entry, credentials)  # SCRAM
        if entry is None:
            raise UnknownUser()
        secret = plaintext_secret(entry.stored, default_scheme=self.default_scheme)
        if secret is None or not await maybeDeferred(credentials.checkPassword, secret):
            raise UnauthorizedLogin()
        return self.avatar_id(entry)


def make_checker(argstring: str) -> PasswdFileChecker:
    """The C{passwd-file} strcred plugin's maker: C{argstring} is the file's path."""
    return PasswdFileChecker.from_argstring(argstring, global_reactor())
