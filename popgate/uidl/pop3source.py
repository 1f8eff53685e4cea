"""
A live old POP3 server as a source of UIDLs: log in as the user (with the
user's password, or as C{user*master} with a master user's), C{UIDL}, then
for each message either C{RETR} (the default: a digest of the whole
message, so the match is exact) or C{TOP n 0} (headers and C{LIST} size
only: cheaper on a slow link, matched by Message-ID and size).  Nothing is
deleted: the session ends with C{RSET} and C{QUIT}.  Blocking (poplib).
"""

from __future__ import annotations

import poplib
import ssl
from dataclasses import dataclass

from popgate.maildrop import is_valid_uid
from popgate.uidl.message import Message, describe, message_id
from popgate.uidl.sources import SourceError

#: poplib refuses longer lines (2048 by default): mail has them.
_MAX_LINE = 1 << 20


@dataclass(frozen=True)
class Pop3Source:
    """
    @ivar tls: C{"none"}, C{"starttls"} (STLS) or C{"implicit"} (POP3S).
    @ivar master: a master user: log in as C{user + separator + master}.
    @ivar headers_only: C{TOP n 0} instead of C{RETR}.
    """

    host: str
    port: int
    tls: str = "none"
    cafile: str | None = None
    master: str | None = None
    master_password: str | None = None
    separator: str = "*"
    headers_only: bool = False
    timeout: float = 60.0

    def _connect(self) -> poplib.POP3:
        context = ssl.create_default_context(cafile=self.cafile) if self.tls != "none" else None
        if self.tls == "implicit":
            return poplib.POP3_SSL(self.host, self.port, timeout=self.timeout, context=context)
        client = poplib.POP3(self.host, self.port, timeout=self.timeout)
        if self.tls == "starttls":
            client.stls(context)
        return client

    def messages(self, user: str, password: str | None) -> list[Message]:
        """
        The user's messages with the UIDLs the server gives them.

        @raise SourceError: the server cannot be reached, refuses the login,
            or answers something that is not POP3.
        """
        if self.master is not None:
            login, secret = f"{user}{self.separator}{self.master}", self.master_password
        else:
            login, secret = user, password
        if secret is None:
            raise SourceError("no password for this user")
        poplib._MAXLINE = max(poplib._MAXLINE, _MAX_LINE)  # type: ignore[attr-defined]
        try:
            client = self._connect()
        except (OSError, poplib.error_proto) as e:
            raise SourceError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        try:
            try:
                client.user(login)
                client.pass_(secret)
            except poplib.error_proto as e:
                raise SourceError(f"login refused: {_text(e)}") from None
            return self._read(client)
        except (OSError, poplib.error_proto) as e:
            raise SourceError(f"{self.host}:{self.port}: {_text(e)}") from None
        finally:
            try:
                client.rset()
                client.quit()
            except (OSError, poplib.error_proto):
                client.close()

    def _read(self, client: poplib.POP3) -> list[Message]:
        sizes: dict[int, int] = {}
        for line in client.list()[1]:
            words = line.split()
            if len(words) < 2 or not words[0].isdigit() or not words[1].isdigit():
                raise SourceError(f"not a LIST line: {line[:80]!r}")
            sizes[int(words[0])] = int(words[1])
        messages = []
        for uidl_line in client.uidl()[1]:
            words = uidl_line.split()
            if len(words) != 2 or not words[0].isdigit() or not is_valid_uid(words[1]):
                raise SourceError(f"not a UIDL line: {uidl_line[:80]!r}")
            uidl = words[1]
            number = int(words[0])
            key = uidl.decode("ascii")
            if self.headers_only:
                lines = client.top(number, 0)[1]
                messages.append(Message(key, uidl, sizes.get(number),
                                        message_id=message_id(b"\r\n".join(lines) + b"\r\n")))
                continue
            data = b"\r\n".join(client.retr(number)[1]) + b"\r\n"
            if sizes.get(number) == len(data) - 2:
                data = data[:-2]  # the CRLF POP3 adds to a last line without one
            messages.append(describe(key, uidl, data))
        return messages


def _text(e: BaseException) -> str:
    arg = e.args[0] if e.args else e
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(arg)
