"""
Apache htpasswd files as a twisted.cred checker: C{htpasswd:/path}.

Lines are C{user:hash}, as C{htpasswd} writes them: bcrypt (C{-B}),
SHA-512/SHA-256 crypt (C{-5}/C{-2}), APR1-MD5 (C{-m}), C{{SHA}} (C{-s}) and
DES crypt (C{-d}); and C{{SCRAM-SHA-256}} keys (C{popgate passwd -s
SCRAM-SHA-256}, which Apache cannot check), which serve SCRAM logins too.
The file is re-read when it changes.
"""

from __future__ import annotations

from twisted.cred.credentials import IUsernamePassword

from popgate.cred._userfile import UserEntry, UserFileChecker
from popgate.cred.factories import global_reactor
from popgate.interfaces import IScramCredentials

__all__ = ["HtpasswdChecker", "make_checker"]


class HtpasswdChecker(UserFileChecker):
    """Users and password hashes from an Apache htpasswd file."""

    credentialInterfaces = (IUsernamePassword, IScramCredentials)
    kind = "htpasswd"
    default_scheme = "CRYPT"  # a bare hash that is not $id$ is DES crypt

    @staticmethod
    def parse_line(line: str) -> UserEntry | None:
        # Like mod_authn_file: the hash ends at the next colon, if any.
        name, colon, rest = line.partition(":")
        if not colon or not name:
            return None
        return UserEntry(name, rest.split(":", 1)[0])


def make_checker(argstring: str) -> HtpasswdChecker:
    """The C{htpasswd} strcred plugin's maker: C{argstring} is the file's path."""
    return HtpasswdChecker.from_argstring(argstring, global_reactor())
