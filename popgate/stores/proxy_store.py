"""
The C{proxy:} mail store: a user's maildrop is their mailbox on an
upstream POP3 server, served through popgate's maildrop interface rather
than relayed as a byte stream (docs/gateway.md says why: popgate's own
protocol, limits, logs and UPDATE-at-QUIT stay in front of any upstream).

At open popgate logs in upstream and takes the snapshot (UIDL, LIST: the
upstream's ids and sizes); RETR and TOP are streamed from the upstream
(L{popgate.stores.proxy_source}); deletions are marked in popgate's
session and sent upstream only at QUIT (DELE each, in one write if the
upstream offers PIPELINING, then QUIT, whose C{+OK} is what popgate's
client waits for).  A session that ends without
QUIT sends no DELE: the upstream is asked to RSET and QUIT (or just
dropped, mid-reply), so nothing is deleted.

Who checks the password (L{popgate.stores.proxy_auth}): the upstream
itself (no C{--auth}), or popgate's user stores and then the upstream is
logged in to with the same password or as a master user.

Which upstream: C{upstream=}, or with C{--route} the one a directory names
for the user (L{popgate.routes}), looked up before either login.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IAuthenticatingStore, IMailStore, IReachable, ITopMaildrop
from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.routes.source import RouteSource
from popgate.stores.pop3_upstream import UpstreamError, UpstreamProtocol
from popgate.stores.proxy_auth import (
    forwarded_password,
)
from popgate.stores.proxy_connect import connect, log_in
from popgate.stores.proxy_settings import Upstream
from popgate.stores.proxy_source import UpstreamMessage
from popgate.stores.upstream_store import UpstreamStore, make_upstream_store

__all__ = ["ProxyMaildrop", "ProxyStore", "make_store"]

log = Logger()

#: From this many deletions on, QUIT asks the upstream's CAPA whether the
#: DELEs may go in one write: the CAPA costs one round trip, and saves one
#: per DELE after the first.
PIPELINE_FROM = 3

def make_store(argstring: str, reactor: Any, route: RouteSource | None = None) -> ProxyStore:
    """
    @param route: the C{--route} source, if any; C{upstream=} is then the
        upstream of users it has no route for.
    """
    return make_upstream_store(ProxyStore, "pop3", argstring, reactor, route)


@implementer(IMailStore, IAuthenticatingStore, IReachable)
class ProxyStore(UpstreamStore):
    """Mailboxes on an upstream POP3 server (L{UpstreamStore}: which one,
    who checks the password)."""

    kind = "proxy"

    async def connect_and_log_in(self, upstream: Upstream, user: bytes,
                                 password: bytes) -> UpstreamProtocol:
        return await log_in(self.reactor, self.settings, upstream, user, password)

    async def greet(self, upstream: Upstream) -> None:
        """Connect, read the greeting, QUIT."""
        connection = await connect(self.reactor, self.settings, upstream)
        try:
            await connection.simple(b"QUIT")
        finally:
            connection.close()

    # -- IMailStore

    def maildrop(self, connection: Any, name: str) -> ProxyMaildrop:
        return ProxyMaildrop(connection, name)

    async def log_in_for(self, avatar_id: str) -> UpstreamProtocol:
        """Local authentication: popgate's user stores said yes; log in
        upstream as a master user, or with the password the client gave."""
        name = str(avatar_id)
        settings = self.settings
        upstream = await self.route(name)
        if settings.master_user and settings.master_password:
            user = f"{name}{settings.master_separator}{settings.master_user}".encode()
            password = settings.master_password
        else:
            found = forwarded_password(avatar_id)
            if found is None:
                raise errors.PermanentFailure(
                    "proxy: no password to log in upstream with (give master_user=, or a "
                    "user store that checks passwords)")
            user, password = name.encode(), found
        connection = await log_in(self.reactor, settings, upstream, user, password)
        return connection


def _number(word: bytes) -> int:
    if not word.isdigit():
        raise ValueError(word)
    return int(word)


@implementer(ITopMaildrop)
class ProxyMaildrop:
    """
    One user's mailbox upstream, on the connection logged in for this
    session.  Message C{i} of the snapshot is upstream message
    C{numbers[i]}.
    """

    def __init__(self, connection: UpstreamProtocol, name: str) -> None:
        self.connection = connection
        self.name = name
        self._messages: list[MessageInfo] = []
        self._numbers: list[int] = []
        self._done = False

    async def load(self) -> None:
        """The snapshot: UIDL for the ids, LIST for the sizes."""
        try:
            uidl = await self.connection.listing(b"UIDL")
            sizes = await self.connection.listing(b"LIST")
        except UpstreamError as e:
            raise errors.PermanentFailure(f"upstream refused UIDL or LIST: {e}") from None
        ids: dict[int, bytes] = {}
        listed: list[tuple[int, int]] = []
        line = b""
        try:
            for line in uidl:
                word, _, uid = line.partition(b" ")
                ids[_number(word)] = uid.strip()
            for line in sizes:
                word, _, rest = line.partition(b" ")
                listed.append((_number(word), _number(rest.split(b" ")[0])))
        except ValueError:
            raise errors.PermanentFailure("upstream sent a UIDL or LIST line that is no "
                                          f"'number value': {line[:60]!r}") from None
        for number, size in listed:
            found = ids.get(number)
            if found is None or not is_valid_uid(found):
                raise errors.PermanentFailure(
                    f"upstream message {number} has no usable UIDL ({found!r})")
            self._messages.append(MessageInfo.unchecked(found, size))
            self._numbers.append(number)
        if len(set(ids[n] for n in self._numbers)) != len(self._numbers):
            raise errors.PermanentFailure("upstream gave two messages the same UIDL")

    def list_messages(self) -> Sequence[MessageInfo]:
        return self._messages

    def open_message(self, index: int) -> defer.Deferred[UpstreamMessage]:
        return self._stream(b"RETR %d" % self._numbers[index])

    def open_top(self, index: int, lines: int) -> defer.Deferred[UpstreamMessage]:
        return self._stream(b"TOP %d %d" % (self._numbers[index], lines))

    def _stream(self, command: bytes) -> defer.Deferred[UpstreamMessage]:
        source = UpstreamMessage(self.connection)

        def refused(failure: Any) -> Any:
            failure.trap(UpstreamError)
            error = failure.value
            if error.code == b"SYS/TEMP":
                raise errors.TemporaryFailure(f"upstream: {error}")
            raise errors.PermanentFailure(f"upstream refused {command.decode()}: {error}")

        d: defer.Deferred[Any] = self.connection.stream(command, source)
        d.addCallbacks(lambda _: source, refused)
        return d

    def commit(self, deleted: Iterable[int]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._commit(sorted(deleted)))

    async def _commit(self, deleted: list[int]) -> None:
        """DELE each message (all in one write if the upstream offers
        PIPELINING), then QUIT once every DELE said C{+OK}; popgate's
        client gets C{+OK} once the upstream's QUIT said so.  A refused
        DELE: RSET and QUIT, so none is deleted, and popgate's client
        hears C{[SYS/TEMP]}."""
        self._done = True
        connection = self.connection
        lines = [b"DELE %d" % self._numbers[index] for index in deleted]
        try:
            if len(lines) >= PIPELINE_FROM and await self._pipelining():
                replies = await defer.DeferredList(connection.pipeline(lines), consumeErrors=True)
                for _, result in replies:
                    if isinstance(result, Failure):
                        result.raiseException()  # the first refusal, in order
            else:
                for line in lines:
                    await connection.simple(line)
        except UpstreamError as e:
            connection.simple(b"RSET").addBoth(lambda _: connection.simple(b"QUIT")) \
                .addBoth(lambda _: connection.close())
            raise errors.TemporaryFailure(f"upstream refused a DELE: {e}") from None
        try:
            await connection.simple(b"QUIT")
        except UpstreamError as e:
            raise errors.TemporaryFailure(f"upstream refused QUIT (UPDATE): {e}") from None
        finally:
            connection.close()

    async def _pipelining(self) -> bool:
        """Does the upstream's CAPA (RFC 2449) offer PIPELINING?"""
        try:
            capabilities = await self.connection.listing(b"CAPA")
        except UpstreamError:
            return False  # an RFC 1939 server: no CAPA
        return any(line.split(b" ", 1)[0].upper() == b"PIPELINING" for line in capabilities)

    def close(self) -> None:
        """The session ended without QUIT: nothing is deleted upstream.
        An idle connection is told RSET and QUIT; one mid-reply is dropped
        (a POP3 server enters UPDATE only on QUIT)."""
        if self._done:
            return
        self._done = True
        connection = self.connection
        if connection.idle:
            reset = connection.simple(b"RSET")
            reset.addBoth(lambda _: connection.simple(b"QUIT"))
            reset.addBoth(lambda _: connection.close())
        else:
            connection.abort("the session ended without QUIT")
