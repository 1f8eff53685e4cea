"""
Twisted's C{IMailbox} served through popgate: the adapter keeps popgate's
semantics (a snapshot, exact sizes, bytes as stored, deletions only at QUIT,
dot-stuffing once), with a custom mailbox, Twisted's own mailbox classes,
and mailboxes that answer with Deferreds.
"""

from __future__ import annotations

import io
import os
from hashlib import md5, sha1
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.mail import maildir, pop3
from zope.interface import implementer

from popgate import errors
from popgate.interfaces import IMaildrop
from popgate.realm import ILoadingMaildrop, MaildropRealm
from popgate.stores import adapters
from popgate.stores.twistedmailbox import BinaryReader, MailboxMaildrop, measure
from tests.helpers import InlineReactor, connect, make_portal
from tests.pop3_oracle import crlf_size, wire


@implementer(pop3.IMailbox)
class RecordingMailbox:
    """
    A custom IMailbox that logs every call, hands out text-mode (str) files,
    str unique ids, and lists deleted messages with size 0, like Twisted's.
    """

    def __init__(self, messages: list[bytes | None], uids: list[Any] | None = None,
                 text_mode: bool = True) -> None:
        self.messages = list(messages)
        self.uids = uids or [md5(m or b"").hexdigest() for m in messages]
        self.text_mode = text_mode
        self.calls: list[tuple[Any, ...]] = []
        self.pending: set[int] = set()

    def listMessages(self, i: int | None = None) -> Any:
        self.calls.append(("listMessages", i))
        sizes = [0 if m is None or n in self.pending else len(m) for n, m in enumerate(self.messages)]
        return sizes if i is None else sizes[i]

    def getMessage(self, i: int) -> Any:
        self.calls.append(("getMessage", i))
        data = self.messages[i]
        assert data is not None, "asked for a deleted message"
        if self.text_mode:
            return io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")
        return io.BytesIO(data)

    def getUidl(self, i: int) -> Any:
        self.calls.append(("getUidl", i))
        return self.uids[i]

    def deleteMessage(self, i: int) -> None:
        self.calls.append(("deleteMessage", i))
        self.pending.add(i)

    def undeleteMessages(self) -> None:
        self.calls.append(("undeleteMessages",))
        self.pending.clear()

    def sync(self) -> None:
        self.calls.append(("sync",))
        for i in self.pending:
            self.messages[i] = None
        self.pending.clear()

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


