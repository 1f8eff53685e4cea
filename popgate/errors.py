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


class LoginDelayed(Exception):
    """The user logged in less than their LOGIN-DELAY ago (RFC 2449 6.5):
    C{-ERR [LOGIN-DELAY]}.  Raised only after the credentials were
    checked, so it never tells an unauthenticated client that a user
    exists."""

    def __init__(self, delay: int, remaining: float) -> None:
        super().__init__(f"logged in {delay - remaining:.0f} s ago, less than the "
                         f"login delay of {delay} s")
        self.delay = delay
        self.remaining = remaining


class InvalidUserName(PermanentFailure):
    """A user name that cannot name a mailbox safely (C{../}, C{/}, NUL)."""


class UnknownUser(UnauthorizedLogin):
    """A user store knows no such user.  The client sees the same
    C{-ERR [AUTH]} as for a wrong password; only the log tells them apart."""
