"""
Old messages (with the UIDLs clients know) to the new store's, one to one:
first by the digest of the whole message, then, for what is left, by
Message-ID and size (the same message where the bytes differ, e.g. a
header the new server added), then by Message-ID alone when the old side
knows nothing else (a C{uidl message-id} list).  A key that would match
two messages on the other side matches none: an old UIDL is never given
to two messages, nor two old UIDLs to one message.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from popgate.uidl.message import Message


@dataclass
class Matching:
    """
    @ivar pairs: (old, new) matched.
    @ivar how: for each pair, C{"digest"}, C{"message-id+size"} or
        C{"message-id"}.
    @ivar old_unmatched: old messages with no new one (a client has seen
        them; they are not in the new store, or could not be told apart).
    @ivar new_unmatched: new messages with no old one (a client would
        download them).
    """

    pairs: list[tuple[Message, Message]] = field(default_factory=list)
    how: list[str] = field(default_factory=list)
    old_unmatched: list[Message] = field(default_factory=list)
    new_unmatched: list[Message] = field(default_factory=list)


Key = Callable[[Message], Hashable | None]

_RULES: tuple[tuple[str, Key], ...] = (
    ("digest", lambda m: m.digest),
    ("message-id+size", lambda m: (m.message_id, m.size)
     if m.message_id is not None and m.size is not None else None),
    ("message-id", lambda m: m.message_id
     if m.digest is None and m.size is None else None),
)


def _unique_by(messages: Sequence[Message], key: Key) -> dict[Hashable, Message]:
    """The messages whose key no other one shares, by key."""
    groups: dict[Hashable, list[Message]] = defaultdict(list)
    for m in messages:
        k = key(m)
        if k is not None:
            groups[k].append(m)
    return {k: ms[0] for k, ms in groups.items() if len(ms) == 1}


def match(old: Sequence[Message], new: Sequence[Message]) -> Matching:
    """Match C{old} to C{new} by the rules above, in that order."""
    result = Matching()
    old_left, new_left = list(old), list(new)
    for name, key in _RULES:
        by_old = _unique_by(old_left, key)
        by_new = _unique_by(new_left, key)
        if name == "message-id":
            # The new side always knows digests: compare Message-IDs only.
            by_new = _unique_by(new_left, lambda m: m.message_id)
        taken_old: set[int] = set()
        taken_new: set[int] = set()
        for k, o in by_old.items():
            n = by_new.get(k)
            if n is not None:
                result.pairs.append((o, n))
                result.how.append(name)
                taken_old.add(id(o))
                taken_new.add(id(n))
        old_left = [m for m in old_left if id(m) not in taken_old]
        new_left = [m for m in new_left if id(m) not in taken_new]
    result.old_unmatched = old_left
    result.new_unmatched = new_left
    return result
