"""
mbox spools (C{/var/mail/alice}) as Postfix local(8) and Exim write them
on Debian: C{--store mbox:/var/mail/%u}.

Locking, like Dovecot and qpopper:

- a POP3 session holds popgate's own lock for its whole length (the
  sequence of L{popgate.stores.base}): the in-process lock and an
  C{flock} on C{<spool>.popgate-lock} (or a file in C{lockdir=}), so a
  second session gets C{[IN-USE]} but the MTA is never kept waiting by a
  session;
- the MTA's locks (dotlock, then fcntl; see L{popgate.stores.mboxlock}) are
  taken only for a moment: while the snapshot is read at login, while a
  delivery appends, and while QUIT rewrites the spool.

The snapshot is byte offsets: mail the MTA appends during the session lies
after them, is not shown, and is copied unchanged by the rewrite.

Deleting at QUIT writes the new spool to a temporary file in the same
directory (kept messages, then everything appended since the snapshot),
fsyncs it, gives it the old file's owner and mode, renames it over the
spool and fsyncs the directory, all while holding the dotlock and the fcntl
lock.  If popgate dies at any point, the spool is either the old file or
the new one, so every message that was not deleted is there exactly once;
what it leaves behind does not hold up the next login: the dotlock names
its dead owner and is broken at once
(L{popgate.stores.mboxlockowner.stale_reason}), and the temporary file is
deleted (L{popgate.stores.mboxspool.remove_leftover_rewrite}).

The rename gives the spool a new inode; that is safe against Postfix and
Exim because both take the dotlock before they open the spool, and popgate
holds it until the new file is in place.  See docs/postfix.md.

This module is the store and its maildrop; the spool's snapshot and
rewrite are L{popgate.stores.mboxspool}, delivery L{popgate.stores.mboxappend}.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IDeliveryTarget, IMaildrop, IMailStore
from popgate.maildrop import MessageInfo
from popgate.stores import imported_uidls, mailpath
from popgate.stores.base import LockedMaildrop, LockingStore, take_flock
from popgate.stores.mboxappend import append_to_spool
from popgate.stores.mboxfile import MessageReader, NotAnMbox
from popgate.stores.mboxlock import LockSettings
from popgate.stores.mboxspool import Snapshot, read_snapshot, rewrite_spool
from popgate.stores.mboxuidl import DuplicateIds, assign_uids

log = Logger()

SESSION_LOCK_SUFFIX = ".popgate-lock"


@dataclass(frozen=True, slots=True)
class MboxSettings:
    """
    @ivar template: the spool's location, C{%u}/C{%n}/C{%d} expanded.
    @ivar lockdir: where the POP3 session lock files live (default: next
        to the spool, as C{<spool>.popgate-lock}).
    @ivar xuidl: use an C{X-UIDL:} header as the UIDL when a message has
        one (what qpopper and UW wrote), so clients keep their state.
    """

    template: str
    lockdir: str | None = None
    locks: LockSettings = field(default_factory=LockSettings)
    xuidl: bool = True


def session_lock_path(spool: str, lockdir: str | None) -> str:
    """C{<spool>.popgate-lock}, or a file named after the spool's path in
    C{lockdir}."""
    if lockdir is None:
        return spool + SESSION_LOCK_SUFFIX
    flat = spool.strip("/").replace("%", "%25").replace("/", "%2F")
    if len(flat.encode("utf-8", "surrogateescape")) > 200:
        flat = hashlib.sha1(spool.encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(lockdir, flat + SESSION_LOCK_SUFFIX)


def imported_uidls_path(spool: str, lockdir: str | None) -> str:
    """Where C{popgate uidl import} keeps the UIDLs it carried over, keyed
    by popgate's own UIDL of each message: beside the session lock."""
    return session_lock_path(spool, lockdir)[:-len(SESSION_LOCK_SUFFIX)] + \
        imported_uidls.MBOX_SUFFIX


def uidl_record_path(spool: str, lockdir: str | None) -> str:
    """Where L{DuplicateIds} keeps its record: beside the session lock."""
    return session_lock_path(spool, lockdir)[:-len(SESSION_LOCK_SUFFIX)] + ".popgate-uidl"


@implementer(IMaildrop)
class MboxMaildrop(LockedMaildrop):
    """One session's snapshot of a spool, holding popgate's session lock."""

    def __init__(self, store: MboxStore, spool: str, opened: _Opened) -> None:
        super().__init__(store, spool, opened.lock_fd)
        self._store = store
        self.spool = spool
        self._snapshot = opened.snapshot
        self._uids = opened.uids
        self._duplicates = opened.duplicates
        served = opened.served if opened.served is not None else opened.uids
        self._infos = [MessageInfo(uid, e.size)
                       for uid, e in zip(served, opened.snapshot.entries, strict=True)]

    def list_messages(self) -> list[MessageInfo]:
        return self._infos

    def open_message(self, index: int) -> MessageReader:
        if self._snapshot.fd is None:
            raise errors.PermanentFailure("maildrop closed")
        return MessageReader(self._snapshot.fd, self._snapshot.entries[index])

    def apply(self, deleted: list[int]) -> None:
        """Rewrite the spool, then retire the deleted copies' ids."""
        rewrite_spool(self.spool, self._snapshot, set(deleted), self._store.settings.locks)
        for index in deleted:
            self._duplicates.forget(self._snapshot.entries[index].digest, self._uids[index])
        self._duplicates.save()

    def release_resources(self) -> None:
        if self._snapshot.fd is not None:
            fd, self._snapshot.fd = self._snapshot.fd, None
            os.close(fd)


