"""
What a user store knows about a user without their password.

Returned by L{popgate.interfaces.IUserLookup.lookup_user}, so that delivery
can refuse unknown recipients and find a mail location that a directory
holds per user (overriding the store's C{%d/%n} template).
"""

from __future__ import annotations

from dataclasses import dataclass

from popgate.policy import UserPolicy


@dataclass(frozen=True)
class UserInfo:
    """
    @ivar name: the canonical user name (the avatar id a login would give).
    @ivar mail_location: where this user's mail lives, when the user store
        says so (e.g. LDAP C{mailMessageStore}); C{None} means "use the
        store's template".
    @ivar policy: the user's own LOGIN-DELAY and EXPIRE, when the user
        store holds them (L{popgate.policy}).
    """

    name: str
    mail_location: str | None = None
    policy: UserPolicy | None = None


class AvatarId(str):
    """
    The avatar id a checker returns (the user name), carrying the user's
    mail location and LOGIN-DELAY/EXPIRE when the user store holds them, so
    the store and the realm can honour them without a second directory
    round trip.
    """

    mail_location: str | None
    policy: UserPolicy | None

    def __new__(cls, name: str, mail_location: str | None = None,
                policy: UserPolicy | None = None) -> AvatarId:
        self = super().__new__(cls, name)
        self.mail_location = mail_location or None
        self.policy = policy
        return self
