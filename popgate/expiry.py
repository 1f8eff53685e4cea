"""
EXPIRE (RFC 2449 6.7): which retrieved messages an UPDATE removes.

A message's clock starts at its first RETR (TOP does not count: clients
use it to peek).  The store keeps the time across sessions
(L{popgate.interfaces.IRetrievalRecord}); a message retrieved C{days} ago
or more is removed in the UPDATE state of a later session, with the
client's own deletions, as if the client had sent DELE.  C{EXPIRE 0}: a
message retrieved in a session is removed when that session QUITs (RFC
2449: "the server MAY assume an implicit DELE for each message which was
downloaded"); a client must not expect to find it again, so it should
fetch once and keep what it fetched.  L{NEVER}: nothing is removed.  A
message never retrieved is never expired, and a session that ends without
QUIT removes nothing and records nothing (RFC 1939: no UPDATE state), its
RETRs included: the client did not see the session end, so it will fetch
again.  RSET does not undo a retrieval: the message was sent.

The same rule serves C{popgate expire} (L{popgate.admin.expire}), for
mailboxes nobody polls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from popgate.interfaces import IRetrievalRecord
from popgate.policy import DAY, NEVER

__all__ = ["Retrievals"]

log = Logger()


class Retrievals:
    """
    The retrievals of one open maildrop: those its store recorded, and
    the first RETR of each message in this session.

    @param clock: tells the time of each RETR, and of the UPDATE.
    """

    def __init__(self, record: IRetrievalRecord, clock: Any) -> None:
        self.record = record
        self._clock = clock
        self._new: dict[int, float] = {}
        #: After L{expire}: the first-retrieval time of each message.
        self.times: list[float | None] = []

    def retrieved(self, index: int) -> None:
        """RETR sent message C{index} (0-based) whole."""
        self._new.setdefault(index, self._clock.seconds())

    def expire(self, deleted: Sequence[int], days: float,
               save: bool = True) -> defer.Deferred[list[int]]:
        """
        The UPDATE's removals: C{deleted} and the messages retrieved
        C{days} ago or more (this session's retrievals count); with
        C{save}, this session's first retrievals are recorded first.

        @return: a L{Deferred} firing with the sorted indexes; it never
            fails: a record that cannot be read or written is logged, and
            then only C{deleted} go.
        """
        return defer.Deferred.fromCoroutine(self._expire(deleted, days, save))

    async def _expire(self, deleted: Sequence[int], days: float, save: bool) -> list[int]:
        gone = set(deleted)
        try:
            loaded: list[float | None] = await self.record.load()
            times = list(loaded)
        except Exception as e:
            log.warn("cannot read the retrieval record, nothing expires: {why}", why=e)
            return sorted(gone)
        self.times = times
        changed = False
        for index, when in self._new.items():
            if times[index] is None:  # an earlier session's first RETR wins
                times[index] = when
                changed = True
        if days != NEVER:
            oldest = self._clock.seconds() - days * DAY
            gone.update(i for i, when in enumerate(times) if when is not None and when <= oldest)
        if save and changed:
            # Before the removals: a crash between the two leaves lines for
            # removed messages (dropped at the next write), never a
            # retrieved message without its time.
            try:
                await self.record.save(times)
            except Exception as e:
                log.warn("cannot write the retrieval record: {why}", why=e)
        return sorted(gone)
