"""
LOGIN-DELAY and EXPIRE (RFC 2449 sections 6.5 and 6.7): the server-wide
values (C{--login-delay}, C{--expire}), the values a user store holds for
one user (an LDAP attribute, a SQL column, a passwd-file field), and which
one a session gets.

A user's own value replaces the server's; a value a user store gives that
does not parse is logged and ignored (the server's applies), so one bad
entry never locks a user out.  Only the store's answer at login counts:
the auth cache (C{--auth-cache-ttl}) keeps it as long as the login.

Nothing here does I/O or imports anything heavy: the user stores, the
realm and the protocol all use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from popgate.interfaces import IPerUserPolicy

__all__ = ["DAY", "FIELDS", "NEVER", "Policy", "UserPolicy", "expire_text", "for_user",
           "parse_expire", "parse_login_delay", "user_policy", "varying_fields"]

#: EXPIRE NEVER: retrieved mail is kept for ever.
NEVER = math.inf
DAY = 86400.0
#: The per-user fields, as a user store names them.
LOGIN_DELAY, EXPIRE = "login_delay", "expire"
FIELDS = (LOGIN_DELAY, EXPIRE)
#: A bound that keeps CAPA lines short and arithmetic exact (68 years).
_MAX = 2**31 - 1


@dataclass(frozen=True)
class Policy:
    """
    What one session enforces.

    @ivar login_delay: the least seconds between two logins of the user
        (0: any).
    @ivar expire: the days a retrieved message is kept; 0 removes it at
        the end of the session that retrieved it; L{NEVER}.
    """

    login_delay: int = 0
    expire: float = NEVER


@dataclass(frozen=True)
class UserPolicy:
    """A user's own values, as a user store gives them (C{None}: not set)."""

    login_delay: int | None = None
    expire: float | None = None

    def over(self, defaults: Policy) -> Policy:
        """The session's policy: these values where set, else C{defaults}."""
        return Policy(defaults.login_delay if self.login_delay is None else self.login_delay,
                      defaults.expire if self.expire is None else self.expire)


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, not {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"must be {what}, not {str(value)[:40]!r}")
        number = int(text)
    if not 0 <= number <= _MAX:
        raise ValueError(f"must be at most {_MAX}, not {number}")
    return number


def parse_login_delay(value: Any) -> int:
    """
    C{900} or C{"900"}: seconds.

    @raise ValueError: anything else, with a one-line reason.
    """
    return _whole(value, "a whole number of seconds")


def parse_expire(value: Any) -> float:
    """
    C{31} or C{"31"}: days; C{"never"} (any case): L{NEVER}.

    @raise ValueError: anything else, with a one-line reason.
    """
    if isinstance(value, str) and value.strip().lower() == "never":
        return NEVER
    return float(_whole(value, "a whole number of days, or never"))


def expire_text(days: float) -> str:
    """How CAPA says it: C{NEVER}, or the days."""
    return "NEVER" if days == NEVER else str(int(days))


def user_policy(login_delay: Any, expire: Any, user: str, log: Any) -> UserPolicy | None:
    """
    The policy of C{user} from the raw values a user store holds (C{None}
    or empty: not set).  A value that does not parse is logged (at warn,
    on C{log}) and left unset.

    @return: C{None} when neither is set.
    """
    values: dict[str, Any] = {}
    for field, raw, parse in ((LOGIN_DELAY, login_delay, parse_login_delay),
                              (EXPIRE, expire, parse_expire)):
        if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
            continue
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            values[field] = parse(raw)
        except ValueError as e:
            log.warn("ignoring the {field} of user {user!r}: {why}", field=field, user=user,
                     why=str(e))
    return UserPolicy(**values) if values else None


def varying_fields(checkers: Iterable[Any]) -> frozenset[str]:
    """
    Which of L{FIELDS} the user stores among C{checkers} (a portal's
    checkers, through the auth cache and chains) may set per user, as
    they know it now: what CAPA's C{USER} suffix says before login.
    Asks each L{popgate.interfaces.IPerUserPolicy}; does no I/O.
    """
    found: set[str] = set()
    pending = list(checkers)
    seen: set[int] = set()
    while pending and len(seen) < 1000:
        checker = pending.pop()
        if id(checker) in seen:
            continue
        seen.add(id(checker))
        if IPerUserPolicy.providedBy(checker):
            found.update(checker.policy_fields())
        pending.extend(getattr(checker, "checkers", ()) or ())
        wrapped = getattr(checker, "wrapped", None)
        if wrapped is not None:
            pending.append(wrapped)
    return frozenset(found)


def for_user(avatar_id: object, defaults: Policy | None) -> Policy:
    """The policy of a session logged in as C{avatar_id} (an
    L{popgate.cred.userinfo.AvatarId} may carry the user's own values)
    on a server whose values are C{defaults} (none: no delay, never)."""
    defaults = Policy() if defaults is None else defaults
    own: UserPolicy | None = getattr(avatar_id, "policy", None)
    return defaults if own is None else own.over(defaults)
