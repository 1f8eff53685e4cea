"""
Reading the body of an upstream server's multi-line POP3 reply: removing
the dot-stuffing (RFC 1939 section 3) and finding the terminating C{.}
line, a chunk at a time, whatever the chunk edges.

What comes out is the message as the upstream sent it, CRLFs and bare CRs
kept: popgate's encoder (L{popgate.pop3.encoder}) stuffs it again, so the
client gets the upstream's octets.  The work is done with C{bytes.find}
per chunk; Python runs per line only for lines that start with a dot.
"""

from __future__ import annotations

__all__ = ["DotDecoder"]


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
