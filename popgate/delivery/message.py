"""
The bytes a store keeps for one delivery: line ends as Unix mail tools
expect them (L{popgate.wire.to_stored}, re-exported here as C{from_wire}),
and the envelope's trace headers (C{Return-Path}, C{Delivered-To}) on top,
as Dovecot's LMTP and Postfix's local(8) add them.
"""

from __future__ import annotations

import re

from popgate.wire import to_stored as from_wire

__all__ = ["from_wire", "newline_of", "header_fields", "clean_address", "add_trace_headers",
           "split_from_line"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def newline_of(message: bytes) -> bytes:
    """The line end the message uses (that of its first line)."""
    end = message.find(b"\n")
    return b"\r\n" if end > 0 and message[end - 1:end] == b"\r" else b"\n"


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each header field."""
    fields: list[tuple[bytes, bytes]] = []
    for line in message.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            break  # not a header: the body starts here (no blank line)
        fields.append((name.strip().lower(), value.strip()))
    return fields


def clean_address(address: str) -> bytes:
    """An envelope address fit for a header: no control characters."""
    return _CONTROL.sub("", address).encode("utf-8", "surrogateescape")


def add_trace_headers(message: bytes, sender: str | None, recipient: str | None,
                      only_missing: bool = False) -> bytes:
    """
    Prepend C{Return-Path: <sender>} (unless C{sender} is C{None}: unknown)
    and C{Delivered-To: recipient}.

    @param only_missing: for pipe delivery, where the MTA may have added
        them already (Postfix pipe flags C{R} and C{D}, local(8)): add no
        second C{Return-Path}, and no C{Delivered-To} naming the same
        recipient (Postfix would take that for a mail loop if the message
        were forwarded later).
    """
    fields = header_fields(message) if only_missing else []
    nl = newline_of(message)
    lines = []
    if sender is not None and not any(name == b"return-path" for name, _ in fields):
        lines.append(b"Return-Path: <" + clean_address(sender) + b">" + nl)
    if recipient:
        value = clean_address(recipient)
        if not any(name == b"delivered-to" and _same_recipient(v, value) for name, v in fields):
            lines.append(b"Delivered-To: " + value + nl)
    return b"".join(lines) + message


def _same_recipient(header: bytes, recipient: bytes) -> bool:
    """C{alice@example.org} in a header is the recipient C{alice@example.org}
    and, for local(8)'s C{-u "$USER"}, the recipient C{alice}."""
    header, recipient = header.strip(b"<> ").lower(), recipient.lower()
    if header == recipient:
        return True
    return b"@" not in recipient and header.split(b"@", 1)[0] == recipient


def split_from_line(message: bytes) -> tuple[str | None, bytes]:
    """
    Remove a leading mbox From_ line (Postfix local(8) puts one before the
    message it pipes to C{mailbox_command}).

    @return: the envelope sender it names (C{""} for C{MAILER-DAEMON}, the
        null sender), or C{None} when there was no From_ line; and the
        message without it.
    """
    if not message.startswith(b"From "):
        return None, message
    line, newline, rest = message.partition(b"\n")
    if not newline:
        return None, message
    words = line[5:].split()
    sender = words[0].decode("utf-8", "surrogateescape") if words else ""
    if sender == "MAILER-DAEMON":
        sender = ""
    return sender, rest
