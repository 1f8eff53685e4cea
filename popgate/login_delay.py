"""
LOGIN-DELAY (RFC 2449 6.5, 8.1.1) at login: a user who logged in less than
their delay ago gets C{-ERR [LOGIN-DELAY]}.

When it is checked: after the user store accepted the credentials, before
the maildrop is opened (the realm, L{popgate.realm.MaildropRealm}).  After,
so the response code never tells a client without the password that the
user exists (RFC 2449 8.1.1's note on USER); before the open, so a client
polling too often costs a password check and a small read, never a scan of
its mailbox.

What "the previous login" is: the last I{successful} one, recorded once the
maildrop is open and the session is about to enter TRANSACTION (the RFC's
"minimum number of seconds between logins": login to login, however long
the session lasts).  A login refused for any reason -- a wrong password,
C{[IN-USE]}, C{[LOGIN-DELAY]} itself -- records nothing, so polling too
early never pushes the next allowed login further away.

The time lives in the mail store (L{popgate.interfaces.ILoginHistory},
L{popgate.stores.history}), so every C{--workers} process and every node on
the same mail sees it, and it survives restarts.  A store without one gets
no delay enforced (start-up warns).  Reading or writing it failing lets the
login through, logged: the delay spares the server, it guards nothing.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from popgate.errors import LoginDelayed
from popgate.interfaces import ILoginHistory

__all__ = ["check", "record"]

log = Logger()


async def check(history: ILoginHistory, user: str, delay: int, now: float) -> None:
    """
    @raise LoginDelayed: C{user}'s last login was less than C{delay}
        seconds before C{now}.  A last login that lies in the future
        (another node's clock ahead) counts as now, unless it is more than
        the delay ahead: a clock set wrong once must not lock the user out.
    """
    try:
        last = await defer.maybeDeferred(history.last_login, user)
    except Exception as e:
        log.warn("cannot read the last login of {user}, let in: {why}", user=user, why=e)
        return
    if last is None:
        return
    elapsed = now - last
    if abs(elapsed) < delay:
        raise LoginDelayed(delay, delay - max(elapsed, 0.0))


async def record(history: ILoginHistory, user: str, now: float) -> None:
    """Record C{user}'s successful login at C{now}; a failure is logged."""
    try:
        await defer.maybeDeferred(history.record_login, user, now)
    except Exception as e:
        log.warn("cannot record the login of {user}: {why}", user=user, why=e)
