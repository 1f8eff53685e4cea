"""
The C{imap:} mail store: a user's maildrop is the INBOX of their mailbox
on an upstream IMAP4rev1 server, served through popgate's maildrop
interface as C{proxy:} serves a POP3 upstream's (docs/gateway.md, "POP3
in front of an IMAP server").

At open popgate logs in upstream (L{popgate.stores.imap_connect}),
C{EXAMINE}s the INBOX (read-only: nothing this session does changes it
until QUIT commits deletions) and takes the snapshot with one
C{UID FETCH 1:* (RFC822.SIZE)}.  A message's UIDL is
C{UIDVALIDITY.UID}: the pair is what IMAP promises never to reuse for
another message (RFC 3501 2.3.1.1), so it is stable across sessions for
as long as the server keeps the UIDVALIDITY; when the server changes it
every UID is void, and so every UIDL changes (clients download again).

RETR streams C{UID FETCH uid (BODY.PEEK[])} (C{PEEK}: no C{\\Seen});
TOP fetches C{BODY.PEEK[]<offset.length>} windows until popgate's
encoder has the header and its lines, so a TOP of a huge message reads
about one window past them.  QUIT with deletions C{SELECT}s the INBOX
(same UIDVALIDITY, or nothing is deleted), sets C{\\Deleted} on exactly
the marked UIDs and expunges exactly those with C{UID EXPUNGE}
(UIDPLUS); without UIDPLUS it expunges only when no other message carries
C{\\Deleted} (a plain EXPUNGE would remove those too).  popgate's client
gets C{+OK} once the upstream said C{OK} to the expunge.  A session that
ends without QUIT only logs out: nothing was changed upstream.

Who checks the password is as for C{proxy:} (L{popgate.stores.proxy_auth}):
the upstream (no C{--auth}), or popgate's user stores and then the
upstream is logged in to with the same password or as a master user
(AUTHENTICATE PLAIN, the user as authorization identity).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IAuthenticatingStore, IMailStore, IReachable, ITopMaildrop
from popgate.maildrop import MessageInfo
from popgate.routes.source import RouteSource
from popgate.stores.imap_connect import connect, log_in
from popgate.stores.imap_upstream import ImapError, ImapProtocol, MessageGone
from popgate.stores.pop3_upstream import UpstreamUnavailable
from popgate.stores.proxy_auth import (
    forwarded_password,
)
from popgate.stores.proxy_settings import Upstream
from popgate.stores.proxy_source import StreamedMessage
from popgate.stores.upstream_store import UpstreamStore, make_upstream_store

__all__ = ["ImapMaildrop", "ImapStore", "make_store", "uid_sets"]

log = Logger()

#: TOP's first window; each next one is twice as large, up to the last.
TOP_WINDOWS = (64 * 1024, 1024 * 1024)
#: A UID set in one command is at most about this long (servers limit
#: their command lines; Dovecot to 64 KiB).
MAX_SET = 4000

_FETCH = re.compile(rb"^(\d+) FETCH \((.*)\)$", re.IGNORECASE | re.DOTALL)
_UID = re.compile(rb"(?:^|[ (])UID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"(?:^|[ (])RFC822\.SIZE (\d+)", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"^OK \[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_EXISTS = re.compile(rb"^(\d+) EXISTS$", re.IGNORECASE)


def make_store(argstring: str, reactor: Any, route: RouteSource | None = None) -> ImapStore:
    """
    @param route: the C{--route} source, if any; C{upstream=} is then the
        upstream of users it has no route for.
    """
    return make_upstream_store(ImapStore, "imap", argstring, reactor, route)


def uid_sets(uids: Iterable[int]) -> list[bytes]:
    """C{uids} as IMAP sets (C{1:3,7}), each at most about L{MAX_SET}
    octets."""
    ordered = sorted(set(uids))
    ranges: list[bytes] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(b"%d" % ordered[i] if i == j else b"%d:%d" % (ordered[i], ordered[j]))
        i = j + 1
    sets: list[bytes] = []
    current: list[bytes] = []
    length = 0
    for item in ranges:
        if current and length + len(item) > MAX_SET:
            sets.append(b",".join(current))
            current, length = [], 0
        current.append(item)
        length += len(item) + 1
    if current:
        sets.append(b",".join(current))
    return sets


@implementer(IMailStore, IAuthenticatingStore, IReachable)
class ImapStore(UpstreamStore):
    """Each user's INBOX on an upstream IMAP server (L{UpstreamStore}:
    which one, who checks the password)."""

    kind = "imap"

    async def connect_and_log_in(self, upstream: Upstream, user: bytes,
                                 password: bytes) -> ImapProtocol:
        return await log_in(self.reactor, self.settings, upstream, user, password)

    async def greet(self, upstream: Upstream) -> None:
        """Connect (the greeting and the capabilities), LOGOUT."""
        connection = await connect(self.reactor, self.settings, upstream)
        try:
            await connection.command(b"LOGOUT")
        finally:
            connection.close()

    # -- IMailStore

    def maildrop(self, connection: Any, name: str) -> ImapMaildrop:
        return ImapMaildrop(connection, name)

    async def log_in_for(self, avatar_id: str) -> ImapProtocol:
        """Local authentication: popgate's user stores said yes; log in
        upstream as a master user for the user, or with the password the
        client gave."""
        name = str(avatar_id)
        settings = self.settings
        upstream = await self.route(name)
        if settings.master_user and settings.master_password:
            return await log_in(self.reactor, settings, upstream, settings.master_user.encode(),
                                settings.master_password, authzid=name.encode())
        found = forwarded_password(avatar_id)
        if found is None:
            raise errors.PermanentFailure(
                "imap: no password to log in upstream with (give master_user=, or a "
                "user store that checks passwords)")
        return await log_in(self.reactor, settings, upstream, name.encode(), found)


def _upstream_failure(what: str, error: Exception) -> Exception:
    if isinstance(error, UpstreamUnavailable):
        return error
    return errors.TemporaryFailure(f"upstream refused {what}: {error}")


@implementer(ITopMaildrop)
class ImapMaildrop:
    """
    One user's INBOX upstream, on the connection logged in for this
    session.  Message C{i} of the snapshot is upstream UID C{uids[i]}.
    """

    def __init__(self, connection: ImapProtocol, name: str) -> None:
        self.connection = connection
        self.name = name
        self.uidvalidity = 0
        self.uids: list[int] = []
        self._messages: list[MessageInfo] = []
        self._done = False

    async def load(self) -> None:
        """EXAMINE INBOX, then the UIDs and sizes of what it holds."""
        try:
            reply = await self.connection.command(b"EXAMINE INBOX")
        except ImapError as e:
            raise errors.PermanentFailure(f"upstream refused EXAMINE INBOX: {e}") from None
        uidvalidity, exists = _mailbox_state(reply.untagged)
        if uidvalidity is None:
            raise errors.PermanentFailure("upstream gave no UIDVALIDITY for INBOX")
        self.uidvalidity = uidvalidity
        if not exists:
            return  # no "1:*" on an empty mailbox: nothing to fetch
        found: dict[int, int] = {}  # uid -> size

        def fetched(line: bytes) -> None:
            match = _FETCH.match(line)
            if match is None:
                return  # EXISTS, RECENT, ...: the snapshot is what FETCH lists
            uid, size = _UID.search(match.group(2)), _SIZE.search(match.group(2))
            if uid is not None and size is not None:
                found[int(uid.group(1))] = int(size.group(1))

        try:
            await self.connection.command(b"UID FETCH 1:* (RFC822.SIZE)", untagged=fetched)
        except ImapError as e:
            raise errors.PermanentFailure(f"upstream refused UID FETCH: {e}") from None
        for uid in sorted(found):
            self.uids.append(uid)
            self._messages.append(MessageInfo.unchecked(b"%d.%d" % (uidvalidity, uid),
                                                        found[uid]))

    def list_messages(self) -> Sequence[MessageInfo]:
        return self._messages

    def open_message(self, index: int) -> defer.Deferred[StreamedMessage]:
        source = StreamedMessage(self.connection)
        uid, size = self.uids[index], self._messages[index].size

        def started(literal: int) -> StreamedMessage:
            if literal != size:
                log.warn("upstream IMAP server: UID {uid} of {user} is {literal} octets, "
                         "RFC822.SIZE said {size}", uid=uid, user=self.name, literal=literal,
                         size=size)
            return source

        d: defer.Deferred[Any] = self.connection.stream(b"UID FETCH %d (BODY.PEEK[])" % uid,
                                                        source)
        d.addCallbacks(started, self._refused, errbackArgs=(uid,))
        return d

    def open_top(self, index: int, lines: int) -> defer.Deferred[StreamedMessage]:
        windows = _Windows(self.connection, self.uids[index], self._messages[index].size)
        source = windows.message
        d: defer.Deferred[Any] = windows.fetch()
        d.addCallbacks(lambda _: source, self._refused, errbackArgs=(self.uids[index],))
        return d

    @staticmethod
    def _refused(failure: Failure, uid: int) -> Any:
        error = failure.value
        if failure.check(MessageGone):
            raise errors.PermanentFailure(f"UID {uid} was removed upstream since the login")
        if failure.check(ImapError):
            raise errors.PermanentFailure(f"upstream refused UID FETCH {uid}: {error}")
        return failure

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._commit(sorted(deleted)))

    async def _commit(self, deleted: list[int]) -> None:
        """Delete and expunge exactly the marked UIDs; popgate's client
        gets C{+OK} once the upstream confirmed.  Anything refused: the
        flags set are taken back (as far as the connection lets), nothing
        is expunged, and popgate's client hears C{[SYS/TEMP]}."""
        self._done = True
        connection = self.connection
        if not deleted:
            self._log_out()
            return
        uids = [self.uids[i] for i in deleted]
        sets = uid_sets(uids)
        stored: list[bytes] = []
        try:
            reply = await _step(connection.command(b"SELECT INBOX"), "SELECT INBOX")
            uidvalidity, _ = _mailbox_state(reply.untagged)
            if uidvalidity != self.uidvalidity:
                raise errors.TemporaryFailure(
                    f"INBOX's UIDVALIDITY changed ({self.uidvalidity} -> {uidvalidity}): "
                    "the UIDs of the snapshot are void")
            uidplus = b"UIDPLUS" in connection.capabilities
            if not uidplus:
                await self._check_no_other_deleted(set(uids))
            for uid_set in sets:
                await _step(connection.command(b"UID STORE %s +FLAGS.SILENT (\\Deleted)"
                                               % uid_set), "UID STORE")
                stored.append(uid_set)
            if uidplus:
                for uid_set in sets:
                    await _step(connection.command(b"UID EXPUNGE " + uid_set), "UID EXPUNGE")
            else:
                await _step(connection.command(b"EXPUNGE"), "EXPUNGE")
        except (errors.TemporaryFailure, errors.PermanentFailure):
            self._take_back(stored)
            raise
        self._log_out()

    async def _check_no_other_deleted(self, ours: set[int]) -> None:
        """Without UIDPLUS, EXPUNGE removes every C{\\Deleted} message: refuse
        when one that popgate's client did not delete carries the flag."""
        reply = await _step(self.connection.command(b"UID SEARCH DELETED"), "UID SEARCH")
        flagged = {int(word) for line in reply.untagged if line.upper().startswith(b"SEARCH")
                   for word in line.split()[1:] if word.isdigit()}
        others = flagged - ours
        if others:
            raise errors.TemporaryFailure(
                f"the upstream has no UIDPLUS and {len(others)} other message(s) in INBOX "
                "carry \\Deleted: an EXPUNGE would remove them too; nothing deleted")

    def _take_back(self, stored: list[bytes]) -> None:
        connection = self.connection
        for uid_set in stored:
            connection.command(b"UID STORE %s -FLAGS.SILENT (\\Deleted)" % uid_set) \
                .addErrback(lambda _: None)
        self._log_out()

    def _log_out(self) -> None:
        connection = self.connection
        if connection.lost is not None:
            return
        connection.command(b"LOGOUT").addBoth(lambda _: connection.close())

    def close(self) -> None:
        """The session ended without QUIT: nothing was changed upstream
        (EXAMINE); an idle connection logs out, one mid-reply is dropped."""
        if self._done:
            return
        self._done = True
        if self.connection.idle:
            self._log_out()
        else:
            self.connection.abort("the session ended without QUIT")


