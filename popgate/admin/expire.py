"""
C{popgate expire [--dry-run] [server options] (--all | USER...)}: EXPIRE
for mailboxes nobody polls.

A session applies EXPIRE when it QUITs (L{popgate.expiry}); a mailbox whose
client stopped polling would keep its retrieved mail for ever.  This
command applies the same rule now: each user's EXPIRE as the user stores
give it (their own field, else C{--expire}), the maildrop opened as a
session opens it (locked: a mailbox in use is skipped and left to its
session), the messages retrieved that long ago removed as a QUIT removes
them, the retrieval record written back pruned.  C{--all} takes every
mailbox the store's template finds (Maildir, mbox); C{--dry-run} opens,
counts and changes nothing.  One line per user, then a total:

  alice@example.org: 3 of 12 messages expired (45210 octets), EXPIRE 30
  bob@example.org: 1 of 4 messages would expire (1200 octets), EXPIRE 0
  carol@example.org: skipped: in use by a POP3 session

Exit status: 0 done (skipped mailboxes included: in use, unknown user, no
mailbox, EXPIRE NEVER), 1 a mailbox or a user store failed, 2 usage.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python import usage

from popgate import errors, tap
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.expiry import Retrievals
from popgate.interfaces import IUserLookup
from popgate.plural import plural
from popgate.policy import NEVER, Policy, expire_text, for_user, parse_expire
from popgate.probes import one_line
from popgate.realm import avatar_name, ready_maildrop
from popgate.stores.history import retrieval_record

__all__ = ["ExpireOptions", "expire_mailboxes", "template_users"]

EX_OK, EX_FAILED = 0, 1
Write = Callable[[str], Any]


class ExpireOptions(tap.Options):
    """The server's options, C{--dry-run}, C{--all}, then the users."""

    synopsis = "[--dry-run] [server options] (--all | USER...)"
    optFlags = [["dry-run", None, "count what would expire; change nothing"],
                ["all", None, "every mailbox the --store template finds"]]

    def __init__(self) -> None:
        super().__init__()
        self.users: list[str] = []

    def parseArgs(self, *users: str) -> None:
        self.users = list(users)

    def postOptions(self) -> None:
        super().postOptions()
        if bool(self.users) == bool(self["all"]):
            raise usage.UsageError("name the users, or give --all")


def template_users(template: str, mbox: bool = False) -> list[str]:
    """
    The users whose mailboxes exist at expansions of C{template}: the
    template globbed with each placeholder a wildcard, each path read back
    (C{%u}, else C{%n}@C{%d}, else C{%n}).  Maildirs must have C{cur/} or
    C{new/}; for mbox spools, popgate's and the MTA's files beside them
    (C{.lock}, C{.popgate-*}) are not spools.  Blocking.
    """
    pattern, expression, groups = "", "", set()
    for piece in re.split(r"(%.)", template):
        if piece in ("%u", "%n", "%d"):
            name = piece[1]
            pattern += "*"
            expression += f"(?P={name})" if name in groups else f"(?P<{name}>[^/]+)"
            groups.add(name)
        elif piece == "%%":
            pattern, expression = pattern + "%", expression + "%"
        else:
            pattern, expression = pattern + glob.escape(piece), expression + re.escape(piece)
    found = []
    for path in sorted(glob.glob(pattern)):
        match = re.fullmatch(expression, path)
        if match is None:
            continue
        parts = match.groupdict()
        if any(value.startswith(".") for value in parts.values()):
            continue
        if mbox:
            base = os.path.basename(path)
            if base.endswith(".lock") or ".popgate-" in base or not os.path.isfile(path):
                continue
        elif not (os.path.isdir(os.path.join(path, "cur"))
                  or os.path.isdir(os.path.join(path, "new"))):
            continue
        if "u" in parts:
            user = parts["u"]
        else:
            user = parts.get("n", "")
            if parts.get("d"):
                user = f"{user}@{parts['d']}"
        if user and user not in found:
            found.append(user)
    return found


def store_users(store: Any) -> list[str]:
    """L{template_users} for a Maildir or mbox store.  Blocking.

    @raise usage.UsageError: a store without a template to search."""
    template = getattr(store, "template", None)
    if template is not None:
        return template_users(template)
    settings = getattr(store, "settings", None)
    if getattr(store, "spool_for", None) is not None and settings is not None:
        return template_users(settings.template, mbox=True)
    raise usage.UsageError(f"--all: the {type(store).__name__} has no mailbox template to "
                           "search: name the users")


