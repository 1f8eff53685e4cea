"""
The admin socket's protocol: Twisted AMP commands, shared by the server
(L{popgate.admin.server}) and C{popgate who}/C{popgate kick}
(L{popgate.admin.client}).

An AMP value holds at most 64 KiB, so L{Who} answers with at most
L{MAX_LISTED} sessions (and how many match): a server with thousands of
sessions is filtered by user or address, not listed whole.
"""

from __future__ import annotations

from twisted.protocols import amp

__all__ = ["MAX_LISTED", "MAX_TEXT", "Kick", "Who"]

#: Sessions one Who answer lists at most.
MAX_LISTED = 100
#: Characters of a user name a Who answer carries at most.
MAX_TEXT = 200


class Who(amp.Command):
    """The open sessions matching C{match} (a user, an address or a
    network; empty: all), oldest first."""

    arguments = [(b"match", amp.Unicode())]
    response = [
        (b"sessions", amp.AmpList([
            (b"user", amp.Unicode()),
            (b"tried", amp.Unicode()),
            (b"ip", amp.Unicode()),
            (b"since", amp.Float()),
            (b"state", amp.Unicode()),
            (b"retrieved", amp.Integer()),
            (b"session", amp.Unicode()),
        ])),
        (b"total", amp.Integer()),
        (b"pid", amp.Integer()),
    ]


class Kick(amp.Command):
    """Close the sessions of a user, an address or a network."""

    arguments = [(b"match", amp.Unicode())]
    response = [(b"kicked", amp.Integer()), (b"pid", amp.Integer())]
