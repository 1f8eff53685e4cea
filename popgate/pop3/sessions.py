"""
The POP3 sessions one server process has open, for C{popgate who} and
C{popgate kick} (served by L{popgate.admin.server}).

The factory adds each protocol it builds; the protocol leaves when its
connection is gone.  What is shown is read, when asked, from each
session's own report (L{popgate.pop3.session_log.SessionLog}), so a
session does no extra work for being listed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from popgate.cred.names import normalize_user

__all__ = ["SessionInfo", "SessionRegistry"]


@dataclass(frozen=True)
class SessionInfo:
    """
    One open session as C{popgate who} shows it.

    @ivar user: the account (as the user store names it) once logged in;
        else C{""}.
    @ivar tried: before login, the last user name it tried.
    @ivar since: when the connection was accepted (seconds since the epoch).
    @ivar retrieved: octets of messages sent (RETR and TOP).
    """

    user: str
    tried: str
    ip: str
    since: float
    state: str
    retrieved: int
    session: str


def _network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _ip(text: str) -> Any:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _account(protocol: Any) -> str:
    """The user a session is logged in as, or C{""}."""
    report = protocol.report
    return str(report.account) if report.logged_in_at is not None else ""


class SessionRegistry:
    """The open sessions of one process, oldest first."""

    def __init__(self) -> None:
        self._open: dict[Any, None] = {}

    def add(self, protocol: Any) -> None:
        """A protocol was built; it calls L{discard} when its connection
        is lost."""
        self._open[protocol] = None
        protocol.sessions = self

    def discard(self, protocol: Any) -> None:
        self._open.pop(protocol, None)

    def __len__(self) -> int:
        return len(self._open)

    def logged_in(self) -> int:
        """How many are logged in (the metrics' C{popgate_sessions_open})."""
        return sum(1 for p in self._open if _account(p))

    def find(self, match: str = "") -> list[SessionInfo]:
        """The sessions of a user, an address or a network (all when C{match} is empty)."""
        return [self._info(p) for p in self._matching(match)]

    def kick(self, match: str) -> int:
        """
        Close the sessions of a user or an address (or network): each gets
        C{-ERR [SYS/PERM]} and is closed (see
        L{popgate.pop3.protocol.POP3ServerProtocol.disconnect_by_admin}).

        @return: how many.
        """
        found = self._matching(match) if match else []
        for protocol in found:
            protocol.disconnect_by_admin()
        return len(found)

    def _matching(self, match: str) -> list[Any]:
        protocols = list(self._open)
        if not match:
            return protocols
        network = _network(match)
        if network is not None:
            return [p for p in protocols if (ip := _ip(p.report.rip)) is not None
                    and ip.version == network.version and ip in network]
        # Names are matched ignoring case: a kick is undone by logging in.
        user = normalize_user(match).casefold()
        return [p for p in protocols if _account(p).casefold() == user]

    @staticmethod
    def _info(protocol: Any) -> SessionInfo:
        report = protocol.report
        account = _account(protocol)
        return SessionInfo(user=account, tried="" if account else report.user,
                           ip=report.rip, since=report.connected_at, state=protocol.state,
                           retrieved=report.retr_bytes + report.top_bytes,
                           session=report.session)
