"""
Independent oracles for POP3 tests: what RETR/TOP must send for a stored
message, computed a different way than popgate's encoder, and the raw
client that keeps every byte the server sends (poplib strips them).
"""

from __future__ import annotations

import re
import socket
import ssl
import time


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


class RawClient:
    """
    The tests' one raw POP3 client, at socket level, keeping every byte the
    server sends (poplib strips them): a line, the rest of a multi-line
    reply, everything up to EOF; send, half-close, start TLS.  Every read
    waits at most C{timeout} seconds (or the C{timeout} it is given) and
    raises C{TimeoutError} then; EOF raises C{EOFError} with what was left.

    @param source: the local address to connect from (each loopback
        address is a client of its own for the per-address limits).
    @param preamble: sent before anything is read (a PROXY header).
    @param tls: a client context: TLS from the start (POP3S), the
        certificate checked for C{server_hostname}.
    @param read_greeting: read the greeting line into C{greeting} (else
        C{greeting} is None and the greeting stays unread).
    @ivar chunks: every C{recv} as it came (split writes are visible).
    @ivar closed: the server closed the connection (EOF was read).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", *, timeout: float = 20,
                 source: str | None = None, preamble: bytes = b"", read_greeting: bool = True,
                 nodelay: bool = False, tls: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost") -> None:
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection(
            (host, port), timeout=timeout, source_address=None if source is None else (source, 0))
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""
        self.chunks: list[bytes] = []
        self.closed = False
        if preamble:
            self.send(preamble)
        self.greeting: bytes | None = self.line() if read_greeting else None

    def recv(self, timeout: float | None = None) -> bytes:
        """One C{recv} into the buffer (b"" at EOF)."""
        if self.closed:
            return b""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(65536)
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        if data:
            self.chunks.append(data)
            self.buf += data
        else:
            self.closed = True
        return data

    def line(self, timeout: float | None = None) -> bytes:
        """The next line, without its CRLF."""
        while b"\r\n" not in self.buf:
            if not self.recv(timeout):
                raise EOFError(self.buf)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def multi(self, timeout: float | None = None) -> bytes:
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
            if not self.recv(timeout):
                raise EOFError(self.buf)

    def until_eof(self, limit: float = 10.0) -> bytes:
        """Everything up to EOF; an C{AssertionError} if it does not come
        within C{limit} seconds."""
        end = time.monotonic() + limit
        while not self.closed:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no EOF in {limit}s: {self.buf!r}")
            try:
                self.recv(left)
            except TimeoutError:
                raise AssertionError(f"no EOF in {limit}s: {self.buf!r}") from None
        data, self.buf = self.buf, b""
        return data

    def quiet_for(self, seconds: float) -> bool:
        """Whether nothing more (not even EOF) arrives for C{seconds}; what
        does arrive stays unread."""
        if self.buf or self.closed:
            return False
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        return False

    def send(self, data: bytes) -> None:
        """Send C{data} as it is (several commands, no CRLF added)."""
        self.sock.sendall(data)

    def cmd(self, text: bytes) -> bytes:
        """Send one command line; its first reply line."""
        self.send(text + b"\r\n")
        return self.line()

    def login(self, user: bytes, password: bytes) -> None:
        assert self.cmd(b"USER " + user).startswith(b"+OK")
        reply = self.cmd(b"PASS " + password)
        assert reply.startswith(b"+OK"), reply

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        """The TLS handshake, after C{+OK} to STLS: nothing in clear may
        have come after that reply."""
        assert not self.buf, f"clear text after the STLS reply: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def half_close(self) -> None:
        """Shut the sending side (FIN); replies can still be read."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
