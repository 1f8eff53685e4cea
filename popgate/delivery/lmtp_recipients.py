"""
The LMTP transaction and what DATA does with it: one delivery per accepted
recipient, in RCPT order, each answered once its copy is durable, and the
mapping of each store outcome to its reply and C{lmtp.delivery} event.
Mixed into L{popgate.delivery.lmtp.LMTPServerProtocol}.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from popgate import errors
from popgate.delivery.lmtp_syntax import shown as _shown
from popgate.delivery.message import add_trace_headers
from popgate.events import emit

if TYPE_CHECKING:
    from popgate.delivery.lmtp_factory import LMTPFactory


@dataclass(slots=True)
class Transaction:
    """One MAIL transaction: the sender and the accepted recipients."""

    sender: str | None = None
    recipients: list[tuple[str, str]] = field(default_factory=list)  # (address, user)


class RecipientDelivery:
    """The DATA half of an LMTP session: per-recipient delivery and replies."""

    log: Logger
    factory: LMTPFactory
    _session: str

    if TYPE_CHECKING:
        # What the protocol (replies, events) provides.
        def _reply(self, code: int, status: str, text: str | bytes) -> None: ...
        def _report(self, result: str, reason: str, address: str, user: str | None,
                    sender: str | None, size: int, code: int, status: str, started: float,
                    why: str = "", level: LogLevel | None = None) -> None: ...

    async def _deliver_all(self, transaction: Transaction, message: bytes,
                           too_big: int) -> None:
        """One reply per recipient, in RCPT order, each after its copy is
        durable; C{too_big}: the size of a message over the limit (0 if
        it is not)."""
        sender = transaction.sender
        for address, user in transaction.recipients:
            shown = _shown(address)
            started = self.factory.clock.seconds()
            if too_big:
                self._report("failed", "too-big", address, user, sender, too_big, 552, "5.3.4",
                             started, level=LogLevel.info)
                self._reply(552, "5.3.4", b"<%s> Message too big" % shown)
                continue
            copy = add_trace_headers(message, sender, address)
            report = functools.partial(self._report, address=address, user=user, sender=sender,
                                       size=len(copy), started=started)
            try:
                await defer.maybeDeferred(self.factory.target.deliver, user, copy, sender)
            except errors.InvalidUserName as e:
                report(result="failed", reason="bad-mailbox", code=550, status="5.1.3",
                       why=str(e))
                self._reply(550, "5.1.3", b"<%s> Bad destination mailbox address" % shown)
            except errors.TemporaryFailure as e:
                code, status = _temporary_reply(e)
                self._store_error("temporary", user, str(e))
                report(result="tempfail", reason=_TEMPORARY_REASONS.get(status, "temporary"),
                       code=code, status=status, why=str(e))
                self._reply(code, status, b"<%s> Temporary failure, try again later" % shown)
            except errors.PermanentFailure as e:
                self._store_error("permanent", user, str(e))
                report(result="failed", reason="permanent", code=554, status="5.3.0",
                       why=str(e), level=LogLevel.error)
                self._reply(554, "5.3.0", b"<%s> Mailbox unavailable" % shown)
            except Exception as e:
                self.log.failure("lmtp: delivery to {user}", user=user)
                self._store_error("internal", user, repr(e))
                report(result="tempfail", reason="internal", code=451, status="4.3.0",
                       why=repr(e))
                self._reply(451, "4.3.0", b"<%s> Local error, try again later" % shown)
            else:
                report(result="ok", reason="", code=250, status="2.0.0")
                self._reply(250, "2.0.0", b"<%s> Delivered" % shown)

    def _store_error(self, kind: str, user: str, why: str) -> None:
        # Counted; the lmtp.delivery line says it in words.
        emit(self.log, "store.error", level=LogLevel.debug, op="deliver", kind=kind, user=user,
             why=why, session=self._session)


_TEMPORARY_REASONS = {"4.2.2": "quota", "4.3.1": "disk-full"}


def _temporary_reply(failure: BaseException) -> tuple[int, str]:
    """Disk full and over quota have codes of their own (RFC 3463)."""
    cause = failure.__cause__
    code = getattr(cause, "errno", None)
    if code == errno.EDQUOT:
        return 452, "4.2.2"
    if code == errno.ENOSPC:
        return 452, "4.3.1"
    return 451, "4.3.0"
