"""
What a user store knows about a user without their password.

Returned by L{popgate.interfaces.IUserLookup.lookup_user}, so that delivery
can refuse unknown recipients and find a mail location that a directory
holds per user (overriding the store's C{%d/%n} template).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserInfo:
    """
    @ivar name: the canonical user name (the avatar id a login would give).
    @ivar mail_location: where this user's mail lives, when the user store
        says so (e.g. LDAP C{mailMessageStore}); C{None} means "use the
        store's template".
    """

    name: str
    mail_location: str | None = None


class AvatarId(str):
    """
    The avatar id a checker returns (the user name), carrying the user's
    mail location when the user store holds one, so the store can honour
    it without a second directory round trip.
    """

    mail_location: str | None

    def __new__(cls, name: str, mail_location: str | None = None) -> AvatarId:
        self = super().__new__(cls, name)
        self.mail_location = mail_location or None
        return self
