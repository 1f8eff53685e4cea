"""
LOGIN-DELAY and EXPIRE in a POP3 session (RFC 2449 6.5, 6.7): the CAPA
lines, the server's values the login takes to the realm, and the
retrievals EXPIRE counts.

CAPA, exactly (tags and C{NEVER} as the IANA POP3 capability registry
spells them):

  - before login, the server-wide value, followed by C{USER} when a user
    store may give users their own: C{LOGIN-DELAY 900}, C{LOGIN-DELAY 900
    USER}, C{EXPIRE 31}, C{EXPIRE 0}, C{EXPIRE NEVER}, C{EXPIRE NEVER
    USER};
  - after login, this user's value, without C{USER}: C{LOGIN-DELAY 1800}.

A line is there when the administrator configured it (C{--login-delay}
above 0, C{--expire} given, C{never} included) or a user store may set it
per user; a server configured for neither advertises neither, as before.
"""

from __future__ import annotations

from typing import Any

from popgate.expiry import Retrievals
from popgate.policy import EXPIRE, LOGIN_DELAY, NEVER, Policy, expire_text, varying_fields
from popgate.pop3.settings import SessionSettings
from popgate.stores.history import retrieval_record

__all__ = ["capabilities", "defaults", "retrievals_for", "varying"]


def defaults(settings: SessionSettings) -> Policy:
    """The server-wide values: what a user with none of their own gets."""
    return Policy(settings.login_delay, NEVER if settings.expire is None else settings.expire)


def varying(portal: Any) -> frozenset[str]:
    """The fields the portal's user stores may set per user, now."""
    return varying_fields(getattr(portal, "checkers", {}).values())


def capabilities(settings: SessionSettings, portal: Any, policy: Policy | None) -> list[bytes]:
    """
    The CAPA lines: before login (C{policy} None) the server's, with
    C{USER} where users may differ; after login C{policy}'s.
    """
    per_user = varying(portal)
    server = defaults(settings)
    lines = []
    if settings.login_delay or LOGIN_DELAY in per_user or (policy and policy.login_delay):
        if policy is None:
            lines.append(b"LOGIN-DELAY %d" % server.login_delay
                         + (b" USER" if LOGIN_DELAY in per_user else b""))
        else:
            lines.append(b"LOGIN-DELAY %d" % policy.login_delay)
    if (settings.expire is not None or EXPIRE in per_user
            or (policy is not None and policy.expire != NEVER)):
        if policy is None:
            lines.append(b"EXPIRE " + expire_text(server.expire).encode("ascii")
                         + (b" USER" if EXPIRE in per_user else b""))
        else:
            lines.append(b"EXPIRE " + expire_text(policy.expire).encode("ascii"))
    return lines


def retrievals_for(maildrop: Any, policy: Policy, settings: SessionSettings, portal: Any,
                   clock: Any) -> Retrievals | None:
    """
    What a session records of its RETRs: nothing while EXPIRE is not
    configured at all; else (even for C{NEVER}, so a later change counts
    from the real first retrieval) the maildrop's record, if its store
    keeps one.
    """
    if policy.expire == NEVER and settings.expire is None and EXPIRE not in varying(portal):
        return None
    record = retrieval_record(maildrop)
    return None if record is None else Retrievals(record, clock)
