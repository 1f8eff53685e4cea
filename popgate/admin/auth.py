"""
C{popgate auth test [server options] USER [PASSWORD]} and C{popgate auth
lookup [server options] USER}: the configured user stores, asked as the
server asks them.

C{auth test} checks the password with the checker the server's portal
holds for passwords (the same chain of user stores, in C{--auth} order,
without the auth cache or the login penalty) and shows the name the
session would get and where its mail is.  It opens no maildrop, so it
locks nothing and creates no Maildir.

C{auth lookup} asks each user store that can look users up without a
password (L{IUserLookup}: htpasswd and passwd-file tell whether the user
exists, LDAP and SQL also where the mail is) and then resolves the name
as LMTP delivery and C{popgate deliver} do.

Exit status: 0 found (or logged in), 1 refused or unknown, 2 a user store
could not answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from popgate.cred.userinfo import AvatarId
from popgate.delivery.users import UserResolver, candidate_names
from popgate.errors import UnknownUser
from popgate.interfaces import IUserLookup
from popgate.probes import label, one_line
from popgate.realm import avatar_name

__all__ = ["EX_ERROR", "EX_OK", "EX_REFUSED", "auth_lookup", "auth_test", "mail_location"]

EX_OK, EX_REFUSED, EX_ERROR = 0, 1, 2

Write = Callable[[str], Any]


def mail_location(store: Any, user: str) -> str:
    """Where C{user}'s mail is, and who said so, as the store finds it."""
    for method, kind in (("maildir_for", "maildir"), ("spool_for", "mbox")):
        find = getattr(store, method, None)
        if find is None:
            continue
        try:
            path = find(user)
        except Exception as e:
            return f"unusable: {one_line(e)}"
        given = method == "maildir_for" and getattr(user, "mail_location", None)
        return f"{kind}:{path} ({'from the user store' if given else 'the --store template'})"
    return f"chosen by the {type(store).__name__} store"


async def auth_test(portal: Any, store: Any, user: str, password: str, write: Write) -> int:
    """Log C{user} in with C{password}, as a USER/PASS login would."""
    checker = portal.checkers.get(IUsernamePassword)
    if checker is None:
        write(f"{user}: no user store takes passwords\n")
        return EX_ERROR
    credentials = UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))
    try:
        avatar = await defer.maybeDeferred(checker.requestAvatarId, credentials)
    except UnknownUser:
        write(f"{user}: authentication failed: unknown user\n")
        return EX_REFUSED
    except UnauthorizedLogin:
        write(f"{user}: authentication failed: wrong password (or unknown user)\n")
        return EX_REFUSED
    except Exception as e:
        write(f"{user}: the user store could not answer: {one_line(e) or type(e).__name__}\n")
        return EX_ERROR
    name = avatar_name(avatar)
    location = getattr(avatar, "mail_location", None)
    write(f"{user}: authentication succeeded\n"
          f"  user: {name}\n"
          f"  mail: {mail_location(store, AvatarId(name, location))}\n")
    return EX_OK


async def _ask(checker: Any, user: str) -> str:
    """One user store's answer about C{user} (tried under each name
    delivery tries: L{candidate_names}), as a line's end."""
    if not IUserLookup.providedBy(checker):
        return "cannot tell without a password (it does not provide IUserLookup)"
    for name in candidate_names(user):
        try:
            info = await defer.maybeDeferred(checker.lookup_user, name)
        except Exception as e:
            return f"could not answer: {one_line(e) or type(e).__name__}"
        if info is not None:
            where = (f", mail location {info.mail_location}" if info.mail_location
                     else " (it holds no mail location)")
            return f"exists as {info.name}{where}"
    return "no such user"


async def auth_lookup(descriptions: Sequence[str], checkers: Sequence[Any], store: Any,
                      user: str, write: Write) -> int:
    """What each user store knows of C{user}, then the name delivery uses."""
    for description, checker in zip(descriptions, checkers, strict=True):
        write(f"{label(description)}: {await _ask(checker, user)}\n")
    resolver = UserResolver.from_checkers(checkers)
    if resolver.accepts_anyone:
        write(f"{user}: no user store can look users up: delivery accepts any recipient\n")
    try:
        name = await resolver.resolve(user)
    except Exception as e:
        write(f"{user}: cannot tell: {one_line(e)}\n")
        return EX_ERROR
    if name is None:
        write(f"{user}: unknown user\n")
        return EX_REFUSED
    write(f"{user}: user {name}\n  mail: {mail_location(store, name)}\n")
    return EX_OK
