"""
The seams of popgate: zope interfaces that the protocol, the stores, the
delivery side and third-party plugins agree on.

This module is imported by the dropin (twisted/plugins/popgate_plugin.py) on
every twistd run, so it imports nothing heavy.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from twisted.cred.credentials import ICredentials
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # names for the annotations only: nothing heavy at run time
    from collections.abc import Iterable, Sequence

    from twisted.internet.defer import Deferred

    from popgate.cred.scram import ScramKeys
    from popgate.cred.userinfo import UserInfo
    from popgate.maildrop import MessageInfo

# Interface methods are declared the zope way, without self; mypy-zope
# checks each @implementer class against these signatures.  Deferred is
# invariant in its result, so results that differ by store are Deferred[Any].


class IMaildrop(Interface):
    """
    One user's mailbox, opened and locked for one POP3 session.

    The message list is a snapshot taken at open time: mail delivered during
    the session is not shown, and message numbers never shift.  Deletions are
    not applied here one by one: the protocol keeps the marks and hands them
    to L{commit} once, in the UPDATE state.
    """

    def list_messages() -> Sequence[MessageInfo]:
        """
        The snapshot, in maildrop order.

        @return: a sequence of L{popgate.maildrop.MessageInfo} (unique id as
            bytes of 1-70 printable octets, and the exact octet count of the
            message as sent on the wire: CRLF line ends, before dot-stuffing).
        """

    def open_message(index: int) -> IMessageSource | IO[bytes] | Deferred[Any]:
        """
        Open message C{index} (0-based) for reading.  Called in the reactor
        thread, so it must not block: a store whose open may wait for a
        disk does it in a thread (or only when the kernel can promise it
        will not wait, see L{popgate.stores.nowait}).

        @return: an L{IMessageSource}, or a L{Deferred} firing with one.  It
            yields the message as stored (LF or CRLF line ends); the
            protocol converts line ends and dot-stuffs, and closes it.  (Any
            binary file object is accepted too, and read in a thread.)
        """

    def commit(deleted: Iterable[int]) -> Deferred[Any] | None:
        """
        Apply the UPDATE state: remove the messages whose indexes are in
        C{deleted}, durably, then release the maildrop.

        @return: a L{Deferred} that fires once the removal is durable; it
            fails if some messages could not be removed.
        """

    def close() -> Deferred[Any] | None:
        """
        Release the maildrop without changing it (the session ended without
        QUIT).  Idempotent; may return a L{Deferred}.
        """


class ILoadingMaildrop(IMaildrop):
    """
    A maildrop that takes its snapshot after it was created: an adapter
    cannot return a L{Deferred}, so it does the reading here.
    """

    def load() -> Deferred[Any]:
        """
        Take the snapshot.  Called once, before any other method.

        @return: a L{Deferred} that fires once C{list_messages} can
            answer; on failure the realm closes the maildrop.
        """


class ISeenMaildrop(IMaildrop):
    """
    A maildrop with a read mark per message (IMAP's C{\\Seen}, a Maildir's
    C{S} flag) that POP3 sets as Dovecot's POP3 does: a RETR sent whole
    marks its message (TOP does not), RSET forgets this session's marks,
    and the maildrop applies them when the session ends -- at QUIT to the
    messages not deleted, or when the connection ends without QUIT.  A
    mark is not an UPDATE-state change: nothing is removed.
    """

    def retrieved(index: int) -> None:
        """RETR sent message C{index} (0-based) whole."""

    def forget_retrieved() -> None:
        """RSET: forget the marks this session made."""

    def last_seen() -> int:
        """
        The number (1-based) of the last message that was read before the
        session began, 0 if none: where the obsolete LAST (RFC 1460) starts.
        """


class ITopMaildrop(IMaildrop):
    """
    A maildrop that can open just the start of a message for TOP (an
    upstream server's own TOP), so TOP need not read it whole.
    """

    def open_top(index: int, lines: int) -> IMessageSource | Deferred[Any]:
        """
        Like L{IMaildrop.open_message}, but the source may end after the
        header block and C{lines} body lines (the protocol cuts there
        anyway).
        """


class IMessageSource(Interface):
    """
    One message being sent by RETR or TOP: what L{IMaildrop.open_message}
    gives.  The sender (L{popgate.pop3.output.MessageSender}) reads it a
    chunk at a time, never two reads at once, and only while the client
    keeps up; it closes it once, never while a read is running.
    """

    blocking = Attribute(
        "True if read() may wait for a disk or the network: the sender then "
        "calls it in the reactor's thread pool.  False if it returns at once "
        "(the message is in memory): it is called in the reactor thread.")

    def read(size: int) -> bytes:
        """
        The next octets of the message as stored: at least one and at most
        C{size}, or C{b""} at the end.  Called in a pool thread when
        C{blocking}, else in the reactor thread.

        @raise OSError: or L{popgate.errors.TemporaryFailure}: the message
            cannot be read (the client, already sent C{+OK}, is dropped).
        """

    def close() -> None:
        """Release what the source holds.  Called once, in the reactor
        thread."""


class ICachedMessageSource(IMessageSource):
    """
    A blocking source that can tell, without waiting, whether its next
    octets are in memory (the page cache): the sender reads those in the
    reactor thread, which costs less than a trip to a pool thread, and
    sends only the reads that would wait for the disk to the pool.
    """

    def read_cached(size: int) -> bytes | None:
        """
        Like L{IMessageSource.read}, but only what can be had without
        waiting: C{None} when the next octets would have to come from the
        disk (then the sender calls C{read} in a thread).  Called in the
        reactor thread; never while a C{read} is running.
        """


class IDeferredMessageSource(IMessageSource):
    """
    A source whose reads wait for the network without blocking: a
    database or an upstream server driven by the reactor.  The sender
    calls L{read_deferred} in the reactor thread, never C{read}, and never
    two reads at once.
    """

    def read_deferred(size: int) -> Any:
        """
        Like L{IMessageSource.read}: a L{twisted.internet.defer.Deferred}
        firing with the next octets (at least one and at most C{size}, or
        C{b""} at the end), or failing as C{read} raises.  Called in the
        reactor thread.
        """


class IWireMessageSource(IMessageSource):
    """
    A source whose octets are already the body of the reply, as the
    client must get it: dot-stuffed lines ending in CRLF, without the
    terminating C{.} line (an upstream POP3 server's RETR or TOP reply).
    The sender passes them on as they are and adds only the C{.} line;
    for TOP it cuts nothing (the source already holds just what TOP
    asked for).
    """


class IMailStore(Interface):
    """
    Where users' mail lives.  Opens maildrops for authenticated users.
    """

    def open_maildrop(avatar_id: str) -> Deferred[Any] | IMaildrop:
        """
        Open and lock the maildrop of C{avatar_id} (a str user name).

        @return: a L{Deferred} firing with an object that provides or can be
            adapted to L{IMaildrop}.  It fails with
            L{popgate.errors.MaildropInUse} when another session holds the
            lock, L{popgate.errors.TemporaryFailure} or
            L{popgate.errors.PermanentFailure} for server-side problems.
        """


class IAuthenticatingStore(IMailStore):
    """
    A mail store that logs in somewhere else as the user (a proxy to an
    upstream server), so it has a say in who checks the password.
    """

    def checkers(given: Sequence[Any]) -> list[Any]:
        """
        The checkers the portal uses, given C{--auth}'s (already behind
        the auth cache): the store's own when C{given} is empty (the
        upstream checks), else C{given} or wrappers of them.
        """


class IDeliveryTarget(Interface):
    """
    A store that accepts new mail (from LMTP or C{popgate deliver}).
    """

    def deliver(user: str, message: bytes, sender: str | None = None) -> Deferred[Any]:
        """
        Store C{message} (bytes) for C{user} durably.

        @return: a L{Deferred} firing once the message is on stable storage.
        """


class IUserLookup(Interface):
    """
    Answers whether a user exists (and where their mail lives), without a
    password: used by delivery to refuse unknown recipients.
    """

    def lookup_user(name: str | bytes) -> Deferred[UserInfo | None]:
        """
        @return: a L{Deferred} firing with a L{popgate.cred.userinfo.UserInfo} or
            C{None} when there is no such user.
        """


class IScramCredentials(ICredentials):
    """
    A SCRAM login (RFC 5802) that reached its proof: the checker looks up
    the user's keys for C{mechanism} and asks L{check}, as it hands a
    secret to C{IUsernameHashedPassword.checkPassword}.
    """

    username = Attribute("The user name the client sent (bytes).")
    mechanism = Attribute("SCRAM-SHA-256 or SCRAM-SHA-1.")

    def check(keys: ScramKeys) -> bool:
        """Whether the client's proof is right for these stored keys."""


