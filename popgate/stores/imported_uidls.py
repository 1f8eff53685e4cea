"""
UIDLs carried over from the server popgate replaced (C{popgate uidl
import}), kept beside a Maildir or an mbox spool: one C{key uidl} line per
message, the key being what never changes about the message in that store
(a Maildir file's base name; an mbox message's own popgate UIDL).  A
session serves the imported UIDL instead of popgate's own, so a "leave
mail on server" client does not download its mail again.

The file is written whole and renamed into place (never appended), so a
reader sees the old mapping or the new one.  Blocking: call in a thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from twisted.logger import Logger

from popgate.maildrop import is_valid_uid
from popgate.stores.durable import fsync_dir, replace_file

#: The file's name in a Maildir.
MAILDIR_FILE = "popgate-uidls"
#: The suffix of the file beside an mbox spool's session lock.
MBOX_SUFFIX = ".popgate-imported-uidls"

log = Logger(namespace="popgate.stores")


def read(path: str) -> dict[str, bytes]:
    """The mapping at C{path}; empty when there is none.  A line that is not
    C{key uidl} with a valid UIDL is skipped (it was not written by us)."""
    mapping: dict[str, bytes] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue
                key, _, uidl = line[:-1].rpartition(b" ")
                if key and is_valid_uid(uidl):
                    mapping[key.decode("utf-8", "surrogateescape")] = uidl
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("ignoring unreadable imported UIDLs {path}: {e}", path=path, e=e)
    return mapping


def write(path: str, mapping: Mapping[str, bytes]) -> None:
    """
    Replace the mapping at C{path} atomically and durably (a temporary
    file, fsync, rename, fsync of the directory); an empty mapping removes
    the file.

    @raise ValueError: a UIDL is not valid, a UIDL is used twice, or a key
        has a newline.
    """
    seen: set[bytes] = set()
    for key, uidl in mapping.items():
        if not is_valid_uid(uidl):
            raise ValueError(f"not a valid UIDL (1-70 printable octets): {uidl!r}")
        if uidl in seen:
            raise ValueError(f"UIDL {uidl!r} given to two messages")
        if "\n" in key:
            raise ValueError(f"key with a newline: {key!r}")
        seen.add(uidl)
    if not mapping:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(path) or ".")
        return
    replace_file(path, b"".join(key.encode("utf-8", "surrogateescape") + b" " + uidl + b"\n"
                                for key, uidl in sorted(mapping.items())))


def apply(keys: Sequence[str], uids: Sequence[bytes],
          imported: Mapping[str, bytes]) -> list[bytes]:
    """
    C{uids} (popgate's own, one per key) with the imported ones put in.
    An imported UIDL is served at most once; a message whose own UIDL
    equals another message's imported one gets a digest of it instead, so
    the UIDLs stay unique (RFC 1939).
    """
    if not imported:
        return list(uids)
    out: list[bytes | None] = []
    claimed: set[bytes] = set()
    for key in keys:
        uidl = imported.get(key)
        if uidl is not None and uidl not in claimed:
            claimed.add(uidl)
            out.append(uidl)
        else:
            out.append(None)
    result = []
    for own, uidl in zip(uids, out, strict=True):
        if uidl is None:
            uidl = own
            while uidl in claimed:
                uidl = hashlib.sha1(b"popgate-own:" + uidl).hexdigest().encode("ascii")
            claimed.add(uidl)
        result.append(uidl)
    return result