class DeferredMailbox(RecordingMailbox):
    """Every method answers with a Deferred that fires when the clock moves."""

    def __init__(self, clock: Clock, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.clock = clock

    def _later(self, value: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.clock.callLater(1, d.callback, value)
        return d

    def listMessages(self, i: int | None = None) -> Any:
        return self._later(super().listMessages(i))

    def getMessage(self, i: int) -> Any:
        return self._later(super().getMessage(i))

    def getUidl(self, i: int) -> Any:
        return self._later(super().getUidl(i))

    def deleteMessage(self, i: int) -> Any:
        return self._later(super().deleteMessage(i))

    def sync(self) -> Any:
        return self._later(super().sync())


class MailboxStore:
    """A store that returns Twisted mailboxes: the adapter does the rest."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.opened: list[Any] = []

    def open_maildrop(self, avatar_id: str) -> Any:
        mailbox = self.make(avatar_id)
        self.opened.append(mailbox)
        return mailbox


def loaded(mailbox: Any, reactor: Any = None) -> MailboxMaildrop:
    maildrop = MailboxMaildrop(mailbox, reactor or InlineReactor())
    result = maildrop.load()
    assert result.called
    return maildrop


def read(source: Any) -> bytes:
    try:
        return source.read()
    finally:
        source.close()


def opened(maildrop: MailboxMaildrop, index: int) -> bytes:
    d = maildrop.open_message(index)
    assert d.called
    return read(d.result)


CORPUS = [
    b"Subject: lf\n\nbody\n.dot line\n",
    b"Subject: crlf\r\n\r\n.\r\n..two\r\nend\r\n",
    b"Subject: 8bit\n\n\xe9t\xe9 \xff\x00 bare\rcr\n",
    b"no final newline",
]


# -- the adapter on its own


def test_a_mailbox_is_adapted_on_the_servers_reactor_and_loads_through_the_realm():
    reactor = InlineReactor()
    mailbox = RecordingMailbox(CORPUS)
    maildrop = adapters.as_maildrop(mailbox, reactor)
    assert isinstance(maildrop, MailboxMaildrop)
    assert maildrop._reactor is reactor
    assert IMaildrop(mailbox, None) is None  # not in the global registry: it needs the reactor
    assert ILoadingMaildrop.providedBy(maildrop)
    with pytest.raises(RuntimeError):
        maildrop.list_messages()  # the realm loads it first


def test_registered_adapters_come_first_and_maildrops_pass_through():
    from twisted.python.components import registerAdapter

    from popgate.stores.memory import MemoryStore

    store = MemoryStore()
    store.add_message("alice", b"hi\n")
    maildrop = store.open_maildrop("alice")
    assert adapters.as_maildrop(maildrop, None) is maildrop

    class Theirs:
        pass

    @implementer(pop3.IMailbox)
    class TheirMailbox(Theirs):
        pass

    registerAdapter(lambda theirs: maildrop, Theirs, IMaildrop)
    assert adapters.as_maildrop(TheirMailbox(), InlineReactor()) is maildrop
    assert adapters.as_maildrop(object(), InlineReactor()) is None


def test_sizes_are_exact_and_bytes_come_back_as_stored():
    maildrop = loaded(RecordingMailbox(CORPUS))
    infos = maildrop.list_messages()
    assert [i.size for i in infos] == [crlf_size(m) for m in CORPUS]
    for n, message in enumerate(CORPUS):
        assert opened(maildrop, n) == message


def test_unique_ids_are_bytes_valid_and_distinct():
    long_uid = "x" * 71
    maildrop = loaded(RecordingMailbox(
        [b"a", b"b", b"c", b"same", b"same", b"f"],
        uids=["plain-str", b"plain-bytes", "has space", "dup", "dup", long_uid]))
    uids = [i.uid for i in maildrop.list_messages()]
    assert uids[:2] == [b"plain-str", b"plain-bytes"]
    assert uids[2] == sha1(b"has space").hexdigest().encode()
    assert uids[5] == sha1(long_uid.encode()).hexdigest().encode()
    assert uids[3] == b"dup" and uids[4] != b"dup"
    assert len(set(uids)) == len(uids)
    # The same mailbox gives the same ids next time.
    again = loaded(RecordingMailbox(
        [b"a", b"b", b"c", b"same", b"same", b"f"],
        uids=["plain-str", b"plain-bytes", "has space", "dup", "dup", long_uid]))
    assert [i.uid for i in again.list_messages()] == uids


def test_messages_listed_with_size_zero_are_left_out():
    mailbox = RecordingMailbox([b"one\n", None, b"three\n"])
    maildrop = loaded(mailbox)
    assert [i.size for i in maildrop.list_messages()] == [5, 7]
    assert opened(maildrop, 1) == b"three\n"
    assert ("getMessage", 1) not in mailbox.calls
    d = maildrop.commit([1])
    assert d.called and d.result is None
    assert mailbox.called("deleteMessage") == [("deleteMessage", 2)]


def test_deletions_reach_the_mailbox_only_at_commit():
    mailbox = RecordingMailbox(CORPUS)
    maildrop = loaded(mailbox)
    for n in range(len(CORPUS)):
        opened(maildrop, n)
    assert not mailbox.called("deleteMessage") and not mailbox.called("sync")
    d = maildrop.commit([0, 2])
    assert d.called and d.result is None
    assert mailbox.called("deleteMessage") == [("deleteMessage", 0), ("deleteMessage", 2)]
    assert mailbox.calls[-1] == ("sync",)
    assert mailbox.messages[0] is None and mailbox.messages[2] is None


def test_close_without_quit_leaves_the_mailbox_alone():
    mailbox = RecordingMailbox(CORPUS)
    maildrop = loaded(mailbox)
    before = list(mailbox.calls)
    maildrop.close()
    maildrop.close()
    assert mailbox.calls == before
    failed = maildrop.commit([0])
    assert isinstance(failed.result.value, errors.PermanentFailure)
    failed.addErrback(lambda f: None)
    assert not mailbox.called("deleteMessage")


def test_a_renumbered_message_is_not_deleted():
    mailbox = RecordingMailbox([b"a\n", b"b\n", b"c\n"], uids=["u1", "u2", "u3"])
    maildrop = loaded(mailbox)
    mailbox.uids[1] = "someone-else"  # another program renumbered the mailbox
    d = maildrop.commit([0, 1])
    assert isinstance(d.result.value, errors.TemporaryFailure)
    d.addErrback(lambda f: None)
    assert mailbox.called("deleteMessage") == [("deleteMessage", 0)]
    assert mailbox.calls[-1] == ("sync",)


def test_a_failed_deletion_does_not_stop_the_others():
    class Flaky(RecordingMailbox):
        def deleteMessage(self, i: int) -> None:
            if i == 0:
                raise OSError("disk on fire")
            super().deleteMessage(i)

    mailbox = Flaky([b"a\n", b"b\n"])
    d = loaded(mailbox).commit([0, 1])
    assert isinstance(d.result.value, errors.TemporaryFailure)
    d.addErrback(lambda f: None)
    assert mailbox.messages == [b"a\n", None]


def test_mailbox_methods_may_return_deferreds():
    clock = Clock()
    mailbox = DeferredMailbox(clock, CORPUS, text_mode=False)
    maildrop = MailboxMaildrop(mailbox, InlineReactor())
    d = maildrop.load()
    while not d.called:
        clock.advance(1)
    assert [i.size for i in maildrop.list_messages()] == [crlf_size(m) for m in CORPUS]
    source = maildrop.open_message(2)
    clock.advance(1)
    assert read(source.result) == CORPUS[2]
    done = maildrop.commit([1, 3])
    while not done.called:
        clock.advance(1)
    assert done.result is None
    assert mailbox.messages[1] is None and mailbox.messages[3] is None


def test_loading_a_big_mailbox_hands_the_reactor_back():
    clock = Clock()
    mailbox = RecordingMailbox([b"m%d\n" % n for n in range(200)], text_mode=False)
    maildrop = MailboxMaildrop(mailbox, clock)
    d = maildrop.load()
    assert not d.called  # paused after the first batch, waiting for the reactor
    assert len(mailbox.called("getMessage")) == 64
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert d.called
    assert len(maildrop.list_messages()) == 200


def test_text_mode_files_are_read_as_bytes(tmp_path):
    data = b"Subject: t\r\n\r\n\xe9\xff bare\rcr\r\nlf\n"
    path = tmp_path / "m"
    path.write_bytes(data)
    with open(path, encoding="utf-8") as text:  # would fail to decode \xff
        reader = BinaryReader(text)
        assert reader.blocking
        assert reader.read() == data
    assert measure(BinaryReader(io.StringIO("a\nb\r\n"))) == 6
    assert BinaryReader(io.StringIO("\u00e9")).read() == "\u00e9".encode()
    assert not BinaryReader(io.BytesIO(b"")).blocking


def test_real_files_are_measured_in_the_thread_pool(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"a\nb\n")
    used: list[Any] = []

    class CountingReactor(InlineReactor):
        def getThreadPool(self) -> Any:
            used.append(True)
            return super().getThreadPool()

    @implementer(pop3.IMailbox)
    class FileMailbox(pop3.Mailbox):
        def listMessages(self, i: int | None = None) -> Any:
            return [4] if i is None else 4

        def getMessage(self, i: int) -> Any:
            return open(path)

        def getUidl(self, i: int) -> bytes:
            return b"file"

    maildrop = loaded(FileMailbox(), CountingReactor())
    assert used and maildrop.list_messages()[0].size == 6


# -- through the protocol


def session_for(mailbox_factory: Any) -> tuple[Any, MailboxStore]:
    store = MailboxStore(mailbox_factory)
    portal, _ = make_portal(store)
    return connect(portal), store


def test_retr_is_dot_stuffed_once_and_deletions_wait_for_quit():
    session, store = session_for(lambda user: RecordingMailbox(CORPUS))
    session.login()
    mailbox = store.opened[0]
    stat = session.send(b"STAT\r\n")
    assert stat == b"+OK %d %d\r\n" % (len(CORPUS), sum(crlf_size(m) for m in CORPUS))
    for n, message in enumerate(CORPUS, 1):
        assert session.send(b"RETR %d\r\n" % n) == b"+OK %d octets\r\n" % crlf_size(message) + wire(message)
    assert session.send(b"DELE 1\r\nDELE 3\r\n") == b"+OK Marked to be deleted.\r\n" * 2
    assert not mailbox.called("deleteMessage")
    assert session.send(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    assert mailbox.called("deleteMessage") == [("deleteMessage", 0), ("deleteMessage", 2)]
    assert mailbox.calls[-1] == ("sync",)


def test_a_dropped_session_deletes_nothing():
    session, store = session_for(lambda user: RecordingMailbox(CORPUS))
    session.login()
    session.send(b"DELE 1\r\n")
    session.lose()
    assert not store.opened[0].called("deleteMessage")
    assert not store.opened[0].called("sync")


def test_a_mailbox_that_fails_to_load_is_an_error_not_a_crash():
    class Broken(RecordingMailbox):
        def getMessage(self, i: int) -> Any:
            raise OSError("unreadable")

    session, _ = session_for(lambda user: Broken(CORPUS))
    reply = session.send(b"USER alice\r\nPASS secret\r\n")
    assert reply.endswith(b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n")


def test_a_store_returning_something_unadaptable_gets_sys_perm():
    session, _ = session_for(lambda user: object())
    reply = session.send(b"USER alice\r\nPASS secret\r\n")
    assert reply.endswith(b"-ERR [SYS/PERM] Mailbox cannot be opened.\r\n")


def test_realm_closes_a_maildrop_whose_load_fails():
    closed: list[bool] = []

    @implementer(ILoadingMaildrop)
    class Failing:
        def load(self) -> Any:
            return defer.fail(errors.TemporaryFailure("nope"))

        def close(self) -> None:
            closed.append(True)

    class Store:
        def open_maildrop(self, avatar_id: str) -> Any:
            return Failing()

    d = MaildropRealm(Store(), InlineReactor()).requestAvatar("alice", None, IMaildrop)
    assert isinstance(d.result.value, errors.TemporaryFailure)
    d.addErrback(lambda f: None)
    assert closed == [True]


# -- Twisted's own mailbox classes


def test_twisted_string_list_mailbox():
    messages = [b"Subject: a\n\n.first\n", b"same\n", b"same\n"]
    mailbox = maildir.StringListMailbox(list(messages))
    session, _ = session_for(lambda user: mailbox)
    session.login()
    assert session.send(b"RETR 1\r\n") == b"+OK %d octets\r\n" % crlf_size(messages[0]) + wire(messages[0])
    uidl = session.send(b"UIDL\r\n").split(b"\r\n")[1:4]
    assert len({line.split()[1] for line in uidl}) == 3  # equal messages, distinct ids
    session.send(b"DELE 2\r\n")
    assert mailbox.msgs == messages  # untouched before QUIT
    assert session.send(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    assert mailbox.msgs[1] == ""  # StringListMailbox.sync blanks it (as str)
    # The next session does not show it: Twisted lists it with size 0.
    again, _ = session_for(lambda user: mailbox)
    again.login()
    assert again.send(b"STAT\r\n") == b"+OK 2 %d\r\n" % (crlf_size(messages[0]) + crlf_size(messages[2]))


def test_twisted_mailbox_base_class_is_an_empty_mailbox():
    session, _ = session_for(lambda user: pop3.Mailbox())
    session.login()
    assert session.send(b"STAT\r\n") == b"+OK 0 0\r\n"
    assert session.send(b"QUIT\r\n") == b"+OK Logging out.\r\n"


class FixedMaildirMailbox(maildir.MaildirMailbox):
    """MaildirMailbox with its Python 3 bug fixed: it joins str to a bytes
    path when moving a message to .Trash."""

    def deleteMessage(self, i: int) -> None:
        trash = os.path.join(self.path, b".Trash", b"cur", os.path.basename(self.list[i]))
        os.rename(self.list[i], trash)
        self.deleted[self.list[i]] = trash
        self.list[i] = 0


def _twisted_delete_works(tmp_path) -> bool:
    probe = os.fsencode(tmp_path / "probe")
    maildir.initializeMaildir(probe)
    open(os.path.join(probe, b"new", b"1.x"), "wb").close()
    try:
        maildir.MaildirMailbox(probe).deleteMessage(0)
    except TypeError:
        return False
    return True


MAILDIR_CORPUS = {
    b"1000.a": b"Subject: lf\n\n.dot\nbody\n",
    b"1001.b": b"Subject: 8bit\r\n\r\n\xe9t\xe9 \xff bare\rcr\r\n",
    b"1002.c": b"no final newline",
}


def _maildir(tmp_path) -> bytes:
    root = os.fsencode(tmp_path / "Maildir")
    maildir.initializeMaildir(root)
    for name, data in MAILDIR_CORPUS.items():
        with open(os.path.join(root, b"new", name), "wb") as f:
            f.write(data)
    return root


@pytest.mark.parametrize("mailbox_class", [maildir.MaildirMailbox, FixedMaildirMailbox])
def test_twisted_maildir_mailbox(tmp_path, mailbox_class):
    root = _maildir(tmp_path)
    messages = list(MAILDIR_CORPUS.values())
    session, _ = session_for(lambda user: mailbox_class(root))
    session.login()
    listing = session.send(b"LIST\r\n").split(b"\r\n")
    assert listing[0].startswith(b"+OK") and listing[-2:] == [b".", b""]
    assert listing[1:-2] == [b"%d %d" % (n, crlf_size(m)) for n, m in enumerate(messages, 1)]
    for n, message in enumerate(messages, 1):
        assert session.send(b"RETR %d\r\n" % n) == b"+OK %d octets\r\n" % crlf_size(message) + wire(message)
    assert session.send(b"DELE 1\r\n").startswith(b"+OK")
    assert sorted(os.listdir(os.path.join(root, b"new"))) == sorted(MAILDIR_CORPUS)
    quit_reply = session.send(b"QUIT\r\n")
    if mailbox_class is maildir.MaildirMailbox and not _twisted_delete_works(tmp_path):
        # Twisted's MaildirMailbox.deleteMessage mixes str and bytes
        # paths on Python 3: the deletion fails, the client is told, and
        # nothing is lost.
        assert quit_reply.startswith(b"-ERR [SYS/TEMP]"), quit_reply
        assert sorted(os.listdir(os.path.join(root, b"new"))) == sorted(MAILDIR_CORPUS)
    else:
        assert quit_reply.startswith(b"+OK"), quit_reply
        assert sorted(os.listdir(os.path.join(root, b"new"))) == [b"1001.b", b"1002.c"]
        assert os.listdir(os.path.join(root, b".Trash", b"cur")) == [b"1000.a"]


def test_twisted_maildir_mailbox_dropped_session_moves_nothing(tmp_path):
    root = _maildir(tmp_path)
    session, _ = session_for(lambda user: FixedMaildirMailbox(root))
    session.login()
    assert session.send(b"DELE 1\r\n").startswith(b"+OK")
    session.lose()  # no QUIT
    again, _ = session_for(lambda user: FixedMaildirMailbox(root))
    again.login()  # the next session sees all three
    assert again.send(b"STAT\r\n").startswith(b"+OK 3 ")
    assert again.send(b"QUIT\r\n").startswith(b"+OK")
    assert os.listdir(os.path.join(root, b".Trash", b"cur")) == []
