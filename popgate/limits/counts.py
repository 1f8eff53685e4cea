"""
The connection counts of one process, over all its listeners and per
client address (L{popgate.addresses.address_key}); exempt networks have no
per-address limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from popgate.addresses import Network, address_key, client_address
from popgate.limits.budget import ACCEPT_RESERVE
from popgate.limits.reports import OncePerInterval

_ADDRESSES_REPORTED = 100


class Ticket:
    """One admitted connection's share of the counts; released once."""

    def __init__(self, limits: ConnectionLimits, key: str | None) -> None:
        self._limits = limits
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._release(self.key)


class ConnectionLimits:
    """
    The connection counts of one process, shared by all its listeners.

    @param max_connections: connections at once, over all listeners.
    @param max_per_ip: connections at once from one address (IPv6: one
        C{/ipv6_prefix}); 0 for no limit.
    @param exempt: networks whose clients have no per-address limit (a
        webmail, a proxy); they still count toward C{max_connections}.
    @param max_tls_refusals: POP3S refusals waiting for their TLS
        handshake at once (at most C{refusal_timeout} seconds each).
    """

    def __init__(self, clock: Any, max_connections: int, max_per_ip: int = 20,
                 exempt: Sequence[Network] = (), ipv6_prefix: int = 64,
                 max_tls_refusals: int = ACCEPT_RESERVE // 2,
                 refusal_timeout: float = 10.0) -> None:
        if max_connections < 1 or max_per_ip < 0:
            raise ValueError("connection limits must be positive")
        self.clock = clock
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.exempt = tuple(exempt)
        self.ipv6_prefix = ipv6_prefix
        self.max_tls_refusals = max_tls_refusals
        self.refusal_timeout = refusal_timeout
        self.total = 0
        self.tls_refusals = 0
        self._by_address: dict[str, int] = {}
        self.reports = OncePerInterval(clock)

    def count_for(self, host: str) -> int:
        """Open connections counted for C{host}'s key."""
        return self._by_address.get(address_key(host, self.ipv6_prefix), 0)

    def _key(self, addr: Any) -> str | None:
        """The per-address key of C{addr}, or None when it is not limited
        (a UNIX socket, an exempt network, no per-address limit)."""
        host = getattr(addr, "host", None)
        if not self.max_per_ip or not isinstance(host, str):
            return None
        address = client_address(host)
        if address is None:
            return None
        if any(address in network for network in self.exempt):
            return None
        return address_key(str(address), self.ipv6_prefix)

    def admit(self, addr: Any, per_ip: bool = True) -> tuple[Ticket | None, str | None]:
        """
        Count a new connection from C{addr}: (ticket, None) when admitted,
        (None, "total" or "address") when it is over a limit (nothing is
        counted then).
        """
        if self.total >= self.max_connections:
            self.reports.event("total", "connection limit reached ({limit}): refusing clients",
                               "connection limit ({limit}): refused {count} more client{s} "
                               "in {interval:.0f} s", limit=self.max_connections)
            return None, "total"
        key = self._key(addr) if per_ip else None
        if key is not None:
            count = self._by_address.get(key, 0)
            if count >= self.max_per_ip:
                # A line per address (for fail2ban), but not for an
                # unbounded number of them in one interval.
                if len(self.reports) < _ADDRESSES_REPORTED:
                    self.reports.event(f"address {key}",
                                       "too many connections from {address} ({limit}): refusing",
                                       "too many connections from {address}: refused {count} "
                                       "more in {interval:.0f} s", address=key,
                                       limit=self.max_per_ip)
                else:
                    self.reports.event("addresses", "too many connections from many addresses "
                                       "({limit} each): refusing", "too many connections from "
                                       "many addresses: refused {count} more in {interval:.0f} s",
                                       limit=self.max_per_ip)
                return None, "address"
            self._by_address[key] = count + 1
        self.total += 1
        return Ticket(self, key), None

    def _release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            count = self._by_address.pop(key) - 1
            if count:
                self._by_address[key] = count
