"""
The body of an LMTP DATA: dot-unstuffing, the end only at C{CRLF.CRLF}
(a bare LF never ends a line, against SMTP smuggling) and the SIZE bound,
over a buffer that may hold any number of lines or part of one.  Mixed into
L{popgate.delivery.lmtp.LMTPServerProtocol}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from popgate.delivery.lmtp_factory import LMTPFactory

_FRAGMENT = 1 << 16  # a message line longer than this is taken in pieces


class DataReader:
    """Reads the message after C{354}; the protocol ends it (C{_end_data})."""

    factory: LMTPFactory
    _buffer: bytearray
    _data_parts: list[bytes]
    _data_size: int
    _data_line_start: bool
    _data_previous_cr: bool

    if TYPE_CHECKING:
        def _end_data(self) -> None: ...

    def _take_data(self) -> bool:
        """Consume message lines from the buffer; True once the final
        C{.} was seen."""
        buf = self._buffer
        i = 0
        try:
            while (j := buf.find(b"\n", i)) >= 0:
                line = bytes(buf[i:j + 1])
                i = j + 1
                if self._data_line_start:
                    if line == b".\r\n":
                        self._end_data()
                        return True
                    if line[:1] == b".":
                        line = line[1:]
                self._add_data(line)
            if len(buf) - i > _FRAGMENT:
                piece = bytes(buf[i:])
                i = len(buf)
                if self._data_line_start and piece[:1] == b".":
                    piece = piece[1:]
                self._add_data(piece)
            return False
        finally:
            del buf[:i]

    def _add_data(self, piece: bytes) -> None:
        # A line starts after CRLF only: a bare LF is data, as is a "."
        # after it, so "\n.\n" can never end a message (SMTP smuggling).
        self._data_line_start = piece.endswith(b"\r\n") or (
            piece == b"\n" and self._data_previous_cr)
        self._data_previous_cr = piece.endswith(b"\r")
        self._data_size += len(piece)
        if self._data_size > self.factory.max_message_size:
            self._data_parts = []  # keep reading to the end, storing nothing
        else:
            self._data_parts.append(piece)
