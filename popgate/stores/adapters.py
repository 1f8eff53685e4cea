"""
Every adapter to L{IMaildrop}, in one place: L{as_maildrop} turns what a
store returned into a maildrop, for the realm.

Twisted's C{IMailbox} is adapted here, with the reactor the server runs
on (its thread pool measures real files, its clock paces a long load), so
that adapter is not in Twisted's global registry, whose adapters get one
argument.  Adapters a third party registers there (C{registerAdapter(f,
ISomething, IMaildrop)}) are used first.  An adapter that must do I/O
before it can list messages provides
L{popgate.interfaces.ILoadingMaildrop}; the realm waits for its C{load}.
"""

from __future__ import annotations

from typing import Any

from twisted.mail.pop3 import IMailbox

from popgate.interfaces import IMaildrop
from popgate.stores.twistedmailbox import MailboxMaildrop


def as_maildrop(opened: object, reactor: Any) -> Any:
    """
    C{opened} itself when it is an L{IMaildrop}, else its adapter: a
    registered one, or L{MailboxMaildrop} on C{reactor} for a Twisted
    C{IMailbox}; C{None} when nothing fits.
    """
    maildrop = IMaildrop(opened, None)
    if maildrop is None and IMailbox.providedBy(opened):
        maildrop = MailboxMaildrop(opened, reactor)
    return maildrop
