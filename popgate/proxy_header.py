"""
The PROXY protocol header (v1 text, v2 binary) HAProxy sends first on a
connection, parsed into what popgate needs: whose connection it is.

Twisted's parsers (C{twisted.protocols.haproxy}) read the header, with
these differences, all checked by the tests:

- A header may come in any number of pieces: Twisted's wrapper drops a
  connection whose first read is shorter than 8 (v1) or 16 (v2) bytes.
- C{PROXY UNKNOWN\\r\\n}, what HAProxy sends for a client it has no
  address for (a frontend on a UNIX socket), is accepted: Twisted wants a
  space after C{UNKNOWN}.
- A v1 header with a port or an address that is not one (or an IPv6
  address after C{TCP4}) is refused, not passed on (Twisted raises
  C{ValueError} for a bad port and keeps a bad address as it is).
- v2 C{LOCAL} (HAProxy's health checks with C{send-proxy-v2}; with v1,
  HAProxy 2.6 sends its own addresses, a header like any other) is
  L{LOCAL}, not a connection from the proxy's address; a v2 header for a UNIX-socket or unspecified
  client is L{UNKNOWN}, not a UNIX address (a session would take a UNIX
  peer for a local, trusted one).  IPv6 addresses are written in their
  short form.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

__all__ = ["LOCAL", "PROXY", "UNKNOWN", "BadHeader", "Header", "parse"]

#: A relayed client: the header gives its address.
PROXY = "proxy"
#: The proxy's own connection (a v2 health check): no client behind it.
LOCAL = "local"
#: A relayed client whose address the header does not give (v1 UNKNOWN,
#: v2 UNIX or unspecified family): the proxy's address stands for it.
UNKNOWN = "unknown"

_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the spec's longest v1 line, CRLF included
_V2_PREFIX = V2Parser.PREFIX
_V2_FIXED = 16  # signature, version and command, family, length
_V2_INET, _V2_INET6 = 0x10, 0x20


class BadHeader(Exception):
    """Not a PROXY header, or a malformed one."""


@dataclass(frozen=True)
class Header:
    """
    One parsed header.

    @ivar command: L{PROXY}, L{LOCAL} or L{UNKNOWN}.
    @ivar source: the client's address (L{PROXY} only).
    @ivar destination: the address the client connected to (L{PROXY} only).
    @ivar version: 1 or 2.
    @ivar length: the header's length in bytes: what follows is the client's.
    """

    command: str
    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None
    version: int
    length: int


def parse(data: bytes) -> Header | None:
    """
    The header at the start of C{data}, or None while more bytes are
    needed to tell.

    @raise BadHeader: C{data} does not start with a valid header.
    """
    if not data:
        return None
    if _V2_PREFIX.startswith(data[:len(_V2_PREFIX)]):
        return _parse_v2(data)
    if _V1_PREFIX.startswith(data[:len(_V1_PREFIX)]):
        return _parse_v1(data)
    raise BadHeader("no PROXY header")


def _parse_v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise BadHeader("v1 header too long")
        return None
    line = data[:end]
    words = line.split(b" ")
    if len(words) >= 2 and words[1] == V1Parser.UNKNOWN_PROTO:
        return Header(UNKNOWN, None, None, 1, end + 2)
    if len(words) != 6:
        raise BadHeader("v1 header without its four addresses and ports")
    try:
        info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError) as e:
        raise BadHeader(f"bad v1 header: {type(e).__name__}") from None
    version = 4 if words[1] == V1Parser.TCP4_PROTO else 6
    return Header(PROXY, _ip(info.source, version), _ip(info.destination, version), 1, end + 2)


def _parse_v2(data: bytes) -> Header | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family = data[12], data[13]
    if version_command >> 4 != 2:
        raise BadHeader("not PROXY protocol version 2")
    length = _V2_FIXED + struct.unpack("!H", data[14:16])[0]
    if len(data) < length:
        return None
    command = version_command & 0x0F
    if command == 0:
        return Header(LOCAL, None, None, 2, length)
    if command != 1:
        raise BadHeader("unknown v2 command")
    if family & 0xF0 not in (_V2_INET, _V2_INET6) or family & 0x0F not in (1, 2):
        # AF_UNSPEC, AF_UNIX, or no transport: no IP address to give.
        return Header(UNKNOWN, None, None, 2, length)
    try:
        info = V2Parser.parse(data[:length])
    except (InvalidProxyHeader, KeyError, struct.error) as e:
        raise BadHeader(f"bad v2 header: {type(e).__name__}") from None
    version = 4 if family & 0xF0 == _V2_INET else 6
    return Header(PROXY, _ip(info.source, version), _ip(info.destination, version), 2, length)


def _ip(address: object, version: int) -> IPv4Address | IPv6Address:
    """A parsed address as a TCP address, its host checked and in its
    short form."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    try:
        ip = ipaddress.ip_address(str(host))
    except ValueError:
        raise BadHeader("an address that is not an IP address") from None
    if ip.version != version or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadHeader("an address or port out of place")
    if version == 4:
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)
