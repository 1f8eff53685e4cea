"""
Who a recipient address is: the user stores (checkers that provide
L{IUserLookup}) are asked, in the order given with C{--auth}.

A recipient C{Alice@Example.org} is looked up as C{Alice@example.org}
(domains are case-insensitive: L{popgate.cred.names}), then C{Alice},
then both with the local part in lower case, and delivered under the name
the user store returns: the store's own spelling, the name a POP3 login
gives, so mail lands where the user's POP3 session looks.  The exact local
part goes first, so a case-sensitive file holding both C{Bob} and C{bob}
keeps them apart; the lower-case one after, because MTAs and senders
change the case of addresses that a file lists in lower case.  With no
user store that can look users up (none provides L{IUserLookup}), every
recipient is accepted under the address as given, domain lower-cased.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from popgate.cred.names import normalize_user
from popgate.cred.userinfo import AvatarId
from popgate.errors import TemporaryFailure
from popgate.interfaces import IUserLookup
from popgate.stores.mailpath import split_user

log = Logger()


def candidate_names(address: str) -> list[str]:
    """The names tried for C{address}, most specific first."""
    names: list[str] = []
    address = normalize_user(address)
    for form in (address, address.lower()):
        local, domain = split_user(form)
        for name in (form, local if domain else ""):
            if name and name not in names:
                names.append(name)
    return names


class UserResolver:
    """Turns a recipient address into a user name, or says there is none."""

    def __init__(self, lookups: Sequence[Any]) -> None:
        self.lookups = list(lookups)

    @classmethod
    def from_checkers(cls, checkers: Sequence[Any]) -> UserResolver:
        return cls([c for c in checkers if IUserLookup.providedBy(c)])

    @property
    def accepts_anyone(self) -> bool:
        return not self.lookups

    def resolve(self, address: str) -> defer.Deferred[str | None]:
        """
        @return: a L{Deferred} firing with the user name, or C{None} for an
            unknown user; failing with L{TemporaryFailure} when a user store
            that could not answer might have known the user.
        """
        return defer.Deferred.fromCoroutine(self._resolve(address))

    async def _resolve(self, address: str) -> str | None:
        if not self.lookups:
            return normalize_user(address)
        trouble: BaseException | None = None
        for name in candidate_names(address):
            for lookup in self.lookups:
                try:
                    info = await defer.maybeDeferred(lookup.lookup_user, name)
                except Exception as e:
                    log.warn("user lookup of {name} failed: {e}", name=name, e=e)
                    trouble = e
                    continue
                if info is not None:
                    # Keep the directory's mail location with the name, so
                    # delivery writes where POP3 logins will read.
                    return normalize_user(AvatarId(str(info.name), info.mail_location))
        if trouble is not None:
            raise TemporaryFailure(f"cannot look up {address}") from trouble
        return None
