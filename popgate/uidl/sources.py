"""
The UIDLs the old server gave its clients, one user at a time, as
L{popgate.uidl.message.Message}s keyed by the old UIDL:

  - L{from_list}: a plain C{uidl message-id} list (Message-ID only);
  - L{from_dovecot}: Dovecot's C{dovecot-uidlist} in the old Maildir and its
    C{pop3_uidl_format}, read as Dovecot's POP3 reads them
    (L{popgate.stores.maildir_dovecot}), each message digested from its file;
  - L{popgate.uidl.pop3source}: a live POP3 server.

Blocking: the command runs them before and without a reactor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.stores import maildir_dovecot
from popgate.stores.maildir_scan import Entry, base_name
from popgate.uidl.message import Message, describe_stream

#: A list file larger than this is refused (a user's list, not a spool).
MAX_LIST_BYTES = 64 << 20


class SourceError(Exception):
    """The old side of one user cannot be read; the message says why."""


def from_list(path: str) -> list[Message]:
    """
    C{uidl message-id} lines (blank lines and C{#} comments skipped): the
    old UIDLs of messages the new store is to have under those Message-IDs.

    @raise SourceError: the file is missing or unreadable, or a line is not
        a valid UIDL (1-70 printable octets) and a Message-ID, or a UIDL is
        listed twice.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_LIST_BYTES:
        raise SourceError(f"{path}: larger than {MAX_LIST_BYTES} octets")
    messages: list[Message] = []
    seen: set[bytes] = set()
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        words = line.split()
        if len(words) != 2 or not is_valid_uid(words[0]):
            raise SourceError(f"{path}:{number}: not 'UIDL MESSAGE-ID' "
                              "(a UIDL is 1-70 printable characters)")
        uidl, mid = words
        if uidl in seen:
            raise SourceError(f"{path}:{number}: UIDL {uidl.decode()} listed twice")
        seen.add(uidl)
        messages.append(Message(uidl.decode("ascii"), uidl,
                                message_id=mid.decode("utf-8", "replace")))
    return messages


def _entries(directory: str) -> list[Entry]:
    """The old Maildir's files (nothing is written there: no size cache)."""
    entries: list[Entry] = []
    seen: set[str] = set()
    for subdir in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(directory, subdir))
        except FileNotFoundError:
            continue
        for name in names:
            base = base_name(name)
            if name[:1] == "." or base in seen:
                continue
            seen.add(base)
            entries.append(Entry(subdir, name, base, MessageInfo.unchecked(b"-", 0)))
    return entries


def from_dovecot(directory: str, uidl_format: Sequence[object]) -> list[Message]:
    """
    The messages Dovecot's POP3 has listed in the Maildir C{directory},
    with the UIDLs it served (C{P} fields, else C{uidl_format} expanded:
    L{maildir_dovecot.parse_format}); messages not in C{dovecot-uidlist}
    were never served by Dovecot and are left out.

    @raise SourceError: no Maildir, or no usable uidlist.
    """
    if not os.path.isdir(os.path.join(directory, "cur")):
        raise SourceError(f"no Maildir at {directory}")
    path = os.path.join(directory, maildir_dovecot.UIDLIST)
    entries = _entries(directory)
    try:
        uidlist = maildir_dovecot.read_uidlist(path, {e.base for e in entries})
    except Exception as e:  # errors.TemporaryFailure: unreadable, too large
        raise SourceError(str(e)) from None
    if uidlist is None:
        raise SourceError(f"no usable {path}")
    options = maildir_dovecot.DovecotOptions(uidl=tuple(uidl_format))  # type: ignore[arg-type]
    view = maildir_dovecot.build_view(entries, uidlist, options, None)
    messages = []
    for entry in view.entries:
        if entry.base not in uidlist.records:
            continue
        uid = entry.info.uid
        try:
            with open(os.path.join(directory, entry.subdir, entry.name), "rb") as f:
                messages.append(describe_stream(uid.decode("ascii"), uid, f.read))
        except FileNotFoundError:
            continue  # expunged meanwhile
        except OSError as e:
            raise SourceError(f"cannot read {entry.name}: {e.strerror}") from None
    return messages
