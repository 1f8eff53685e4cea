"""
The endpoint string and factory a listener listens with: the backlog
(511, or C{somaxconn} if lower) unless the string gives one, and the PROXY
header wrapper for C{haproxy:}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from popgate.addresses import Network
from popgate.proxy_protocol import DEFAULT_TRUSTED, ProxyHeaderFactory

#: Twisted's endpoints default to 50, which drops connections in a burst.
DEFAULT_BACKLOG = 511


def listen_backlog(somaxconn: str = "/proc/sys/net/core/somaxconn") -> int:
    """L{DEFAULT_BACKLOG}, or the kernel's C{somaxconn} when lower (the
    kernel caps the backlog there anyway)."""
    try:
        with open(somaxconn) as f:
            return max(1, min(DEFAULT_BACKLOG, int(f.read().strip())))
    except (OSError, ValueError):
        return DEFAULT_BACKLOG


def _split_endpoint(description: str) -> list[str]:
    """C{description} cut at its unescaped colons (escapes kept)."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def with_backlog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=} added when it is a C{tcp:}/C{tcp6:}
    endpoint (also behind C{haproxy:}) that gives none.
    """
    parts = _split_endpoint(description)
    kinds = parts[1:2] if parts[0] == "haproxy" else parts[:1]
    if kinds not in (["tcp"], ["tcp6"]) or description.endswith("\\"):
        return description
    if any(part.startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


def prepare_listener(description: str, factory: Any, clock: Any,
                     trusted: Sequence[Network] = DEFAULT_TRUSTED) -> tuple[str, Any]:
    """
    The endpoint string and factory to listen with: the backlog added
    (L{with_backlog}), and for C{haproxy:} the inner endpoint with a
    factory that builds the session once the PROXY header is read (see
    L{popgate.proxy_protocol}), so limits and greeting see the real client,
    and that takes connections only from the C{trusted} proxies.  With
    C{--workers}, each process wraps its own C{SO_REUSEPORT} socket so.
    """
    description = with_backlog(description, listen_backlog())
    if description.startswith("haproxy:"):
        return description[len("haproxy:"):], ProxyHeaderFactory(factory, clock,
                                                                  trusted=trusted)
    return description, factory
