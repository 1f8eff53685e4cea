"""
What case means in a user name: the domain (after the last C{@}) is
case-insensitive, the local part is what the user store says.

DNS names are case-insensitive (RFC 4343) and RFC 5321 2.4 says so for
mail domains too, while a local part "MUST be treated as case sensitive"
by everyone but its own host.  So popgate lower-cases the domain wherever
a name enters (a login, a recipient, a user file, a mail path, a cache
key), and leaves the local part to the user store: a case-insensitive
store (LDAP, MySQL) answers its stored spelling, a file matches exactly.
"""

from __future__ import annotations

import unicodedata
from typing import TypeVar

from popgate.cred.userinfo import AvatarId

__all__ = ["normalize_domain", "normalize_user"]

_S = TypeVar("_S", bound=str)


def normalize_domain(domain: str) -> str:
    """
    The domain in its one spelling: lower case (ASCII, and the Unicode
    lower case of a U-label, composed to NFC).  A-labels (C{xn--...}) are
    not decoded: an A-label and its U-label stay two spellings.
    """
    if domain.isascii():
        return domain.lower()
    return unicodedata.normalize("NFC", domain.lower())


def normalize_user(name: _S) -> _S:
    """
    C{Bob@Example.ORG} -> C{Bob@example.org}; a name without a domain is
    returned as it is.  An L{AvatarId} keeps its mail location and policy.
    """
    local, at, domain = name.rpartition("@")
    if not at or not domain:
        return name
    lowered = normalize_domain(domain)
    if lowered == domain:
        return name
    canonical = f"{local}@{lowered}"
    if isinstance(name, AvatarId):
        return AvatarId(canonical, name.mail_location,  # type: ignore[return-value]
                        name.policy)
    return canonical  # type: ignore[return-value]