def _mailbox_exists(store: Any, user: str) -> bool:
    """Whether C{user} has a mailbox (so that expiring never creates one)."""
    maildir_for = getattr(store, "maildir_for", None)
    if maildir_for is not None:
        return os.path.isdir(maildir_for(user))
    spool_for = getattr(store, "spool_for", None)
    if spool_for is not None:
        return os.path.lexists(spool_for(user))
    return True


async def _look_up(checkers: Sequence[Any], user: str) -> UserInfo | None:
    """The first answer of the user stores that can look users up."""
    lookups = [c for c in checkers if IUserLookup.providedBy(c)]
    if not lookups:
        return UserInfo(user)  # nobody to ask: the name as found, the server's EXPIRE
    for checker in lookups:
        info: UserInfo | None = await defer.maybeDeferred(checker.lookup_user, user)
        if info is not None:
            return info
    return None


async def _expire_one(store: Any, checkers: Sequence[Any], user: str, server: Policy,
                      dry_run: bool, reactor: Any, write: Write) -> tuple[int, int, bool]:
    """One user's line; (messages expired, their octets, whether it failed)."""
    try:
        info = await _look_up(checkers, user)
    except Exception as e:
        write(f"{user}: failed: the user store could not answer: {one_line(e)}\n")
        return 0, 0, True
    if info is None:
        write(f"{user}: skipped: unknown user\n")
        return 0, 0, False
    avatar = avatar_name(AvatarId(info.name, info.mail_location, info.policy))
    days = for_user(avatar, server).expire
    if days == NEVER:
        write(f"{user}: EXPIRE NEVER, nothing expires\n")
        return 0, 0, False
    try:
        if not _mailbox_exists(store, avatar):
            write(f"{user}: skipped: no mailbox\n")
            return 0, 0, False
        maildrop = await ready_maildrop(
            await defer.maybeDeferred(store.open_maildrop, avatar), reactor)
    except errors.MaildropInUse:
        write(f"{user}: skipped: in use by a POP3 session\n")
        return 0, 0, False
    except Exception as e:
        write(f"{user}: failed: {one_line(e) or type(e).__name__}\n")
        return 0, 0, True
    try:
        record = retrieval_record(maildrop)
        if record is None:
            write(f"{user}: skipped: the {type(store).__name__} keeps no retrieval record\n")
            return 0, 0, False
        retrievals = Retrievals(record, reactor)
        gone = await retrievals.expire([], days, save=False)
        messages = maildrop.list_messages()
        octets = sum(messages[i].size for i in gone)
        if not dry_run:
            await record.save(retrievals.times)  # pruned to what is still there
            if gone:
                await defer.maybeDeferred(maildrop.commit, gone)
    except Exception as e:
        write(f"{user}: failed: {one_line(e) or type(e).__name__}\n")
        return 0, 0, True
    finally:
        await defer.maybeDeferred(maildrop.close)
    verb = "would expire" if dry_run else "expired"
    write(f"{user}: {len(gone)} of {plural(len(messages), 'message')} {verb} "
          f"({octets} octets), EXPIRE {expire_text(days)}\n")
    return len(gone), octets, False


async def expire_mailboxes(store: Any, checkers: Sequence[Any], users: Sequence[str],
                           expire: str | None, dry_run: bool, reactor: Any,
                           write: Write) -> int:
    """
    Expire the mailboxes of C{users}, one after the other (each holds its
    lock only while it is done).

    @param expire: the server's C{--expire} (C{None}: never, unless a user
        store says otherwise for a user).
    """
    server = Policy(expire=NEVER if expire is None else parse_expire(expire))
    count = octets = 0
    failed = False
    for user in users:
        n, size, bad = await _expire_one(store, checkers, user, server, dry_run, reactor, write)
        count, octets, failed = count + n, octets + size, failed or bad
    verb = "would expire" if dry_run else "expired"
    write(f"total: {plural(count, 'message')} {verb} ({octets} octets) in "
          f"{plural(len(users), 'mailbox', 'mailboxes')}\n")
    return EX_FAILED if failed else EX_OK
