"""
popgate's POP3 on Maildirs that a real Dovecot (Debian's dovecot-imapd and
dovecot-pop3d) serves over IMAP at the same time: read marks seen over
IMAP, an IMAP EXPUNGE in the middle of a POP3 session, C{uidl=dovecot}
against Dovecot's own POP3 UIDLs message by message (also after IMAP added
and expunged messages), soft deletion kept for IMAP, and
C{flag_updates=no}.  The same logic without Dovecot, in memory:
tests/test_maildir_dovecot.py and tests/test_maildir_flags.py.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port
from tests.popgate_server import PopgateProcess
from tests.services import need_program
from tests.test_dovecot_parity import DovecotProcess

pytestmark = pytest.mark.integration

USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw", "dave": "davepw",
         "erin": "erinpw"}
KEYWORD = "$POP3Deleted"

IMAP_CONF = """
protocols = imap pop3
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class DovecotIMAP(DovecotProcess):
    """The parity tests' Dovecot, serving IMAP as well as POP3."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, None, None)
        self.imap_port = free_port()

    def config_text(self, uid: int, gid: int) -> str:
        return super().config_text(uid, gid) + IMAP_CONF.format(imap_port=self.imap_port)


class Site:
    """Dovecot and popgate on the same Maildirs."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mail = base / "mail"
        for user in USERS:
            for sub in ("cur", "new", "tmp"):
                (self.mail / user / sub).mkdir(parents=True)
        self.passwd = base / "passwd"
        self.passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in USERS.items()))
        self.dovecot = DovecotIMAP(base)
        self.popgate: PopgateProcess | None = None
        self._counter = 0

    def start(self) -> Site:
        self.dovecot.start()
        st = os.stat(self.mail / "alice")
        self.owner = (st.st_uid, st.st_gid)  # as Dovecot's mail processes run
        self.popgate = self.popgate_with("uidl=dovecot", "--enable-last")
        return self

    def popgate_with(self, options: str, *args: str) -> PopgateProcess:
        return PopgateProcess(["--auth", f"passwd-file:{self.passwd}",
                               "--store", f"maildir:{self.mail}/%n,{options}", *args],
                              log_path=str(self.base / f"popgate-{free_port()}.log")).__enter__()

    def stop(self) -> None:
        if self.popgate is not None:
            self.popgate.stop()
        self.dovecot.stop()

    def deliver(self, user: str, subject: str) -> str:
        """A message written into new/ the way an MTA does, as the mail's owner."""
        self._counter += 1
        name = f"{int(time.time())}.M{self._counter}P{os.getpid()}.test"
        tmp = self.mail / user / "tmp" / name
        tmp.write_bytes(f"From: t@example.org\nSubject: {subject}\n\nbody of {subject}\n".encode())
        os.chown(tmp, *self.owner)
        os.rename(tmp, self.mail / user / "new" / name)
        return name

    def files(self, user: str) -> list[str]:
        box = self.mail / user
        return sorted(f"{sub}/{n}" for sub in ("new", "cur") for n in os.listdir(box / sub))

    def pop3(self, user: str, port: int | None = None) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", port or self.popgate.port, timeout=20)  # type: ignore[union-attr]
        client.user(user)
        client.pass_(USERS[user])
        return client

    def dovecot_pop3(self, user: str) -> poplib.POP3:
        return self.pop3(user, self.dovecot.port)

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.dovecot.imap_port, timeout=20)
        client.login(user, USERS[user])
        client.select("INBOX")
        return client


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not os.path.exists("/usr/sbin/dovecot"):
        need_program("dovecot", "dovecot-imapd")
    if not os.path.exists("/usr/lib/dovecot/imap"):
        pytest.skip("Dovecot's IMAP server is missing (apt-get install dovecot-imapd)")
    base = Path(tempfile.mkdtemp(prefix="popgate-imap-"))
    os.chmod(base, 0o755)
    running = Site(base)
    try:
        yield running.start()
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def flags(client: imaplib.IMAP4) -> dict[int, set[str]]:
    """Sequence number -> flags, for the whole mailbox."""
    typ, data = client.fetch("1:*", "(FLAGS)")
    assert typ == "OK", data
    out = {}
    for item in data:
        assert item is not None
        text = item.decode() if isinstance(item, bytes) else item[0].decode()
        match = re.match(r"(\d+) \(FLAGS \(([^)]*)\)\)", text)
        assert match, text
        out[int(match.group(1))] = set(match.group(2).split())
    return out


def uidls(client: poplib.POP3) -> list[bytes]:
    return client.uidl()[1]


