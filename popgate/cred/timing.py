"""
Unknown users cost what a wrong password costs.

Without this, a refusal for a user who does not exist comes back at once
while a real user's wrong password takes a hash check (tens of
milliseconds for bcrypt), and timing lists the users.  So an unknown user
(or one with no usable password) has their password checked against a
I{stand-in}: a stored value like the store's own, checked the way a real
one is (in the thread pool for a KDF, inline for a cheap digest, see
L{popgate.cred.schemes.verify_in_thread}), and the answer thrown away.

The stand-in starts as L{DUMMY_HASH} (bcrypt) and then follows the store:
a file's first real hash when it is read (L{TimingEqualiser.learn_sample}),
a database's last checked one (L{TimingEqualiser.learn}).  A clear-text
password is never kept as the stand-in: a random one of the same cost is.

Challenge-response credentials (APOP, CRAM-MD5) are not equalised: their
check is one MD5, cheaper than the difference a lookup makes anyway.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from popgate.cred.schemes import DUMMY_HASH, dummy_verify_in_thread, plaintext_secret

__all__ = ["TimingEqualiser"]


class TimingEqualiser:
    """The stand-in check of one user store."""

    def __init__(self, reactor: IReactorThreads, default_scheme: str | None = None) -> None:
        self._reactor = reactor
        self._default_scheme = default_scheme
        self.stand_in = DUMMY_HASH

    def _is_clear(self, stored: str) -> bool:
        return plaintext_secret(stored, default_scheme=self._default_scheme) is not None

    def learn(self, stored: str) -> None:
        """Cost what checking C{stored}, a real user's value, costs."""
        self.stand_in = "{PLAIN}" + secrets.token_hex(8) if self._is_clear(stored) else stored

    def learn_sample(self, stored_values: Iterable[str]) -> None:
        """
        Cost what a store with these values costs: its first hash, else (a
        store of clear-text passwords) a clear-text stand-in, else (an empty
        store) L{DUMMY_HASH}.
        """
        first_clear = None
        for stored in stored_values:
            if not stored:
                continue
            if not self._is_clear(stored):
                self.stand_in = stored
                return
            first_clear = first_clear or stored
        if first_clear is not None:
            self.learn(first_clear)
        else:
            self.stand_in = DUMMY_HASH

    def refuse(self, password: bytes | str,
               error: type[UnauthorizedLogin] = UnauthorizedLogin) -> Deferred[Any]:
        """
        Fail with C{error} (an L{UnauthorizedLogin}: L{UnknownUser
        <popgate.errors.UnknownUser>} for a user nobody has) once a check
        of C{password} against the stand-in is done (whatever it says,
        even an error).
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        d = dummy_verify_in_thread(self._reactor, password, self.stand_in,
                                   default_scheme=self._default_scheme)

        def refused(_: object) -> None:
            raise error()

        return d.addBoth(refused)
