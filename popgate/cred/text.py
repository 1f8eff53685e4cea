"""
Text from outside, decoded one way in every user store.

Two sources, two rules:

 - A user name a client typed must be UTF-8 (and not empty): anything else
   names nobody, so the login fails (C{-ERR [AUTH]}) and a recipient is
   unknown, exactly as for a name that is not in the store.  Clients learn
   nothing they could not learn from a typo.
 - A value the store holds (a password hash, a DN, a mail location, a
   stored user name) that is not UTF-8 text is a configuration error: it is
   logged once for that value (not once per login of a client polling every
   minute) and treated as absent, so that user cannot log in (a password)
   or falls back to the default (a mail location).
"""

from __future__ import annotations

from twisted.logger import Logger

from popgate.cred.names import normalize_user

__all__ = ["NotText", "StoredText", "stored_text", "user_name"]


def user_name(raw: bytes | str) -> str | None:
    """
    The name a client gave, as text with its domain lower-cased
    (L{popgate.cred.names}), or C{None} when it names nobody: empty, or
    bytes that are not UTF-8.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return normalize_user(raw) if raw else None


class NotText(ValueError):
    """A stored value that is neither text nor UTF-8 bytes."""


def stored_text(value: object) -> str | None:
    """
    A stored value as text: C{str} as it is, UTF-8 bytes (C{bytes},
    C{bytearray}, C{memoryview}: what database drivers return) decoded,
    C{None} kept.

    @raise NotText: anything else, or bytes that are not UTF-8.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotText(f"not UTF-8 (byte {e.start})") from None
    raise NotText(f"a {type(value).__name__}, not text")


class StoredText:
    """
    L{stored_text} for one user store, logging each unreadable value once
    as a configuration error.

    The places already reported are remembered up to C{limit}, then
    forgotten all at once, so a store full of bad values cannot grow memory.
    """

    def __init__(self, log: Logger, store: str, limit: int = 1000) -> None:
        self._log = log
        self._store = store
        self._limit = limit
        self._reported: set[tuple[str, str]] = set()

    def decode(self, value: object, what: str, where: str) -> str | None:
        """
        The value as text, or C{None} when it is not text.

        @param what: what the value is, for the log (C{"the password"}).
        @param where: whose it is (a user name, a DN), for the log.
        """
        try:
            return stored_text(value)
        except NotText as e:
            place = (what, where)
            if place not in self._reported:
                if len(self._reported) >= self._limit:
                    self._reported.clear()
                self._reported.add(place)
                self._log.error(
                    "{store}: configuration error: {what} of {where!r} is {reason}; "
                    "treated as absent (logged once)",
                    store=self._store,
                    what=what,
                    where=where,
                    reason=str(e),
                )
            return None
