"""
Whether each user store can answer now: C{popgate check-config} reports
it, and every server asks at start-up, logging a store it cannot reach
loudly (one error line each) but starting anyway: a directory that is
down at boot can come back, and then logins work without a restart.

A user store that provides L{IReachable} is asked with its C{probe}; one
that does not (a third party's) is only noted as unprobed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from popgate.errors import PermanentFailure
from popgate.events import emit
from popgate.interfaces import IReachable

__all__ = ["Answer", "StartupProbe", "label", "one_line", "probe_all", "probe_one"]

#: Seconds a probe may take at most, whatever the store's own timeouts.
PROBE_TIMEOUT = 30.0

log = Logger()


def one_line(text: object) -> str:
    """C{text} with its whitespace (libpq's newlines and tabs) made single spaces."""
    return " ".join(str(text).split())


def label(description: str) -> str:
    """C{--auth ldap} for C{ldap:url=...}: how messages name a user store."""
    return f"--auth {description.partition(':')[0]}"


@dataclass(frozen=True)
class Answer:
    """
    What one user store's probe said.

    @ivar ok: it answered (C{None}: it cannot be probed).
    @ivar text: what answered, or why it did not, in one line.
    @ivar kind: C{temporary} or C{permanent} (or C{internal}) when not ok.
    """

    label: str
    ok: bool | None
    text: str
    kind: str = ""


async def probe_one(name: str, checker: Any, reactor: Any,
                    timeout: float = PROBE_TIMEOUT) -> Answer:
    """Probe one store (a user store, or a mail store that provides
    L{IReachable}), labelled C{name}; it never fails."""
    if not IReachable.providedBy(checker):
        return Answer(name, None, "cannot be probed (no IReachable)")
    try:
        d = defer.maybeDeferred(checker.probe)
        text = await d.addTimeout(timeout, reactor)
    except defer.TimeoutError:
        return Answer(name, False, f"no answer within {timeout:g}s", "temporary")
    except PermanentFailure as e:
        return Answer(name, False, one_line(e), "permanent")
    except Exception as e:
        return Answer(name, False, one_line(e) or type(e).__name__, "temporary")
    return Answer(name, True, one_line(text))


async def probe_all(descriptions: Sequence[str], checkers: Sequence[Any], reactor: Any,
                    timeout: float = PROBE_TIMEOUT) -> list[Answer]:
    """Probe every user store at once; the answers in C{--auth} order."""
    tasks = [defer.Deferred.fromCoroutine(probe_one(label(d), c, reactor, timeout))
             for d, c in zip(descriptions, checkers, strict=True)]
    return list(await defer.gatherResults(tasks))


class StartupProbe:
    """At start-up, probe the user stores and log what did not answer
    (L{popgate.build.Server.startService} starts it)."""

    def __init__(self, reactor: Any, descriptions: Sequence[str],
                 checkers: Sequence[Any]) -> None:
        self.reactor = reactor
        self.descriptions = list(descriptions)
        self.checkers = list(checkers)
        #: The answers, once in (tests wait on it).
        self.done: defer.Deferred[list[Answer]] | None = None

    def start(self) -> defer.Deferred[list[Answer]]:
        self.done = defer.Deferred.fromCoroutine(self._run())
        return self.done

    async def _run(self) -> list[Answer]:
        answers = await probe_all(self.descriptions, self.checkers, self.reactor)
        for answer in answers:
            if answer.ok is False:
                emit(log, "userstore.error", level=LogLevel.error, op="probe", kind=answer.kind,
                     user="", why=f"{answer.label}: {answer.text}", session="")
            elif answer.ok:
                log.info("{store} reachable: {what}", store=answer.label, what=answer.text)
        return answers
