"""
The options of the C{maildir:} store, after its template:
C{maildir:TEMPLATE[,flag_updates=no][,uidl=dovecot][,uidl_format=FORMAT]
[,deleted_flag=KEYWORD][,shared=yes]}, checked at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from popgate.stores import mailpath
from popgate.stores.maildir_dovecot import DEFAULT_FORMAT, DovecotOptions, parse_format

_BOOLEAN = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
# An IMAP keyword (RFC 3501 atom, no flag-specials) that fits in a name.
_KEYWORD = re.compile(r"^[!#$&'+\-.0-9;<=>?@A-Z^_`a-z|~]{1,64}\Z")
KNOWN = ("flag_updates", "uidl", "uidl_format", "deleted_flag", "shared")


@dataclass(frozen=True)
class MaildirOptions:
    """
    @ivar flag_updates: RETR sets the C{S} flag and moves the message to
        C{cur/} when the session ends (Dovecot's default; its
        C{pop3_no_flag_updates} is C{flag_updates=no}).
    @ivar dovecot: Dovecot's UIDLs and soft deletion.
    """

    flag_updates: bool = True
    dovecot: DovecotOptions = field(default_factory=DovecotOptions)


def parse_argstring(argstring: str) -> tuple[str, MaildirOptions]:
    """
    The template and the options of C{TEMPLATE[,key=value...]}.

    @raise ValueError: with a one-line reason.
    """
    if not argstring:
        raise ValueError("maildir: needs a location template, e.g. maildir:/var/mail/%d/%n")
    template, shared = mailpath.pop_shared(argstring, "maildir")
    first, *rest = template.split(",")
    values: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"maildir: expected key=value, got {item!r}")
        if key not in KNOWN:
            raise ValueError(f"maildir: unknown option {key!r} (known: {', '.join(KNOWN)})")
        values[key] = value.strip()
    flag_updates = True
    if "flag_updates" in values:
        text = values["flag_updates"].lower()
        if text not in _BOOLEAN:
            raise ValueError("maildir: flag_updates must be yes or no")
        flag_updates = _BOOLEAN[text]
    uidl = values.get("uidl", "filename")
    if uidl not in ("filename", "dovecot"):
        raise ValueError(f"maildir: uidl must be filename or dovecot, not {uidl!r}")
    if "uidl_format" in values and uidl != "dovecot":
        raise ValueError("maildir: uidl_format needs uidl=dovecot")
    parsed = parse_format(values.get("uidl_format", DEFAULT_FORMAT)) if uidl == "dovecot" \
        else None
    keyword = values.get("deleted_flag") or None
    if keyword is not None and (keyword.startswith("\\") or not _KEYWORD.match(keyword)):
        raise ValueError(f"maildir: deleted_flag {keyword!r} is not an IMAP keyword "
                         "(e.g. $POP3Deleted)")
    mailpath.check_template(first)
    mailpath.check_per_user(first, "maildir", shared)
    return first, MaildirOptions(flag_updates, DovecotOptions(parsed, keyword))
