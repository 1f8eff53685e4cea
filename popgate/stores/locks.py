"""
The in-process half of the maildrop lock.

Stores that lock through the file system (flock) or the database also use
this registry so two sessions in one process refuse each other at once.
"""

from __future__ import annotations

from popgate import errors


class SessionLocks:
    """A set of held mailbox keys; acquiring a held key raises
    L{errors.MaildropInUse}."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, key: str) -> None:
        if key in self._held:
            raise errors.MaildropInUse(key)
        self._held.add(key)

    def release(self, key: str) -> None:
        self._held.discard(key)

    def held(self, key: str) -> bool:
        return key in self._held
