"""
Client addresses as the limits and the login penalty group them: one key
per IPv4 address and per IPv6 network (a host usually owns a whole /64),
IPv4-mapped IPv6 as the IPv4 address; and the networks exempt from them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def client_address(host: str) -> IPAddress | None:
    """C{host} as an address (a zone index dropped), IPv4-mapped IPv6 as
    IPv4; None if it is not an IP address (a UNIX socket).  Cached: a
    login asks for its client's address several times (limits, penalty,
    plaintext policy), and parsing one costs more than the lookup."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def address_key(host: str, ipv6_prefix: int = 64) -> str:
    """
    The per-client key of C{host}: IPv6 addresses by their C{/ipv6_prefix}
    network, IPv4-mapped IPv6 as the IPv4 address, anything that is not an
    IP address as given.
    """
    address = client_address(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """
    C{specs} (CIDR strings, or comma-separated lists of them) as networks.

    @raise ValueError: naming the first one that is not a network.
    """
    networks = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network: {part!r}") from None
    return tuple(networks)
