"""
Reading what Dovecot keeps beside a Maildir, read-only: C{dovecot-uidlist}
(each message's IMAP UID, the UIDVALIDITY, and any POP3 UIDL Dovecot
stored), so popgate can serve the UIDLs Dovecot's POP3 served
(C{pop3_uidl_format}), and C{dovecot-keywords} (which letter of a file
name is which IMAP keyword).

popgate never writes either file.  Everything here is blocking (the
store calls it in a thread) except L{Signature.cached}.

The uidlist, version 3 (Dovecot 1.1 and later; version 1 is read too)::

    3 V1700000000 N43 G5f0c...
    41 :1700000001.M1P1.host,S=120,W=123
    42 W1290 P0000002a6553f100 :1700000002.M2P2.host

A record is the UID, extension fields (a capital letter and a value:
C{P} the POP3 UIDL, C{P} alone meaning "the base file name", C{G} the
GUID, C{O} the POP3 order), then C{:} and the file's base name.  Dovecot
appends records in place, so a reader can see a last line half written:
a line without its newline is not used.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from twisted.logger import Logger

from popgate import errors
from popgate.maildrop import MessageInfo, is_valid_uid
from popgate.stores import nowait
from popgate.stores.maildir_flags import flags_of
from popgate.stores.maildir_scan import Entry

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
#: Dovecot's default pop3_uidl_format.
DEFAULT_FORMAT = "%08Xu%08Xv"
#: A uidlist larger than this is not read (the login fails, [SYS/TEMP]):
#: about three million messages.
MAX_UIDLIST_BYTES = 256 << 20
#: A longer record is skipped (a base name is at most 255 octets).
MAX_LINE = 8192
#: Dovecot's MAILDIR_MAX_KEYWORDS: the letters a-z.
MAX_KEYWORDS = 26
# Dovecot's POP3 lists a message without an order number after those
# with one (MAIL_SORT_POP3_ORDER, (uint32_t)-1).
_NO_ORDER = 2**32 - 1

log = Logger(namespace="popgate.stores.maildir")


# -- pop3_uidl_format


_FORMAT_TOKEN = re.compile(r"%(0?)(\d*)([XLUR]*)(?:\{(\w+)\}|(.))", re.S)
_VARIABLES = {"u": "u", "uid": "u", "v": "v", "uidvalidity": "v", "f": "f", "filename": "f",
              "g": "g", "guid": "g", "%": "%"}


@dataclass(frozen=True)
class _Field:
    variable: str
    zero: bool
    width: int
    modifiers: str


def parse_format(text: str) -> tuple[str | _Field, ...]:
    """
    A C{pop3_uidl_format} as Dovecot's var_expand reads it, for the
    variables that can be had from the uidlist: C{%u} (UID), C{%v}
    (UIDVALIDITY), C{%f} (base file name), C{%g} (GUID: the C{G} field,
    else the base file name), their long forms (C{%{uid}}), a width with
    or without zero padding (C{%08u}), and the modifiers C{X} (lower-case
    hexadecimal, as Dovecot's), C{L}, C{U}, C{R}.

    @raise ValueError: C{%m} (a digest of the headers, which means reading
        every message), or anything else this does not read as Dovecot does.
    """
    if not text:
        raise ValueError("uidl_format is empty")
    parts: list[str | _Field] = []
    pos = 0
    while pos < len(text):
        percent = text.find("%", pos)
        if percent < 0:
            parts.append(text[pos:])
            break
        if percent > pos:
            parts.append(text[pos:percent])
        match = _FORMAT_TOKEN.match(text, percent)
        if match is None:
            raise ValueError(f"uidl_format {text!r}: cannot read {text[percent:]!r}")
        zero, width, modifiers, long_name, short_name = match.groups()
        name = long_name or short_name
        if name in ("m", "md5"):
            raise ValueError("uidl_format: %m (the header MD5) is not supported; "
                             "%u, %v, %f and %g are")
        variable = _VARIABLES.get(name)
        if variable is None:
            raise ValueError(f"uidl_format {text!r}: unknown variable %{name} "
                             "(known: %u, %v, %f, %g)")
        if variable == "%":
            parts.append("%")
        else:
            parts.append(_Field(variable, bool(zero), int(width or 0), modifiers))
        pos = match.end()
    if not any(isinstance(p, _Field) for p in parts):
        raise ValueError(f"uidl_format {text!r} names no variable: every message would "
                         "have the same UIDL")
    literal = "".join(p for p in parts if isinstance(p, str))
    if literal and not is_valid_uid(literal.encode("ascii", "replace")):
        raise ValueError(f"uidl_format {text!r}: only printable ASCII without spaces")
    return tuple(parts)


def _modify(value: str, modifiers: str) -> str:
    for modifier in modifiers:
        if modifier == "X":
            value = format(int(value), "x") if value.isdigit() else "0"
        elif modifier == "L":
            value = value.lower()
        elif modifier == "U":
            value = value.upper()
        elif modifier == "R":
            value = value[::-1]
    return value


def expand(parts: Sequence[str | _Field], uid: int, uidvalidity: int, filename: str,
           guid: str) -> str:
    """One message's UIDL by C{parts} (L{parse_format})."""
    values = {"u": str(uid), "v": str(uidvalidity), "f": filename, "g": guid}
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = _modify(values[part.variable], part.modifiers)
        if part.zero:
            value = value.rjust(part.width, "0")  # padding, never cutting
        elif part.width:
            value = value[:part.width]
        out.append(value)
    return "".join(out)


# -- dovecot-uidlist


@dataclass(frozen=True, slots=True)
class Record:
    """One message as the uidlist has it."""

    uid: int
    pop3_uidl: str | None  # the P field; "" for "the base file name"
    guid: str | None
    order: int | None


@dataclass
class UidList:
    """
    The records of a uidlist for the messages of one snapshot.

    @ivar skipped: lines that were not valid records (and were not used).
    """

    uidvalidity: int
    records: dict[str, Record]
    skipped: int = 0


def _lines(f: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Complete lines of C{f}, each at most C{limit} octets (longer ones
    come back as C{None}); a last line without its newline is left out."""
    read = f.readline
    while True:
        line = read(limit + 1)
        if not line:
            return
        if not line.endswith(b"\n"):
            if len(line) <= limit:
                return  # the end of the file, half written
            while line and not line.endswith(b"\n"):  # skip the rest of it
                line = read(limit + 1)
            yield None
            continue
        yield line[:-1]


def _header(line: bytes) -> tuple[int, int] | None:
    """(version, UIDVALIDITY) of a uidlist's first line, if it is good."""
    if len(line) < 2 or not line[:1].isdigit() or line[1:2] != b" ":
        return None
    version = line[0] - 0x30
    if version == 1:
        words = line[2:].split()
        if len(words) < 2 or not all(w.isdigit() for w in words[:2]):
            return None
        uidvalidity, next_uid = int(words[0]), int(words[1])
    elif version == 3:
        fields = {w[:1]: w[1:] for w in line[2:].split(b" ") if w}
        try:
            uidvalidity, next_uid = int(fields[b"V"]), int(fields[b"N"])
        except (KeyError, ValueError):
            return None
    else:
        return None
    if not 0 < uidvalidity < 2**32 or next_uid <= 0:
        return None
    return version, uidvalidity


def _record(line: bytes, version: int) -> tuple[str, Record] | None:
    """One record line: (base name, record), or C{None} if it is bad."""
    digits = 0
    while digits < len(line) and 0x30 <= line[digits] <= 0x39:
        digits += 1
    if digits == 0 or digits > 10 or line[digits:digits + 1] != b" ":
        return None
    uid = int(line[:digits])
    if not 0 < uid < 2**32 - 1:
        return None
    rest = line[digits:].lstrip(b" ")
    pop3_uidl = guid = None
    order: int | None = None
    if version == 3:
        colon = rest.find(b":")
        if colon < 0:
            return None
        for field in rest[:colon].split():
            key, value = field[:1], field[1:].decode("utf-8", "surrogateescape")
            if key == b"P":
                pop3_uidl = value
            elif key == b"G":
                guid = value or None
            elif key == b"O":
                order = int(value) if value.isdigit() else None
        rest = rest[colon + 1:]
    if not rest or b"/" in rest:
        return None
    name = rest.decode("utf-8", "surrogateescape").partition(":")[0]
    return name, Record(uid, pop3_uidl, guid, order)


def read_uidlist(path: str, wanted: Container[str] | None = None,
                 max_bytes: int = MAX_UIDLIST_BYTES) -> UidList | None:
    """
    The uidlist at C{path}, keeping only the records of base names in
    C{wanted} (memory follows the Maildir, not the file); a later record
    for a name replaces an earlier one, as in Dovecot.  Bad lines are
    skipped and counted.  Blocking.

    @return: C{None} when there is no uidlist, or its header is not one
        (Dovecot will write a new one: it has not listed these messages).
    @raise errors.TemporaryFailure: it cannot be read, or is larger than
        C{max_bytes}: serving other UIDLs than Dovecot would make every
        client download everything again, so the login waits instead.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise errors.TemporaryFailure(f"cannot read {path}: {e}") from e
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise errors.TemporaryFailure(
                    f"{path} has {size} octets, more than the {max_bytes} popgate reads")
            lines = _lines(f, MAX_LINE)
            first = next(lines, None)
            header = None if first is None else _header(first)
            if header is None:
                if size:
                    log.warn("{path}: not a Dovecot uidlist header; no message has a "
                             "Dovecot UIDL", path=path)
                return None
            version, uidvalidity = header
            result = UidList(uidvalidity, {})
            records = result.records
            previous = 0
            for line in lines:
                parsed = None if line is None else _record(line, version)
                if parsed is None or parsed[1].uid <= previous:
                    result.skipped += 1
                    continue
                previous = parsed[1].uid
                if wanted is None or parsed[0] in wanted:
                    records[parsed[0]] = parsed[1]
        except OSError as e:
            raise errors.TemporaryFailure(f"cannot read {path}: {e}") from e
    if result.skipped:
        log.warn("{path}: skipped {n} malformed lines", path=path, n=result.skipped)
    return result


# -- dovecot-keywords


def read_keywords(path: str) -> dict[str, str]:
    """
    C{dovecot-keywords}: keyword (lower-cased: Dovecot compares them
    without case) to its letter, C{a} for index 0 up to C{z}.  Lines Dovecot
    would not use are skipped.  Blocking.

    @raise errors.TemporaryFailure: the file exists but cannot be read.
    """
    letters: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return letters
    except OSError as e:
        raise errors.TemporaryFailure(f"cannot read {path}: {e}") from e
    for line in data.split(b"\n"):
        index, space, name = line.partition(b" ")
        if not space or not index.isdigit() or not name:
            continue
        number = int(index)
        keyword = name.decode("utf-8", "replace").lower()
        if number >= MAX_KEYWORDS or keyword in letters:
            continue
        letters[keyword] = chr(ord("a") + number)
    return letters


# -- what a session sees


@dataclass(frozen=True)
class DovecotOptions:
    """
    @ivar uidl: C{None} (popgate's own UIDLs) or the parsed
        C{pop3_uidl_format} to serve Dovecot's.
    @ivar deleted_keyword: the keyword a DELE sets instead of removing
        the file (Dovecot's C{pop3_deleted_flag}), or C{None}.
    """

    uidl: tuple[str | _Field, ...] | None = None
    deleted_keyword: str | None = None

    @property
    def active(self) -> bool:
        return self.uidl is not None or self.deleted_keyword is not None


@dataclass(frozen=True)
class View:
    """
    A snapshot as one session sees it: the messages in Dovecot's POP3
    order with Dovecot's UIDLs (with C{uidl=dovecot}), without the
    soft-deleted ones.

    @ivar unlisted: messages Dovecot has not listed yet, served with
        popgate's own UIDL.
    """

    entries: list[Entry]
    unlisted: int = 0


def _unique(uids: list[bytes]) -> list[bytes]:
    """The UIDLs, a repeated one given C{-2}, C{-3}... (Dovecot's
    C{pop3_uidl_duplicates=rename}): RFC 1939 wants them unique."""
    seen: dict[bytes, int] = {}
    out = []
    for uid in uids:
        if uid in seen:
            seen[uid] += 1
            candidate = b"%s-%d" % (uid, seen[uid])
            while candidate in seen:
                seen[uid] += 1
                candidate = b"%s-%d" % (uid, seen[uid])
            uid = candidate
        seen[uid] = 1
        out.append(uid)
    return out


def _valid(uidl: str) -> bytes:
    raw = uidl.encode("utf-8", "surrogateescape")
    if is_valid_uid(raw):
        return raw
    return hashlib.sha1(raw).hexdigest().encode("ascii")


def build_view(entries: list[Entry], uidlist: UidList | None, options: DovecotOptions,
               hidden_letter: str | None) -> View:
    """What a session sees of C{entries} (a snapshot, not changed)."""
    if hidden_letter is not None:
        entries = [e for e in entries if hidden_letter not in flags_of(e.name)]
    unlisted = 0
    if options.uidl is not None:
        listed: list[tuple[int, int, Entry, str]] = []
        others: list[Entry] = []
        records = uidlist.records if uidlist is not None else {}
        for entry in entries:
            record = records.get(entry.base)
            if record is None:
                others.append(entry)
                continue
            if record.pop3_uidl:
                uidl = record.pop3_uidl
            elif record.pop3_uidl is not None:  # "P" alone: the base name
                uidl = entry.base
            else:
                assert uidlist is not None
                uidl = expand(options.uidl, record.uid, uidlist.uidvalidity, entry.base,
                              record.guid or entry.base)
            order = _NO_ORDER if record.order is None else record.order
            listed.append((order, record.uid, entry, uidl))
        listed.sort(key=lambda item: (item[0], item[1]))
        unlisted = len(others)
        uids = _unique([_valid(uidl) for _, _, _, uidl in listed]
                       + [e.info.uid for e in others])
        entries = [Entry(e.subdir, e.name, e.base, MessageInfo.unchecked(uid, e.info.size))
                   for e, uid in zip([item[2] for item in listed] + others, uids, strict=True)]
    return View(entries, unlisted)


Signature = tuple[int, int, int, int] | None


def signature(path: str) -> Signature:
    """What tells whether a file changed (C{None}: it is missing).  Blocking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cached_signature(path: str) -> Signature | bool:
    """L{signature} without waiting for the disk; C{False} when that
    cannot be told now."""
    try:
        st = nowait.stat_cached(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    if st is None:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ViewCache:
    """
    The last view of each Maildir, reused while its snapshot is the same
    object and C{dovecot-uidlist} and C{dovecot-keywords} are unchanged:
    a client polling a big Maildir then costs two more C{stat()} calls,
    not a read of the uidlist.  Bounded by a total message count.
    """

    def __init__(self, budget: int = 1_000_000) -> None:
        self._budget = budget
        self._held = 0
        self._views: OrderedDict[str, tuple[list[Entry], Signature, Signature, View]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def kept(self, directory: str, entries: list[Entry], uidlist: Signature,
             keywords: Signature) -> View | None:
        with self._lock:
            kept = self._views.get(directory)
            if kept is None or kept[0] is not entries or kept[1:3] != (uidlist, keywords):
                return None
            self._views.move_to_end(directory)
            return kept[3]

    def keep(self, directory: str, entries: list[Entry], uidlist: Signature,
             keywords: Signature, view: View) -> None:
        with self._lock:
            self._drop(directory)
            if len(entries) > self._budget:
                return
            self._views[directory] = (entries, uidlist, keywords, view)
            self._held += len(entries)
            while self._held > self._budget:
                _, (dropped, *_) = self._views.popitem(last=False)
                self._held -= len(dropped)

    def forget(self, directory: str) -> None:
        with self._lock:
            self._drop(directory)

    def _drop(self, directory: str) -> None:
        old = self._views.pop(directory, None)
        if old is not None:
            self._held -= len(old[0])
