"""
Per-client penalty for failed logins, like Dovecot's auth penalty.

Each failed login from an address doubles the delay before the server
answers that address's next failed login (base, 2*base, 4*base, ... up to
C{max_delay}); a success resets it.  Password guessing from one address
slows down exponentially while a user who mistypes once barely notices.

This module is pure bookkeeping on an injected clock: it never schedules
anything itself, so the protocol decides how to wait (C{callLater}).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass
class _Penalty:
    delay: float
    last_failure: float


class LoginThrottle:
    """
    Failed-login penalties by client address, bounded in memory.

    Typical use on a failed login: C{record_failure(ip)}, then wait
    C{delay_for(ip)} seconds before sending C{-ERR}.  The first failure thus
    waits C{base_delay}, the next twice that, and so on.

    IPv6 clients are grouped by their C{/ipv6_prefix} network, since one
    host usually owns a whole /64; IPv4-mapped IPv6 addresses count as the
    IPv4 address.  Anything that is not an IP address (a UNIX socket path)
    is used as given.

    @param clock: where the time comes from (the reactor, or a
        L{twisted.internet.task.Clock} in tests).
    @param base_delay: seconds after the first failure.
    @param max_delay: the cap of the doubling.
    @param max_entries: how many addresses are remembered; the one that
        failed least recently is forgotten first.
    @param expire_after: seconds without a failure after which an address
        starts afresh.
    @param ipv6_prefix: how many leading bits of an IPv6 address identify
        one client.
    """

    def __init__(
        self,
        clock: IReactorTime,
        base_delay: float = 2.0,
        max_delay: float = 15.0,
        max_entries: int = 10000,
        expire_after: float = 3600.0,
        ipv6_prefix: int = 64,
    ) -> None:
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")
        self._clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_entries = max_entries
        self.expire_after = expire_after
        self.ipv6_prefix = ipv6_prefix
        # Ordered by last failure, oldest first: eviction pops from the front.
        self._entries: OrderedDict[str, _Penalty] = OrderedDict()

    def delay_for(self, ip: str) -> float:
        """Seconds to wait before answering a failed login from C{ip}."""
        entry = self._current(self._key(ip))
        return 0.0 if entry is None else entry.delay

    def record_failure(self, ip: str) -> None:
        """Count a failed login from C{ip}: start or double its penalty."""
        key = self._key(ip)
        now = self._clock.seconds()
        entry = self._current(key)
        if entry is None:
            delay = min(self.base_delay, self.max_delay)
        else:
            delay = min(entry.delay * 2, self.max_delay)
        self._entries[key] = _Penalty(delay, now)
        self._entries.move_to_end(key)
        self._prune(now)

    def record_success(self, ip: str) -> None:
        """Forget C{ip}'s penalty: the client knew a password."""
        self._entries.pop(self._key(ip), None)

    def __len__(self) -> int:
        return len(self._entries)

    def _current(self, key: str) -> _Penalty | None:
        entry = self._entries.get(key)
        if entry is not None and self._expired(entry, self._clock.seconds()):
            del self._entries[key]
            return None
        return entry

    def _expired(self, entry: _Penalty, now: float) -> bool:
        return now - entry.last_failure >= self.expire_after

    def _prune(self, now: float) -> None:
        # The front holds the oldest failures, so expiry stops at the first
        # live entry; the size bound then drops the oldest survivors.
        while self._entries:
            first = next(iter(self._entries.values()))
            if not self._expired(first, now):
                break
            self._entries.popitem(last=False)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _key(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            network = ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False)
            return str(network)
        return str(address)
