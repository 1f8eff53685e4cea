"""
The factory for POP3 listeners: it hands every protocol its portal,
settings and clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from popgate.pop3.protocol import POP3ServerProtocol
from popgate.pop3.settings import SessionSettings


class POP3ServerFactory(ServerFactory):
    """Builds one L{POP3ServerProtocol} per connection."""

    protocol = POP3ServerProtocol

    def __init__(self, portal: Any, settings: SessionSettings | None = None, clock: Any = None,
                 throttle: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.portal = portal
        self.settings = settings or SessionSettings()
        self.clock = clock
        self.throttle = throttle

    def buildProtocol(self, addr: Any) -> POP3ServerProtocol:
        proto = self.protocol(self.portal, self.settings, self.clock)
        proto.factory = self
        proto.throttle = self.throttle
        return proto
