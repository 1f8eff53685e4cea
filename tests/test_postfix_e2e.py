"""
End to end with a real Postfix (Debian's package, a throwaway instance):
mail sent over SMTP is delivered by Postfix

- over LMTP to popgate (C{virtual_transport = lmtp:inet:...}),
- through C{popgate deliver} as a C{pipe} transport running as C{nobody},
- by Postfix's own local(8) into an mbox spool (fcntl + dotlock),

and fetched back over POP3 from the real C{twistd popgate}, byte for byte.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from popgate.cred.schemes import hash_password
from tests.pop3_oracle import RawClient
from tests.popgate_server import PopgateProcess, free_port
from tests.postfix_server import PIPE_USER, PostfixServer, find_pipe_python, write_popgate_wrapper
from tests.services import need, need_program

pytestmark = pytest.mark.integration

PASSWORD = "pw"
WAIT = 60.0

# What the body of every test message holds: lines POP3 must dot-stuff,
# lines mbox writers must quote, 8-bit text, a long line (but shorter than
# the 998 octets beyond which Postfix's LMTP client folds lines).
BODY = (b"first line\r\n"
        b".a line starting with a dot\r\n"
        b".\r\n"
        b"From the start of a line\r\n"
        b"caf\xc3\xa9 8-bit\r\n"
        + b"long " * 180 + b"\r\n"
        b"last line\r\n")


def wait_for(what: str, check: Callable[[], Any], log: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


class POP3(RawClient):
    """A logged-in L{RawClient}."""

    def __init__(self, port: int, user: str) -> None:
        super().__init__(port)
        assert self.greeting.startswith(b"+OK")
        assert self.cmd(b"USER " + user.encode()).startswith(b"+OK")
        assert self.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")

    def unstuffed_lines(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".":
            lines.append(line[1:] if line.startswith(b".") else line)
        return lines

    def messages(self) -> list[tuple[int, bytes]]:
        """(size from LIST, the message as sent by RETR, un-stuffed)."""
        assert self.cmd(b"LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in self.unstuffed_lines()]
        out = []
        for number, size in enumerate(sizes, 1):
            assert self.cmd(b"RETR %d" % number).startswith(b"+OK")
            out.append((size, b"".join(line + b"\r\n" for line in self.unstuffed_lines())))
        return out

    def close(self, quit: bool = True) -> None:
        if quit:
            assert self.cmd(b"QUIT").startswith(b"+OK")
        self.sock.close()


def fetch_all(port: int, user: str) -> list[tuple[int, bytes]]:
    client = POP3(port, user)
    try:
        return client.messages()
    finally:
        client.close()


def send(port: int, sender: str, recipient: str, subject: str, body: bytes = BODY) -> bytes:
    message = b"Subject: " + subject.encode() + b"\r\nFrom: <" + sender.encode() + b">\r\n\r\n" + body
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, [recipient], message)
    return message


def header_values(message: bytes, name: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return re.findall(rb"(?im)^" + re.escape(name) + rb":[ \t]*([^\r\n]*)", head)


class Site:
    """Postfix, the popgate servers and their files."""

    def __init__(self, root: Path, postfix: PostfixServer, maildir_pop3: PopgateProcess,
                 mbox_pop3: PopgateProcess, lmtp_port: int, command_postfix: PostfixServer) -> None:
        self.root = root
        self.postfix = postfix
        self.command_postfix = command_postfix
        self.maildir_pop3 = maildir_pop3
        self.mbox_pop3 = mbox_pop3
        self.lmtp_port = lmtp_port

    def log(self) -> str:
        return (f"--- postfix ---\n{self.postfix.log()}\n--- postfix (mailbox_command) ---\n"
                f"{self.command_postfix.log()}\n--- popgate (maildir) ---\n"
                f"{self.maildir_pop3.log()}\n--- popgate (mbox) ---\n{self.mbox_pop3.log()}")

    def fetch_subject(self, port: int, user: str, subject: str) -> tuple[int, bytes]:
        def find() -> tuple[int, bytes] | None:
            for size, message in fetch_all(port, user):
                if b"\r\nSubject: " + subject.encode() + b"\r\n" in b"\r\n" + message:
                    return size, message
            return None

        return wait_for(f"{subject} in {user}'s mailbox", find, self.log)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    need_program("postfix", "postfix")
    need(os.geteuid() == 0, "starting Postfix needs root")
    root = Path(tempfile.mkdtemp(prefix="popgate-postfix-"))
    try:
        root.chmod(0o755)  # the pipe runs as nobody: it must reach its files
        python = find_pipe_python(PIPE_USER, root)
        need(python is not None, f"no python that {PIPE_USER} can run imports popgate")
        users = root / "users"
        users.write_text("".join(f"{u}:{hash_password(PASSWORD, rounds=4, prefix=False)}\n"
                                 for u in ("alice", "bob", "nobody")))
        users.chmod(0o644)
        mail = root / "mail"
        mail.mkdir()
        # bob (pipe) and nobody (mailbox_command) get mail written as nobody;
        # POP3 logins as root must not create their Maildirs first
        for sub in ("", "bob", "bob/cur", "bob/new", "bob/tmp",
                    "nobody", "nobody/cur", "nobody/new", "nobody/tmp"):
            (mail / sub).mkdir(exist_ok=True)
            shutil.chown(mail / sub, PIPE_USER)
        spool = root / "spool"
        spool.mkdir()
        spool.chmod(0o1777)  # like /var/mail: local(8) creates spools and dotlocks there
        popgate = write_popgate_wrapper(root / "popgate", python)  # type: ignore[arg-type]
        lmtp_port = free_port()
        auth = f"htpasswd:{users}"
        maildir_store = f"maildir:{mail}/%n"
        master_cf = (
            "popgate-pipe unix - n n - - pipe\n"
            f"  flags=DRhu user={PIPE_USER} null_sender= argv={popgate} deliver -f ${{sender}} -u ${{recipient}}"
            f" --store {maildir_store} --auth {auth}\n")
        main_cf = {
            "virtual_mailbox_domains": "lmtp.test, pipe.test",
            "virtual_transport": f"lmtp:inet:127.0.0.1:{lmtp_port}",
            "transport_maps": "inline:{ pipe.test=popgate-pipe }",
            "popgate-pipe_destination_recipient_limit": "1",
            "mail_spool_directory": str(spool),
            "mailbox_delivery_lock": "fcntl, dotlock",
        }
        lmtp_args = ["--lmtp", f"tcp:{lmtp_port}:interface=127.0.0.1"]
        with PopgateProcess(["--auth", auth, "--store", maildir_store, *lmtp_args],
                            log_path=str(root / "popgate-maildir.log")) as maildir_pop3, \
                PopgateProcess(["--auth", auth, "--store", f"mbox:{spool}/%u"],
                               log_path=str(root / "popgate-mbox.log")) as mbox_pop3:
            # A second Postfix whose local(8) runs popgate deliver as mailbox_command.
            command_cf = {"mailbox_command": f'{popgate} deliver -u "$USER" --store {maildir_store}'
                                             f" --auth {auth}"}
            with PostfixServer(root / "postfix", main_cf, master_cf) as postfix, \
                    PostfixServer(root / "postfix-command", command_cf) as command_postfix:
                yield Site(root, postfix, maildir_pop3, mbox_pop3, lmtp_port, command_postfix)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- LMTP


def test_postfix_delivers_over_lmtp(site):
    subject = f"lmtp {uuid.uuid4()}"
    sent = send(site.postfix.port, "sender@example.net", "alice@lmtp.test", subject)
    size, message = site.fetch_subject(site.maildir_pop3.port, "alice", subject)
    assert message.endswith(b"\r\n\r\n" + BODY)
    assert size == len(message)
    assert header_values(message, b"Return-Path") == [b"<sender@example.net>"]
    assert header_values(message, b"Delivered-To") == [b"alice@lmtp.test"]
    assert sent.split(b"\r\n\r\n", 1)[1] == message.split(b"\r\n\r\n", 1)[1]


def test_unknown_user_is_refused_at_rcpt_time_over_lmtp(site):
    send(site.postfix.port, "sender@example.net", "ghost@lmtp.test", f"ghost {uuid.uuid4()}")
    wait_for("the LMTP refusal in Postfix's log",
             lambda: re.search(r"to=<ghost@lmtp\.test>.*status=bounced .*550 5\.1\.1 <ghost@lmtp\.test> "
                               r"User unknown", site.postfix.log()), site.log)


# -- pipe: popgate deliver


def test_postfix_delivers_through_popgate_deliver(site):
    subject = f"pipe {uuid.uuid4()}"
    send(site.postfix.port, "", "Bob@pipe.test", subject)
    size, message = site.fetch_subject(site.maildir_pop3.port, "bob", subject)
    assert message.endswith(b"\r\n\r\n" + BODY)
    assert size == len(message)
    # Postfix's D and R flags added them: popgate deliver adds no second copy
    assert header_values(message, b"Return-Path") == [b"<>"]
    assert [v.lower() for v in header_values(message, b"Delivered-To")] == [b"bob@pipe.test"]


def test_unknown_user_bounces_through_popgate_deliver(site):
    send(site.postfix.port, "sender@example.net", "ghost@pipe.test", f"ghost {uuid.uuid4()}")
    wait_for("the pipe's EX_NOUSER in Postfix's log",
             lambda: re.search(r"to=<ghost@pipe\.test>.*status=bounced .*no such user", site.postfix.log()),
             site.log)


# -- Postfix local(8) writing an mbox, popgate reading it


def test_mbox_written_by_postfix_local_is_read_byte_exact(site):
    subject = f"mbox {uuid.uuid4()}"
    send(site.postfix.port, "sender@example.net", "nobody@localhost", subject)
    size, message = site.fetch_subject(site.mbox_pop3.port, "nobody", subject)
    assert message.endswith(b"\r\n\r\n" + BODY)
    assert size == len(message)
    spool = (site.root / "spool" / "nobody").read_bytes()
    assert b"\n>From the start of a line\n" in spool  # Postfix quoted it; popgate un-quoted it


def test_mail_arriving_during_a_pop3_session_is_kept(site):
    first = f"before {uuid.uuid4()}"
    send(site.postfix.port, "sender@example.net", "nobody@localhost", first)
    site.fetch_subject(site.mbox_pop3.port, "nobody", first)
    spool = site.root / "spool" / "nobody"
    session = POP3(site.mbox_pop3.port, "nobody")
    before = session.messages()
    late = f"during {uuid.uuid4()}"
    send(site.postfix.port, "sender@example.net", "nobody@localhost", late)
    wait_for("local(8) to append to the spool", lambda: late.encode() in spool.read_bytes(), site.log)
    assert session.messages() == before  # the snapshot does not change
    for number in range(1, len(before) + 1):
        assert session.cmd(b"DELE %d" % number).startswith(b"+OK")
    session.close()
    after = fetch_all(site.mbox_pop3.port, "nobody")
    assert len(after) == 1
    assert b"Subject: " + late.encode() + b"\r\n" in after[0][1]
    assert after[0][1].endswith(b"\r\n\r\n" + BODY)
    assert not (site.root / "spool" / "nobody.lock").exists()
    assert os.stat(spool).st_uid == 65534  # still the owner local(8) delivers as
    # Postfix can still deliver to the rewritten spool
    again = f"after {uuid.uuid4()}"
    send(site.postfix.port, "sender@example.net", "nobody@localhost", again)
    site.fetch_subject(site.mbox_pop3.port, "nobody", again)


# -- local(8) with mailbox_command = popgate deliver -u "$USER"


def test_postfix_local_delivers_through_mailbox_command(site):
    subject = f"command {uuid.uuid4()}"
    send(site.command_postfix.port, "sender@example.net", "nobody@localhost", subject)
    size, message = site.fetch_subject(site.maildir_pop3.port, "nobody", subject)
    assert message.endswith(b"\r\n\r\n" + BODY)  # local(8) does not quote "From " for commands
    assert size == len(message)
    assert not message.startswith(b"From ")  # local(8)'s From_ line was removed
    assert header_values(message, b"Return-Path") == [b"<sender@example.net>"]
    assert header_values(message, b"Delivered-To") == [b"nobody@localhost"]
