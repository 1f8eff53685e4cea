"""
Listening on a TCP port that several processes share (C{SO_REUSEPORT}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.python import usage

from popgate.eager_writes import eager_writes


def parse_tcp_endpoint(description: str) -> tuple[socket.AddressFamily, str, int, int]:
    """
    (family, interface, port, backlog) of a C{tcp:}/C{tcp6:} endpoint
    string, the only kinds that can be shared with C{SO_REUSEPORT}.

    @raise usage.UsageError: for any other kind of endpoint.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise usage.UsageError(f"--workers needs tcp: or tcp6: listeners, not {description!r}")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = "::" if kind == "tcp6" else "0.0.0.0"
    port: int | None = None
    backlog = 511
    # Endpoint strings escape colons with backslashes (tcp6 addresses).
    parts = rest.replace("\\:", "\0").split(":")
    for part in parts:
        part = part.replace("\0", ":")
        key, eq, value = part.partition("=")
        try:
            if not eq and port is None:
                port = int(key)
            elif key == "port":
                port = int(value)
            elif key == "interface":
                interface = value
            elif key == "backlog":
                backlog = int(value)
            else:
                raise ValueError(part)
        except ValueError:
            raise usage.UsageError(
                f"cannot share endpoint {description!r} between workers") from None
    if port is None:
        raise usage.UsageError(f"endpoint {description!r} has no port")
    return family, interface, port, backlog


def check_shareable(description: str) -> None:
    """
    Refuse a listener the C{--workers} processes cannot share: a
    C{tcp:}/C{tcp6:} endpoint, also behind C{haproxy:} (each worker wraps
    its own socket for the PROXY header), is all they can.

    @raise usage.UsageError: naming the listener.
    """
    inner = description.removeprefix("haproxy:")
    if inner.partition(":")[0] not in ("tcp", "tcp6"):
        raise usage.UsageError("--workers needs tcp: or tcp6: listeners (haproxy:tcp: and "
                               f"haproxy:tcp6: too), not {description!r}")
    parse_tcp_endpoint(inner)


def listen_reuseport(reactor: Any, description: str, factory: Any) -> Any:
    """Listen on C{description} with C{SO_REUSEPORT}; returns the port."""
    family, interface, port, backlog = parse_tcp_endpoint(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        return eager_writes(reactor.adoptStreamPort(sock.fileno(), family, factory))
    finally:
        sock.close()  # the reactor holds its own duplicate


class ReusePortListener(service.Service):
    """One shared listener: fails start-up if the port cannot be bound."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        #: Called with the listening port (popgate.limits watches it).
        self.on_port: Callable[[Any], None] | None = None

    def _listen(self) -> Any:
        port = listen_reuseport(self.reactor, self.description, self.factory)
        if self.on_port is not None:
            self.on_port(port)
        return port

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges (port 110 needs root).
        self.port = self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.port = self._listen()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
