"""
The seams of popgate: zope interfaces that the protocol, the stores, the
delivery side and third-party plugins agree on.

This module is imported by the dropin (twisted/plugins/popgate_plugin.py) on
every twistd run, so it imports nothing heavy.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class IMaildrop(Interface):
    """
    One user's mailbox, opened and locked for one POP3 session.

    The message list is a snapshot taken at open time: mail delivered during
    the session is not shown, and message numbers never shift.  Deletions are
    not applied here one by one: the protocol keeps the marks and hands them
    to L{commit} once, in the UPDATE state.
    """

    def list_messages():  # type: ignore[misc]
        """
        The snapshot, in maildrop order.

        @return: a sequence of L{popgate.maildrop.MessageInfo} (unique id as
            bytes of 1-70 printable octets, and the exact octet count of the
            message as sent on the wire: CRLF line ends, before dot-stuffing).
        """

    def open_message(index):  # type: ignore[misc]
        """
        Open message C{index} (0-based) for reading.

        @return: a L{Deferred} firing with a binary file-like object that
            yields the message as stored (LF or CRLF line ends); the protocol
            converts line ends and dot-stuffs.  The caller closes it.
        """

    def commit(deleted):  # type: ignore[misc]
        """
        Apply the UPDATE state: remove the messages whose indexes are in
        C{deleted}, durably, then release the maildrop.

        @return: a L{Deferred} that fires once the removal is durable; it
            fails if some messages could not be removed.
        """

    def close():  # type: ignore[misc]
        """
        Release the maildrop without changing it (the session ended without
        QUIT).  Idempotent; may return a L{Deferred}.
        """


class IMailStore(Interface):
    """
    Where users' mail lives.  Opens maildrops for authenticated users.
    """

    def open_maildrop(avatar_id):  # type: ignore[misc]
        """
        Open and lock the maildrop of C{avatar_id} (a str user name).

        @return: a L{Deferred} firing with an object that provides or can be
            adapted to L{IMaildrop}.  It fails with
            L{popgate.errors.MaildropInUse} when another session holds the
            lock, L{popgate.errors.TemporaryFailure} or
            L{popgate.errors.PermanentFailure} for server-side problems.
        """


class IDeliveryTarget(Interface):
    """
    A store that accepts new mail (from LMTP or C{popgate deliver}).
    """

    def deliver(user, message, sender=None):  # type: ignore[misc]
        """
        Store C{message} (bytes) for C{user} durably.

        @return: a L{Deferred} firing once the message is on stable storage.
        """


class IUserLookup(Interface):
    """
    Answers whether a user exists (and where their mail lives), without a
    password: used by delivery to refuse unknown recipients.
    """

    def lookup_user(name):  # type: ignore[misc]
        """
        @return: a L{Deferred} firing with a L{popgate.cred.userinfo.UserInfo} or
            C{None} when there is no such user.
        """


class IMailStoreFactory(IPlugin):
    """
    A plugin turning an argument string (C{maildir:/var/mail/%d/%n}) into an
    L{IMailStore}, the way L{twisted.cred.strcred.ICheckerFactory} turns
    C{htpasswd:/etc/popgate/users} into a checker.
    """

    storeType = Attribute("The prefix before the colon, e.g. 'maildir'.")
    storeHelp = Attribute("A few sentences on what the store does.")
    argStringFormat = Attribute("How to write the argument string.")

    def makeStore(argstring):  # type: ignore[misc]
        """
        @return: an L{IMailStore}.
        @raise ValueError: with a one-line reason if C{argstring} is bad.
        """
