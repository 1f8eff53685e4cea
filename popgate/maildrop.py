"""
Small value types shared by every maildrop implementation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from popgate.wire import wire_size

# wire_size: this was the home of popgate.wire.wire_size
__all__ = ["MessageInfo", "is_valid_uid", "wire_size"]

_UID_OK = re.compile(rb"^[\x21-\x7e]{1,70}\Z")


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """
    One message of a maildrop snapshot.

    @ivar uid: the UIDL value: 1-70 octets in 0x21-0x7E, stable across
        sessions and never reused (RFC 1939).
    @ivar size: octets as sent by RETR: CRLF line ends, before dot-stuffing.
    """

    uid: bytes
    size: int

    @classmethod
    def unchecked(cls, uid: bytes, size: int) -> MessageInfo:
        """
        Build one without validation, for stores that build their unique
        ids and sizes themselves (a big Maildir makes 100,000 of these).
        """
        info = object.__new__(cls)
        object.__setattr__(info, "uid", uid)
        object.__setattr__(info, "size", size)
        return info

    def __post_init__(self) -> None:
        if not _UID_OK.match(self.uid):
            raise ValueError(f"invalid POP3 unique id {self.uid!r}")
        if self.size < 0:
            raise ValueError("negative message size")


def is_valid_uid(uid: bytes) -> bool:
    """True when C{uid} may be sent as a UIDL value as is."""
    return _UID_OK.match(uid) is not None
