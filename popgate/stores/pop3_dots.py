"""
Reading the body of an upstream server's multi-line POP3 reply (after its
status line), a chunk at a time, whatever the chunk edges:

- L{WireScanner} (RETR, TOP) only finds the terminating C{.} line and
  passes the octets before it on as they came: they are already the wire
  form popgate's client must get (dot-stuffed CRLF lines), so popgate
  forwards them without undoing and redoing the stuffing.  One
  C{bytes.find} per chunk.
- L{DotDecoder} (UIDL, LIST) also removes the dot-stuffing (RFC 1939
  section 3), for popgate to read the lines itself; Python runs per line
  only for lines that start with a dot.
"""

from __future__ import annotations

__all__ = ["DotDecoder", "WireScanner"]

#: The end of a multi-line reply: the CRLF of its last line, then ".".
_END = b"\r\n.\r\n"


class WireScanner:
    """
    Finds the end of one multi-line reply by RFC 1939's rule (a line that
    is just C{.}, lines ending in CRLF) and passes on everything before
    its C{.\r\n}, as it came: bare CRs and bare LFs included, as a client
    talking to the upstream directly would get them (a bare LF ends no
    line, so C{\n.\r\n} ends nothing).  What it passes on therefore ends
    with CRLF, or is empty (the reply C{.\r\n} of an empty message).

    At a chunk edge a C{.} or C{.\r} after a CRLF is held back until the
    next octets say whether it is the end or a stuffed line.

    @ivar done: the C{.} line was seen; L{feed} returns what followed it.
    """

    __slots__ = ("_matched", "done")

    def __init__(self) -> None:
        # How many octets of _END end what came so far: the status line's
        # CRLF counts, so a body that is just ".\r\n" ends at once.
        self._matched = 2
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """
        Scan one chunk.

        @return: the reply's octets it completes (wire form, without the
            terminating line), and (once L{done}) the octets after the
            terminating line, which belong to the next reply.
        """
        if self.done:
            return b"", data
        if not data:
            return b"", b""
        matched = self._matched
        held = _END[2:matched]  # "." or ".\r" after a CRLF, not passed on yet
        if matched:
            # Does the end start in what came before this chunk?
            at = (_END[:matched] + data[:4]).find(_END)
            if 0 <= at < matched:
                # Held octets are its "." (and "\r"); its first CRLF is the
                # last line's end, and may be in this chunk.
                self.done = True
                return data[:max(0, at + 2 - matched)], data[at + 5 - matched:]
        at = data.find(_END)
        if at >= 0:
            self.done = True
            body = data[:at + 2]
            return (held + body if held else body), data[at + 5:]
        last = data[-4:] if len(data) >= 4 else (_END[:matched] + data)[-4:]
        matched = 4
        while matched and not last.endswith(_END[:matched]):
            matched -= 1
        self._matched = matched
        pending = held + data if held else data
        keep = matched - 2 if matched > 2 else 0
        return (pending[:len(pending) - keep] if keep else pending), b""


class DotDecoder:
    """
    A stateful decoder for one multi-line reply body (after the C{+OK}
    line).

    @ivar done: the C{.} line was seen; L{feed} returns what followed it.
    """

    __slots__ = ("_at_line_start", "_tail", "done")

    def __init__(self) -> None:
        self._at_line_start = True
        self._tail = b""  # octets whose meaning the next chunk decides
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """
        Decode one chunk.

        @return: the message octets it completes, and (once L{done}) the
            octets after the terminating line, which belong to the next
            reply.
        """
        if self.done:
            return b"", data
        s = self._tail + data if self._tail else data
        self._tail = b""
        out: list[bytes] = []
        pos = 0
        end = len(s)
        while True:
            if self._at_line_start:
                left = end - pos
                if left == 0:
                    break
                if s[pos] == 0x2E:  # "."
                    if s.startswith(b".\r\n", pos):
                        self.done = True
                        return b"".join(out), s[pos + 3:]
                    if left < 3 and s.startswith(b".\r"[:left], pos):
                        self._tail = s[pos:]  # "." or ".\r": the end, or a stuffed line
                        break
                    pos += 1  # the stuffing dot
                self._at_line_start = False
            found = s.find(b"\r\n.", pos)
            if found < 0:
                if s.endswith(b"\r\n"):
                    out.append(s[pos:])
                    self._at_line_start = True
                elif s.endswith(b"\r"):
                    out.append(s[pos:end - 1])
                    self._tail = b"\r"  # maybe the CR of a line's CRLF
                else:
                    out.append(s[pos:])
                break
            out.append(s[pos:found + 2])
            pos = found + 2
            self._at_line_start = True
        return b"".join(out), b""
