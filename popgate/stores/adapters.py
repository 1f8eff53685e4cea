"""
Every adapter to L{IMaildrop}, registered in one place.

L{register} is idempotent; the realm calls it, so any process that serves
POP3 has the adapters whatever imported what first.  An adapter that must
do I/O before it can list messages provides
L{popgate.interfaces.ILoadingMaildrop}; the realm waits for its C{load}.
"""

from __future__ import annotations

from twisted.mail.pop3 import IMailbox
from twisted.python.components import registerAdapter

from popgate.interfaces import IMaildrop
from popgate.stores.twistedmailbox import MailboxMaildrop

_registered = False


def register() -> None:
    """Register popgate's adapters with Twisted's global adapter registry."""
    global _registered
    if _registered:
        return
    _registered = True
    # Twisted's POP3 mailboxes (twisted.mail.maildir.MaildirMailbox,
    # StringListMailbox, or a third party's): see popgate.stores.twistedmailbox.
    registerAdapter(MailboxMaildrop, IMailbox, IMaildrop)