async def _step(d: defer.Deferred[Any], what: str) -> Any:
    try:
        return await d
    except ImapError as e:
        raise _upstream_failure(what, e) from None


def _mailbox_state(untagged: list[bytes]) -> tuple[int | None, int]:
    """UIDVALIDITY and EXISTS from a SELECT's or EXAMINE's responses."""
    uidvalidity, exists = None, 0
    for line in untagged:
        match = _UIDVALIDITY.match(line)
        if match:
            uidvalidity = int(match.group(1))
        match = _EXISTS.match(line)
        if match:
            exists = int(match.group(1))
    return uidvalidity, exists


class _Windows:
    """
    TOP's fetches: C{BODY.PEEK[]<offset.length>} windows of one message
    fed to one L{_TopMessage}; the next is asked for only once its reader
    has taken the last one and still wants octets (popgate's encoder
    stops at the TOP line budget and closes it), so a TOP reads at most
    one window past what it sends.
    """

    def __init__(self, connection: ImapProtocol, uid: int, size: int) -> None:
        self.connection = connection
        self.uid = uid
        self.size = size
        self.message = _TopMessage(connection, self)
        self.offset = 0
        self.window = TOP_WINDOWS[0]
        self.got = 0
        self.pending = False  # a next window is due when the reader wants it

    def fetch(self) -> defer.Deferred[int]:
        self.got = 0
        return self.connection.stream(
            b"UID FETCH %d (BODY.PEEK[]<%d.%d>)" % (self.uid, self.offset, self.window), self)

    def next(self) -> None:
        self.pending = False
        self.fetch().addErrback(self.message.failed)

    def data(self, octets: bytes) -> None:
        self.got += len(octets)
        self.message.data(octets)

    def end(self) -> None:
        short = self.got < self.window  # the message ends in this window
        self.offset += self.window
        self.window = min(self.window * 2, TOP_WINDOWS[1])
        if self.message.closed or short or self.offset >= self.size:
            self.message.end()
        else:
            self.pending = True
            self.message.window_done()

    def failed(self, failure: Failure) -> None:
        self.message.failed(failure)


class _TopMessage(StreamedMessage):
    """An L{StreamedMessage} that asks for TOP's next window when its
    reader has taken everything held."""

    def __init__(self, connection: ImapProtocol, windows: _Windows) -> None:
        super().__init__(connection)
        self._windows = windows

    def read_deferred(self, size: int) -> defer.Deferred[bytes]:
        if not self._held and self._windows.pending and not self.closed:
            self._windows.next()
        return super().read_deferred(size)

    def window_done(self) -> None:
        """A window ended with the reader already waiting: the next now."""
        if self._waiting is not None and not self._held and not self.closed:
            self._windows.next()