@dataclass(slots=True)
class _Opened:
    lock_fd: int | None
    snapshot: Snapshot
    uids: list[bytes]
    duplicates: DuplicateIds
    #: the UIDLs served, when some were imported (L{imported_uidls_path})
    served: list[bytes] | None = None


@implementer(IMailStore, IDeliveryTarget)
class MboxStore(LockingStore):
    """Spools found by a template: C{/var/mail/%u}, C{/var/mail/%d/%n}."""

    def __init__(self, settings: MboxSettings, reactor: Any) -> None:
        super().__init__(reactor)
        mailpath.check_template(settings.template)
        self.settings = settings

    def spool_for(self, user: str) -> str:
        return os.path.abspath(mailpath.expand(self.settings.template, user))

    # IMailStore

    def open_maildrop(self, avatar_id: str) -> defer.Deferred[MboxMaildrop]:
        try:
            spool = self.spool_for(avatar_id)
        except Exception:
            return defer.fail()
        return self.open_locked(spool, lambda: self._open(spool),
                                lambda opened: MboxMaildrop(self, spool, opened))

    def _open(self, spool: str) -> _Opened:
        """Take the session lock, read the snapshot.  Blocking."""
        path = session_lock_path(spool, self.settings.lockdir)
        if not os.path.isdir(os.path.dirname(path)) and not os.path.lexists(spool):
            # No spool, and nowhere to put a lock (a virtual domain's first
            # user): an empty maildrop, locked in this process only, since
            # there is nothing to delete.
            empty = Snapshot(None, 0, 0, 0, hashlib.sha1().hexdigest(), [])
            return _Opened(None, empty, [], DuplicateIds(os.devnull))
        try:
            lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise errors.TemporaryFailure(f"cannot open the session lock {path}: {e}") from e
        take_flock(lock_fd, spool, path)
        try:
            try:
                snapshot = read_snapshot(spool, self.settings.locks)
            except NotAnMbox as e:
                log.error("{spool} is not an mbox: {why}", spool=spool, why=str(e))
                raise errors.PermanentFailure(f"{spool} is not an mbox") from e
            except PermissionError as e:
                raise errors.PermanentFailure(f"cannot read {spool}: {e}") from e
            except OSError as e:
                raise errors.TemporaryFailure(f"cannot read {spool}: {e}") from e
        except BaseException:
            os.close(lock_fd)
            raise
        duplicates = DuplicateIds(uidl_record_path(spool, self.settings.lockdir))
        uids = assign_uids(snapshot.entries, self.settings.xuidl, duplicates)
        duplicates.save()
        imported = imported_uidls.read(imported_uidls_path(spool, self.settings.lockdir))
        served = None
        if imported:
            served = imported_uidls.apply([u.decode("ascii", "surrogateescape") for u in uids],
                                          uids, imported)
        return _Opened(lock_fd, snapshot, uids, duplicates, served)

    # IDeliveryTarget

    def deliver(self, user: str, message: bytes, sender: str | None = None) -> defer.Deferred[None]:
        try:
            spool = self.spool_for(user)
        except Exception:
            return defer.fail()
        owner = user if "@" not in user else None  # a system user, as in /var/mail/%u
        return self.in_thread(append_to_spool, spool, message, sender, self.settings.locks, owner)


_BOOLEAN = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse_argstring(argstring: str) -> MboxSettings:
    """
    C{TEMPLATE[,lockdir=DIR][,lock_timeout=SECONDS][,stale_lock=SECONDS]
    [,dotlock=yes|no][,xuidl=yes|no]}.

    @raise ValueError: with a one-line reason.
    """
    if not argstring:
        raise ValueError("mbox: needs a spool location, e.g. mbox:/var/mail/%u")
    first, *rest = argstring.split(",")
    template = first[len("path="):] if first.startswith("path=") else first
    values: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"mbox: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    locks: dict[str, Any] = {}
    lockdir = values.pop("lockdir", None) or None
    xuidl = True
    try:
        if "lock_timeout" in values:
            locks["timeout"] = float(values.pop("lock_timeout"))
        if "stale_lock" in values:
            locks["stale_after"] = float(values.pop("stale_lock"))
    except ValueError:
        raise ValueError("mbox: lock_timeout and stale_lock are numbers of seconds") from None
    for key in ("dotlock", "xuidl"):
        if key in values:
            text = values.pop(key).lower()
            if text not in _BOOLEAN:
                raise ValueError(f"mbox: {key} must be yes or no")
            if key == "dotlock":
                locks["dotlock"] = _BOOLEAN[text]
            else:
                xuidl = _BOOLEAN[text]
    if values:
        raise ValueError(f"mbox: unknown option {sorted(values)[0]!r} "
                         "(known: lockdir, lock_timeout, stale_lock, dotlock, xuidl)")
    mailpath.check_template(template)
    return MboxSettings(template, lockdir, LockSettings(**locks), xuidl)


def make_store(argstring: str, reactor: Any) -> MboxStore:
    """The C{mbox:TEMPLATE[,options][,shared=yes]} store plugin, on
    C{reactor}; a template without C{%u}/C{%n} needs C{shared=yes}
    (L{mailpath.check_per_user})."""
    argstring, shared = mailpath.pop_shared(argstring, "mbox")
    settings = parse_argstring(argstring)
    mailpath.check_per_user(settings.template, "mbox", shared)
    return MboxStore(settings, reactor)
