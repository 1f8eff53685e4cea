"""
Whether the target holds a user's source snapshot: every UIDL the old
store listed, with the same wire size (what STAT, LIST and RETR's C{+OK}
will say), and a body whose chunk rows hold all of its stored octets with
no gap in their sequence.  Read from the rows' sizes only (no body is
read back), so verifying a big mailbox costs one query.

Messages the target has and the source does not (mail delivered to the
new store already) are counted, not a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from popgate.maildrop import MessageInfo
from popgate.migrate.target import StoredRow

__all__ = ["Verification", "compare"]


@dataclass(slots=True)
class Verification:
    """
    @ivar problems: one short line per message that does not match.
    @ivar only_in_target: messages the target has besides the source's.
    """

    problems: list[str] = field(default_factory=list)
    only_in_target: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(source: Sequence[MessageInfo], rows: Iterable[StoredRow]) -> Verification:
    """Check the target's C{rows} of one mailbox against the source's snapshot."""
    by_uidl = {row.uidl: row for row in rows}
    result = Verification()
    for info in source:
        uidl = info.uid.decode("ascii")
        row = by_uidl.pop(info.uid, None)
        if row is None:
            result.problems.append(f"UIDL {uidl} is missing from the target")
        elif row.wire_size != info.size:
            result.problems.append(f"UIDL {uidl} is {info.size} octets in the source, "
                                   f"{row.wire_size} in the target")
        elif row.chunk_octets != row.stored_size:
            result.problems.append(f"UIDL {uidl}: its chunk rows hold {row.chunk_octets} of "
                                   f"its {row.stored_size} octets")
        elif row.chunks != row.seq_end:
            result.problems.append(f"UIDL {uidl}: {row.seq_end - row.chunks} of its chunk "
                                   "rows are missing")
    result.only_in_target = len(by_uidl)
    return result
