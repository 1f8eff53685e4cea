"""
C{popgate who [USER|IP|NETWORK]} and C{popgate kick USER|IP|NETWORK}:
ask a running server over its admin socket (C{--admin-socket PATH}).

With C{--workers N}, the first process listens on C{PATH} and worker
C{n} on C{PATH.n} (L{popgate.workers.child}); both commands ask every
one and add up the answers.  A worker's socket that nothing listens on
(a worker that died and is being restarted) is skipped with a warning.
"""

from __future__ import annotations

import errno
import glob
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.protocols import amp

from popgate.admin.commands import MAX_LISTED, Kick, Who

__all__ = ["AdminError", "kick", "sockets", "who"]

#: Seconds to connect and to get an answer.
TIMEOUT = 10.0

Write = Callable[[str], Any]


class AdminError(Exception):
    """Why the server could not be asked, in one line."""


def sockets(path: str) -> list[str]:
    """C{path} and the worker sockets next to it (C{path.1}, C{path.2}...)."""
    workers = [p for p in glob.glob(glob.escape(path) + ".*")
               if p[len(path) + 1:].isdigit()]
    return [path, *sorted(workers, key=lambda p: int(p[len(path) + 1:]))]


def _why(path: str, failure: BaseException) -> str:
    """Why connecting to the admin socket failed, for the admin."""
    code = (failure.osError if isinstance(failure, error.ConnectError)
            else getattr(failure, "errno", None))
    if code == errno.ENOENT:
        return (f"no admin socket at {path} (is popgate running with --admin-socket "
                f"{path}?)")
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path}: the admin socket is for root (run as root)"
    if code == errno.ECONNREFUSED or isinstance(failure, error.ConnectionRefusedError):
        return f"nothing listens on {path} (popgate is not running, or has just stopped)"
    return f"cannot reach {path}: {failure}"


async def _ask(reactor: Any, path: str, command: type[amp.Command], **arguments: Any) -> Any:
    endpoint = UNIXClientEndpoint(reactor, path, timeout=int(TIMEOUT))
    try:
        client = await connectProtocol(endpoint, amp.AMP())
    except Exception as e:
        raise AdminError(_why(path, e)) from None
    try:
        return await client.callRemote(command, **arguments).addTimeout(TIMEOUT, reactor)
    except Exception as e:
        raise AdminError(f"{path}: no answer: {e}") from None
    finally:
        client.transport.loseConnection()


async def _ask_all(reactor: Any, path: str, command: type[amp.Command], write: Write,
                   **arguments: Any) -> list[Any]:
    """The answer of every process; the first socket must answer."""
    answers = []
    for number, socket_path in enumerate(sockets(path)):
        try:
            answers.append(await _ask(reactor, socket_path, command, **arguments))
        except AdminError as e:
            if number == 0:
                raise
            write(f"warning: {e}\n")
    return answers


def _when(since: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))


async def who(reactor: Any, path: str, match: str, write: Write) -> int:
    """List the open sessions (matching C{match}); exit 0."""
    answers = await _ask_all(reactor, path, Who, write, match=match)
    rows = [("USER", "IP", "SINCE", "STATE", "RETRIEVED", "PID", "SESSION")]
    total = 0
    for answer in answers:
        total += answer["total"]
        for s in answer["sessions"]:
            user = s["user"] or (f"({s['tried']}?)" if s["tried"] else "-")
            rows.append((user, s["ip"], _when(s["since"]), s["state"].lower(),
                         str(s["retrieved"]), str(answer["pid"]), s["session"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    if len(rows) > 1:
        for row in rows:
            write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                  .rstrip() + "\n")
    shown = len(rows) - 1
    what = f" matching {match}" if match else ""
    more = (f" (each process lists at most {MAX_LISTED}: narrow with popgate who USER|IP)"
            if shown < total else "")
    write(f"{total} session{'s' if total != 1 else ''}{what}{more}\n")
    return 0


async def kick(reactor: Any, path: str, match: str, write: Write) -> int:
    """Close the sessions matching C{match}; exit 0 if any, 1 if none."""
    answers = await _ask_all(reactor, path, Kick, write, match=match)
    kicked = sum(answer["kicked"] for answer in answers)
    write(f"kicked {kicked} session{'s' if kicked != 1 else ''} of {match}\n")
    return 0 if kicked else 1
