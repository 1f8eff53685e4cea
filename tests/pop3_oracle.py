"""
Independent oracles for POP3 tests: what RETR/TOP must send for a stored
message, computed a different way than popgate's encoder, and a raw client
that keeps every byte the server sends (poplib strips them).
"""

from __future__ import annotations

import re
import socket


def crlf_size(message: bytes) -> int:
    """The octet count LIST must report: every bare LF sent as CRLF."""
    return len(normalized(message))


def wire(message: bytes) -> bytes:
    """The RETR body an independent oracle expects: CRLF, stuffed, terminated."""
    normal = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    stuffed = re.sub(rb"(^|\r\n)\.", rb"\1..", normal)
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def normalized(message: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", message)


def top_oracle(message: bytes, lines: int) -> bytes:
    """Headers, the blank line, then the first C{lines} body lines."""
    normal = normalized(message)
    if normal.startswith(b"\r\n"):
        head_end = 2
    else:
        pos = normal.find(b"\r\n\r\n")
        if pos < 0:
            return normal
        head_end = pos + 4
    body_lines = re.findall(rb"[^\n]*\n|[^\n]+$", normal[head_end:])
    return normal[:head_end] + b"".join(body_lines[:lines])


def read_line(sock: socket.socket) -> bytes:
    """One reply line, read a byte at a time so nothing after it is
    consumed (what an STLS test needs before its handshake)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


class RawClient:
    """A tiny POP3 client that keeps every byte the server sends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def multi(self) -> bytes:
        """The rest of a multi-line reply, up to and including its ".CRLF"."""
        while True:
            if self.buf.startswith(b".\r\n"):
                cut = 3
            else:
                pos = self.buf.find(b"\r\n.\r\n")
                cut = pos + 5 if pos >= 0 else -1
            if cut > 0:
                body, self.buf = self.buf[:cut], self.buf[cut:]
                return body
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError(self.buf)
            self.buf += data

    def cmd(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        return self.line()

    def login(self, user: bytes, password: bytes) -> None:
        assert self.cmd(b"USER " + user).startswith(b"+OK")
        reply = self.cmd(b"PASS " + password)
        assert reply.startswith(b"+OK"), reply

    def close(self) -> None:
        self.sock.close()
