"""
What every part of a POP3 session shares: the states of RFC 1939, the
error a command raises for a refused argument, and one-line descriptions
of expected failures for the log.
"""

from __future__ import annotations

from twisted.python.failure import Failure

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"


class BadArgument(Exception):
    """
    A command argument that gets C{-ERR}.  C{text} is safe to send: a
    message in English, sent in the session's language
    (L{popgate.pop3.language}), with C{{name}} placeholders filled from
    C{fields}.
    """

    def __init__(self, text: str, code: bytes | None = None, **fields: object) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.fields = fields


def describe(failure: Failure) -> str:
    """One line for an expected error: the OS's words where there are some."""
    value = failure.value
    if isinstance(value, OSError) and value.strerror:
        where = f" ({value.filename})" if value.filename else ""
        return f"{value.strerror}{where}"
    return failure.getErrorMessage()
