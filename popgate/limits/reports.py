"""
Log lines for floods (refusals, failed accepts) kept to a few per interval.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

# The namespace operators' log lines have always shown, whichever module
# of the package logs.
log = Logger(namespace="popgate.limits")


class OncePerInterval:
    """
    One log line per kind of event and interval: the first event is logged
    at once, later ones are only counted, and the count is logged when the
    interval ends.  A flood of refusals or accept errors stays a few lines.
    """

    def __init__(self, clock: Any, interval: float = 60.0, logger: Logger | None = None) -> None:
        self.clock = clock
        self.interval = interval
        self.log = log if logger is None else logger
        self._counts: dict[str, int] = {}
        self._summaries: dict[str, tuple[str, dict[str, Any]]] = {}

    def __len__(self) -> int:
        """Kinds of event in their interval now."""
        return len(self._counts)

    def event(self, kind: str, first: str, summary: str, **fields: Any) -> None:
        """Log C{first} (a format with C{fields}) unless C{kind} was logged
        this interval; C{summary} (with C{{count}} and C{{interval}}, and
        C{{s}}: "s" unless the count is 1) then says how many followed."""
        if kind in self._counts:
            self._counts[kind] += 1
            return
        self.log.warn(first, **fields)
        self._counts[kind] = 0
        self._summaries[kind] = (summary, fields)
        self.clock.callLater(self.interval, self._end, kind)

    def _end(self, kind: str) -> None:
        count = self._counts.pop(kind, 0)
        summary, fields = self._summaries.pop(kind)
        if count:
            self.log.warn(summary, **fields, count=count, s="" if count == 1 else "s",
                          interval=self.interval)
            # Still happening: keep summarising rather than logging anew.
            self._counts[kind] = 0
            self._summaries[kind] = (summary, fields)
            self.clock.callLater(self.interval, self._end, kind)
