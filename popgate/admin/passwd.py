"""
C{popgate passwd FILE USER} and C{popgate pw}: set a user's password in
an htpasswd file, or print a hash for SQL and LDAP users (as
C{doveadm pw}).

The file is rewritten the safe way: a new file in the same directory,
with the old file's mode and owner (0640 and this user for a new file:
the hashes are not for everyone), flushed to disk, then renamed over the
old one, so popgate (which re-reads the file when it changes) sees the
old contents or the new, never a half.  The user's line is replaced where
it is; every other line is kept byte for byte.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import tempfile
import unicodedata
from collections.abc import Callable

from popgate.cred.schemes import hash_password

__all__ = ["PasswdError", "ask_password", "check_user_name", "set_password"]

#: The mode of a new file: readable by popgate's group, not by everyone.
NEW_FILE_MODE = 0o640


class PasswdError(Exception):
    """What went wrong, in one line for the admin."""


def check_user_name(name: str) -> str:
    """
    C{name} if it can be a line of an htpasswd file.

    @raise PasswdError: empty, a C{:} (which ends the name), whitespace or
        a control character (which would corrupt or split the line), or a
        leading C{#} (a comment).
    """
    if not name:
        raise PasswdError("the user name is empty")
    if ":" in name:
        raise PasswdError(f"the user name {name!r} contains ':', which ends a name in the file")
    if name.startswith("#"):
        raise PasswdError(f"the user name {name!r} starts with '#': the line would be a comment")
    for char in name:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise PasswdError(f"the user name {name!r} contains whitespace or a control "
                              "character")
    return name


def ask_password(prompt: Callable[[str], str] = getpass.getpass) -> str:
    """
    Ask twice, without echo; the two must match and not be empty.

    @raise PasswdError: they differ, or standard input ended.
    """
    try:
        first = prompt("New password: ")
        if not first:
            raise PasswdError("empty password refused")
        second = prompt("Retype new password: ")
    except EOFError:
        raise PasswdError("no password given (standard input ended)") from None
    if first != second:
        raise PasswdError("the passwords do not match")
    return first


def _read(path: str) -> tuple[list[bytes], os.stat_result | None]:
    try:
        with open(path, "rb") as f:
            return f.read().splitlines(keepends=True), os.fstat(f.fileno())
    except FileNotFoundError:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise PasswdError(f"cannot create {path}: no directory {directory}") from None
        return [], None
    except IsADirectoryError:
        raise PasswdError(f"{path} is a directory") from None
    except OSError as e:
        raise PasswdError(f"cannot read {path}: {e.strerror}") from None


def _replace(lines: list[bytes], user: bytes, entry: bytes) -> tuple[list[bytes], bool]:
    """The lines with C{user}'s replaced by C{entry} (or appended)."""
    out: list[bytes] = []
    found = False
    for line in lines:
        if line.split(b":", 1)[0].strip() == user and not line.lstrip().startswith(b"#"):
            if not found:
                out.append(entry)
            found = True  # a second line for the user (ignored by popgate) goes too
        else:
            out.append(line)
    if not found:
        if out and not out[-1].endswith(b"\n"):
            out[-1] += b"\n"
        out.append(entry)
    return out, found


def _write(path: str, data: bytes, st: os.stat_result | None) -> None:
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as e:
        raise PasswdError(f"cannot write in {directory}: {e.strerror}") from None
    try:
        if st is not None:
            new = os.fstat(fd)
            if (new.st_uid, new.st_gid) != (st.st_uid, st.st_gid):
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                except PermissionError:
                    raise PasswdError(f"cannot keep the owner of {path} (uid {st.st_uid}, "
                                      f"gid {st.st_gid}): run as root or as its owner") from None
        os.fchmod(fd, (st.st_mode & 0o7777) if st is not None else NEW_FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except OSError as e:
        raise PasswdError(f"cannot write {path}: {e.strerror}") from None
    finally:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # the rename itself, on disk
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def set_password(path: str, user: str, password: str, scheme: str = "BLF-CRYPT") -> bool:
    """
    Set C{user}'s password in the htpasswd file C{path} (created if
    missing; a symbolic link is followed, the file it names rewritten).

    @return: whether the user was already there.
    @raise PasswdError: in one line.
    """
    check_user_name(user)
    if not password:
        raise PasswdError("empty password refused")
    try:
        hashed = hash_password(password, scheme, prefix=False)
    except ValueError as e:
        raise PasswdError(str(e)) from None
    real = os.path.realpath(path)
    lines, st = _read(real)
    name = user.encode("utf-8")
    updated, found = _replace(lines, name, name + b":" + hashed.encode("ascii") + b"\n")
    _write(real, b"".join(updated), st)
    return found
