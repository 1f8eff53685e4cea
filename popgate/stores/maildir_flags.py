"""
Adding flags to a Maildir message beside an IMAP server that renames the
same files: the C{S} (seen) flag after RETR, a keyword letter for a soft
deletion.

A Maildir keeps a message's flags in its file name (C{base:2,FS}), so a
flag change is a rename, and Dovecot renames the same files whenever an
IMAP client flags a message or its sync moves one from C{new/} to C{cur/}.
Every change here is one atomic rename that never replaces a file
(C{renameat2(RENAME_NOREPLACE)}); if the file is no longer where the
snapshot saw it, it is found again by its base name and the flags are
worked out anew from its current name, a bounded number of times.  A
message someone expunged stays expunged: nothing here creates a name for a
file that is gone.

Blocking functions only: the store calls them in its thread pool.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os

from twisted.logger import Logger

log = Logger(namespace="popgate.stores.maildir")

#: How often a change is tried again after another agent moved the file.
MAX_ATTEMPTS = 10
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# The kernel or the file system cannot do RENAME_NOREPLACE: link + unlink.
_NO_RENAMEAT2 = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


def _load_renameat2() -> ctypes._NamedFuncPointer | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None  # not glibc 2.28+ (or not Linux)
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    return function


_renameat2 = _load_renameat2()


class Outcome(enum.Enum):
    """What L{add_flags} did."""

    CHANGED = "changed"  # renamed to carry the flags
    ALREADY = "already"  # it had them (and was in cur/) already
    GONE = "gone"  # expunged by someone else: nothing to flag
    SKIPPED = "skipped"  # a name whose info part is not ":2," (left alone)
    RACING = "racing"  # moved again at every attempt: given up


def split_name(name: str) -> tuple[str, str | None]:
    """A Maildir file name's base and its flags: C{("base", "FS")} for
    C{base:2,FS}, C{("base", "")} for a bare name, C{(base, None)} when
    the info part is not the C{2,} kind (experimental C{1,} semantics)."""
    base, colon, info = name.partition(":")
    if not colon:
        return base, ""
    if not info.startswith("2,"):
        return base, None
    return base, info[2:]


def flags_of(name: str) -> str:
    """The flag letters of a file name (empty for a bare name)."""
    return split_name(name)[1] or ""


def with_flags(name: str, letters: str) -> str | None:
    """
    C{name} with C{letters} added: the flags without duplicates and in
    ASCII order, as the Maildir specification asks (system flags, upper
    case, before Dovecot's keyword letters, lower case).  C{None} for a
    name whose info part is not C{2,}.
    """
    base, flags = split_name(name)
    if flags is None:
        return None
    return f"{base}:2,{''.join(sorted(set(flags) | set(letters)))}"


def find_current(directory: str, base: str) -> tuple[str, str] | None:
    """Where the message with C{base} is now, C{(subdir, name)}, looking
    in C{cur/} first (where renamed messages go); C{None} if in neither."""
    for subdir in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(directory, subdir))
        except FileNotFoundError:
            continue
        for name in names:
            if name.partition(":")[0] == base:
                return subdir, name
    return None


class Locator:
    """
    L{find_current} for many messages of one Maildir: one listing of
    C{new/} and C{cur/} answers every look-up, and is taken again when an
    answer from it turns out stale.  (After an IMAP client opened the
    mailbox, every file of a POP3 session's snapshot may have moved from
    C{new/} to C{cur/}: one listing each would be quadratic.)
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._where: dict[str, tuple[str, str]] | None = None

    def find(self, base: str, fresh: bool = False) -> tuple[str, str] | None:
        if self._where is None or fresh:
            where: dict[str, tuple[str, str]] = {}
            for subdir in ("new", "cur"):  # cur/ last: it wins, as in find_current
                try:
                    names = os.listdir(os.path.join(self.directory, subdir))
                except FileNotFoundError:
                    continue
                for name in names:
                    where[name.partition(":")[0]] = (subdir, name)
            self._where = where
        return self._where.get(base)


def rename_noreplace(source: str, target: str) -> None:
    """
    Rename C{source} to C{target}, failing with C{FileExistsError} instead
    of replacing a C{target} that exists.  Where C{renameat2} cannot be
    used, C{link} then C{unlink}: if the source vanished in between (an
    expunge, a rename by another agent), the link is taken back and
    C{FileNotFoundError} raised, so an expunged message is never brought
    back.

    @raise FileNotFoundError: C{source} is not there (any more).
    @raise FileExistsError: C{target} exists.
    """
    global _renameat2
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                      _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _NO_RENAMEAT2:
            raise OSError(code, os.strerror(code), source, None, target)
        if code == errno.ENOSYS:
            _renameat2 = None  # an old kernel: no point asking again
    os.link(source, target)
    try:
        os.unlink(source)
    except FileNotFoundError:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        raise


def add_flags(directory: str, subdir: str, name: str, letters: str,
              attempts: int = MAX_ATTEMPTS, locator: Locator | None = None) -> Outcome:
    """
    Give the message at C{directory/subdir/name} the flags C{letters},
    moving it to C{cur/} (a message with flags belongs there), by one
    atomic rename.  When another agent has moved or reflagged it since
    (C{ENOENT}), find it again by its base name and start over from its
    current name, at most C{attempts} times.

    @param locator: shared by the calls for one Maildir's messages.
    @raise OSError: a rename failed for another reason (permissions, I/O).
    """
    base = name.partition(":")[0]
    locator = locator or Locator(directory)
    for attempt in range(attempts):
        target = with_flags(name, letters)
        if target is None:
            return Outcome.SKIPPED
        if subdir == "cur" and target == name:
            return Outcome.ALREADY
        try:
            rename_noreplace(os.path.join(directory, subdir, name),
                             os.path.join(directory, "cur", target))
        except FileNotFoundError:
            pass  # moved, reflagged or expunged meanwhile: look again
        except FileExistsError:
            # Another name of this message already carries the flags (an
            # agent copying it from new/ to cur/ by link and unlink, not
            # finished yet): that one wins, this one is its to remove.
            return Outcome.ALREADY
        else:
            return Outcome.CHANGED
        # The shared listing first; if that was stale too, a fresh one.
        found = locator.find(base, fresh=attempt > 0)
        if found is None and attempt == 0:
            found = locator.find(base, fresh=True)
        if found is None:
            return Outcome.GONE
        subdir, name = found
    log.warn("gave up flagging {base} in {directory}: it moved at each of {n} attempts",
             base=base, directory=directory, n=attempts)
    return Outcome.RACING
