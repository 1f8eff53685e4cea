"""
What the login penalty (L{popgate.cred.penalty}) keeps: one L{Entry} per
client address (its penalty, its forgiven users and failed pairs, its
queue) and one L{Attempt} per login waiting in it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall


@dataclass(eq=False)
class Attempt:
    """One login waiting for (or in) its check."""

    username: bytes
    fingerprint: bytes | None
    check: Callable[[], Any]
    release: Callable[[Any], object] | None
    result: Deferred[Any] = field(init=False)
    # Cancelled while its check ran: the outcome still counts, but nobody
    # is left to receive it.
    abandoned: bool = False


@dataclass(eq=False)
class Entry:
    """One client address: its penalty, what it is forgiven, its queue."""

    key: str
    delay: float = 0.0
    not_before: float = 0.0
    last_failure: float | None = None
    last_used: float = 0.0
    # User names that logged in from here, least recently used first.
    forgiven: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    # HMACs of (user, secret) pairs that failed from here, oldest first.
    failed: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    queue: deque[Attempt] = field(default_factory=deque)
    # Checks that run now: at most one while the address is penalised,
    # a few at once for an address with a clean record or forgiven names.
    running: list[Attempt] = field(default_factory=list)
    timer: IDelayedCall | None = None
    pumping: bool = False

    def idle(self) -> bool:
        return not self.running and not self.queue

    def pending(self) -> int:
        """Attempts someone still waits for (an abandoned check is not)."""
        return len(self.queue) + sum(not item.abandoned for item in self.running)


def remember(table: OrderedDict[bytes, None], key: bytes, bound: int) -> None:
    """Put C{key} last in C{table}, forgetting the oldest past C{bound}."""
    table[key] = None
    table.move_to_end(key)
    while len(table) > bound:
        table.popitem(last=False)