def test_retr_is_seen_over_imap(site: Site) -> None:
    """RETR marks \\Seen (at QUIT), while Dovecot moves the same files from
    new/ to cur/ under the POP3 session; TOP marks nothing; LAST counts."""
    for subject in ("one", "two", "three"):
        site.deliver("alice", subject)
    pop = site.pop3("alice")
    assert pop.stat()[0] == 3
    imap = site.imap("alice")  # SELECT: Dovecot moves new/ to cur/ now
    assert not any(f for f in site.files("alice") if f.startswith("new/"))
    assert b"body of one" in b"\n".join(pop.retr(1)[1])
    pop.retr(2)
    pop.top(3, 0)
    assert pop._shortcmd("LAST") == b"+OK 2"  # type: ignore[attr-defined]
    pop.quit()
    imap.logout()
    imap = site.imap("alice")
    assert flags(imap) == {1: {"\\Seen"}, 2: {"\\Seen"}, 3: set()}
    imap.logout()
    assert len(site.files("alice")) == 3  # nothing lost, nothing doubled


def test_imap_expunge_during_a_pop3_session(site: Site) -> None:
    first, second = site.deliver("erin", "keep"), site.deliver("erin", "expunged")
    pop = site.pop3("erin")
    pop.retr(2)  # read, so QUIT would mark it: it must not come back
    imap = site.imap("erin")
    imap.store("2", "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\]"):
        pop.retr(2)
    assert pop.stat()[0] == 2  # the session's snapshot stands
    pop.retr(1)
    pop.dele(2)  # already gone: what the user wanted
    assert pop.quit().startswith(b"+OK")
    files = site.files("erin")
    assert len(files) == 1 and first in files[0] and second not in "".join(files)
    imap = site.imap("erin")
    assert flags(imap) == {1: {"\\Seen"}}
    imap.logout()
    pop = site.pop3("erin")
    assert pop.stat()[0] == 1
    pop.quit()


def test_uidl_dovecot_equals_dovecots_pop3(site: Site) -> None:
    for subject in ("a", "b", "c"):
        site.deliver("bob", subject)
    dovecot = site.dovecot_pop3("bob")  # Dovecot lists them: dovecot-uidlist
    theirs = uidls(dovecot)
    dovecot.quit()
    ours = site.pop3("bob")
    assert uidls(ours) == theirs and len(theirs) == 3
    ours.retr(1)  # renaming for the S flag keeps the UIDL
    ours.quit()

    imap = site.imap("bob")
    imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()),
                b"From: i@example.org\r\nSubject: appended\r\n\r\nover IMAP\r\n")
    imap.store("2", "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()
    unlisted = site.deliver("bob", "not listed yet")

    ours = site.pop3("bob")
    before = uidls(ours)
    ours.quit()
    # Dovecot has not listed the last one: popgate serves it with its own
    # UIDL (the base file name); the others already match.
    assert before[-1] == b"4 " + unlisted.encode()

    dovecot = site.dovecot_pop3("bob")
    theirs = uidls(dovecot)
    dovecot.quit()
    ours = site.pop3("bob")
    after = uidls(ours)
    ours.quit()
    assert after == theirs and len(after) == 4
    assert before[:3] == after[:3]
    assert re.fullmatch(rb"\d [0-9a-f]{16}", after[-1])  # now Dovecot's


def test_soft_delete_keeps_the_message_for_imap(site: Site) -> None:
    site.deliver("carol", "soft")
    site.deliver("carol", "stays")
    before = site.files("carol")
    popgate = site.popgate_with("deleted_flag=" + KEYWORD)
    try:
        soft_delete(site, popgate.port, before)
    finally:
        popgate.stop()


def soft_delete(site: Site, port: int, before: list[str]) -> None:
    pop = site.pop3("carol", port)
    pop.dele(1)
    # Dovecot has no letter for the keyword yet: nothing is deleted.
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
        pop.quit()
    assert site.files("carol") == before

    imap = site.imap("carol")  # setting the keyword once registers it
    imap.store("2", "+FLAGS", f"({KEYWORD})")
    imap.store("2", "-FLAGS", f"({KEYWORD})")
    imap.logout()
    pop = site.pop3("carol", port)
    pop.dele(1)
    assert pop.quit().startswith(b"+OK")
    imap = site.imap("carol")
    assert flags(imap) == {1: {KEYWORD}, 2: set()}
    imap.logout()
    pop = site.pop3("carol", port)
    assert pop.stat()[0] == 1
    assert b"body of stays" in b"\n".join(pop.retr(1)[1])
    pop.quit()


def test_flag_updates_off_leaves_files_untouched(site: Site) -> None:
    site.deliver("dave", "x")
    site.deliver("dave", "y")
    before = site.files("dave")
    popgate = site.popgate_with("flag_updates=no")
    try:
        pop = site.pop3("dave", popgate.port)
        pop.retr(1)
        pop.retr(2)
        pop.quit()
    finally:
        popgate.stop()
    assert site.files("dave") == before
    imap = site.imap("dave")
    assert [f - {"\\Recent"} for f in flags(imap).values()] == [set(), set()]
    imap.logout()
