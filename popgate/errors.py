"""
Failures that cross the seam between stores/checkers and the protocol.

The protocol maps each to an RFC 2449 / RFC 3206 response code; the text of
an exception is logged, never sent to the client.
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin


class MaildropInUse(Exception):
    """Another session holds the maildrop lock: C{-ERR [IN-USE]}."""


class TemporaryFailure(Exception):
    """A server-side problem worth retrying (directory down, disk full):
    C{-ERR [SYS/TEMP]}."""


class PermanentFailure(Exception):
    """A server-side problem that retrying will not fix (a corrupt mailbox,
    a bad configuration for this user): C{-ERR [SYS/PERM]}."""


class InvalidUserName(PermanentFailure):
    """A user name that cannot name a mailbox safely (C{../}, C{/}, NUL)."""


class UnknownUser(UnauthorizedLogin):
    """A user store knows no such user.  The client sees the same
    C{-ERR [AUTH]} as for a wrong password; only the log tells them apart."""
