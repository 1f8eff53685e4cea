"""
What a SASL mechanism's step gives the protocol: the next challenge, or a
refusal.  Shared by L{popgate.pop3.sasl} and L{popgate.pop3.scram}.
"""

from __future__ import annotations

from dataclasses import dataclass


class SASLError(Exception):
    """The client's response breaks the mechanism's rules: a failed login
    (C{-ERR [AUTH]}), never echoed to the client."""


@dataclass(frozen=True)
class Challenge:
    """The next server challenge (raw bytes; sent base64-encoded after C{+ })."""

    data: bytes