class IScramLookup(Interface):
    """
    A user store that keeps SCRAM keys (L{popgate.cred.scram}) and hands
    them out before the proof: the server needs a user's salt and
    iteration count for its first challenge.  A checker providing it lists
    L{IScramCredentials} among its C{credentialInterfaces}.
    """

    def scram_mechanisms() -> frozenset[str]:
        """
        The SCRAM mechanisms to offer now (C{CAPA}'s C{SASL} line): those
        whose keys the store may hold.  Synchronous and cheap: it is asked
        at every C{CAPA}.
        """

    def lookup_scram(name: str | bytes, mechanism: str) -> Deferred[ScramKeys | None]:
        """
        @return: a L{Deferred} firing with the user's keys for
            C{mechanism}, or C{None} (no such user, or no such keys: the
            client must not be able to tell which); failing with
            L{popgate.errors.TemporaryFailure} when the store cannot answer.
        """


class IOAuthCredentials(ICredentials):
    """
    An OAuth 2.0 bearer token (SASL OAUTHBEARER, RFC 7628, or XOAUTH2):
    the checker asks an L{ITokenValidator} whose token it is.
    """

    username = Attribute("The user the client named (bytes; empty: none named).")
    token = Attribute("The bearer token (bytes), never logged.")


class ITokenValidator(Interface):
    """
    Says whose an OAuth 2.0 access token is: a JWT checked against keys,
    an RFC 7662 introspection endpoint, or a third party's.
    """

    def validate(token: bytes) -> Deferred[str]:
        """
        @return: a L{Deferred} firing with the user the token was issued
            for; failing with L{popgate.oauth.InvalidToken} when it is not
            valid (a failed login, the RFC 7628 error) or
            L{popgate.errors.TemporaryFailure} when the validator cannot
            tell now (its key set or endpoint unreachable).  Never blocks
            the reactor.
        """


