"""
Dovecot passwd-files as a twisted.cred checker: C{passwd-file:/path}.

Lines are C{user:password:uid:gid:gecos:home:shell:extra_fields}; only the
first two fields matter here.  The password is C{{SCHEME}value}, or a bare
crypt(3) hash as Dovecot assumes.  C{{PLAIN}} passwords also serve
challenge-response logins (APOP, CRAM-MD5) through
L{IUsernameHashedPassword}.  The file is re-read when it changes.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred

from popgate.cred._userfile import UserEntry, UserFileChecker
from popgate.cred.factories import global_reactor
from popgate.cred.schemes import plaintext_secret
from popgate.errors import UnknownUser

__all__ = ["PasswdFileChecker", "make_checker"]


class PasswdFileChecker(UserFileChecker):
    """Users and password hashes from a Dovecot passwd-file."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    kind = "passwd-file"
    default_scheme = "CRYPT"  # Dovecot's default for passwd-file

    @staticmethod
    def parse_line(line: str) -> UserEntry | None:
        fields = line.split(":", 2)
        if len(fields) < 2 or not fields[0]:
            return None
        return UserEntry(fields[0], fields[1])

    async def _check_other(self, entry: UserEntry | None, credentials: Any) -> str:
        # Challenge-response needs the password itself: only {PLAIN} has it.
        if not IUsernameHashedPassword.providedBy(credentials):
            raise UnauthorizedLogin()
        if entry is None:
            raise UnknownUser()
        secret = plaintext_secret(entry.stored, default_scheme=self.default_scheme)
        if secret is None or not await maybeDeferred(credentials.checkPassword, secret):
            raise UnauthorizedLogin()
        return entry.name


def make_checker(argstring: str) -> PasswdFileChecker:
    """The C{passwd-file} strcred plugin's maker: C{argstring} is the file's path."""
    return PasswdFileChecker.from_argstring(argstring, global_reactor())