class ITokenValidatorFactory(IPlugin):
    """
    A plugin turning C{--oauth TYPE:ARGS} (C{jwt:jwks_file=...}) into an
    L{ITokenValidator}, as L{IMailStoreFactory} does for stores.
    """

    validatorType = Attribute("The prefix before the colon, e.g. 'jwt'.")
    validatorHelp = Attribute("A few sentences on what the validator does.")
    argStringFormat = Attribute("How to write the argument string.")

    def makeValidator(argstring: str, reactor: Any) -> ITokenValidator:
        """
        @param reactor: the server's, for HTTP requests and timers.
        @raise ValueError: with a one-line reason if C{argstring} is bad.
        """


class IReachable(Interface):
    """
    A user store that can tell, cheaply, whether it can answer now:
    C{popgate check-config} and start-up ask, so a wrong host, port, path,
    password or query shows before the first login gets C{[SYS/TEMP]}.
    """

    def probe() -> Deferred[str]:
        """
        Reach the store as a login would (read the file; connect and bind;
        run the query for a user nobody has), logging nothing.

        @return: a L{Deferred} firing with a few words on what answered
            (C{"3 users"}), or failing with an exception whose text says
            why in one line.
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

    def makeStore(argstring: str, reactor: Any) -> IMailStore:
        """
        @param reactor: the reactor the server runs on: a store that needs
            threads or timers uses its C{getThreadPool}/C{callLater}, never
            the global reactor (tests hand it a fake one).  A factory whose
            C{makeStore} takes the argument string only, as before popgate
            passed the reactor, keeps working: it is called without it
            (L{popgate.plugin_support.call_maker}).
        @return: an L{IMailStore}.
        @raise ValueError: with a one-line reason if C{argstring} is bad.

        A factory whose C{routable} attribute is true (a proxy) is also
        called as C{makeStore(argstring, reactor, route=source)} when
        C{--route} is given: C{source} is a
        L{popgate.routes.source.RouteSource}, and the store makes it a
        L{popgate.routes.router.Router} for its own URL schemes.
        """


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    What popgate's protocols (POP3, LMTP) use of their transport, for the
    type checker only: TCP, TLS and UNIX transports all have it, though
    none declares it.  (STLS looks C{startTLS} up: not every transport has
    it.)
    """

    disconnecting: bool


class IPerUserPolicy(Interface):
    """
    A user store whose users may carry their own LOGIN-DELAY or EXPIRE
    (on the avatar id it returns: L{popgate.cred.userinfo.AvatarId}'s
    C{policy}), so CAPA says C{USER} before login (RFC 2449 6.5, 6.7).
    """

    def policy_fields() -> frozenset[str]:
        """
        Which of C{"login_delay"}, C{"expire"} may differ per user, as far
        as the store knows now.  Called for every CAPA before login: no
        I/O, no waiting.
        """


class ILoginHistory(Interface):
    """
    When each user last logged in, kept by a mail store where every process
    and node using the same mail sees it (LOGIN-DELAY).  Adapted from an
    L{IMailStore} (L{popgate.stores.history}).
    """

    def last_login(user: str) -> Deferred[float | None]:
        """
        @return: a L{Deferred} firing with the POSIX time of C{user}'s last
            recorded login, or C{None} when there is none.
        """

    def record_login(user: str, when: float) -> Deferred[None]:
        """
        Record a successful login of C{user} at C{when} (POSIX time),
        replacing the previous one, atomically.

        @return: a L{Deferred} firing once it is written.
        """


class IRetrievalRecord(Interface):
    """
    When each message of an open maildrop was first retrieved (RETR), kept
    by the store across sessions (EXPIRE).  Adapted from an L{IMaildrop}
    (L{popgate.stores.history}); used while the maildrop is held, before
    its C{commit}.
    """

    def load() -> Deferred[list[float | None]]:
        """
        @return: a L{Deferred} firing with one entry per message of the
            snapshot, in order: the POSIX time it was first retrieved, or
            C{None} if it never was.
        """

    def save(times: Sequence[float | None]) -> Deferred[None]:
        """
        Replace the record with C{times} (one entry per message of the
        snapshot, as L{load} gives them): messages that are no longer in
        the maildrop lose their entries, so the record never outgrows it.
        Durable once the L{Deferred} fires.
        """
