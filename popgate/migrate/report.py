"""
What C{popgate migrate} says: one line per user, then one for the run.

  alice@example.org: 120 messages, 3.4 MB copied, 0 skipped, verified
  bob@example.org: in use (a POP3 session holds the old mailbox): not copied, run again
  migrated 2 users: 120 messages, 3.4 MB copied, 0 skipped; 1 user not done (see above)

Sizes are the messages' POP3 sizes (what LIST says), in decimal units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from popgate.plural import plural

__all__ = ["UserResult", "size", "summary", "user_line"]

#: Problems named on a user's line; the rest are counted.
SHOWN_PROBLEMS = 3


@dataclass(slots=True)
class UserResult:
    """
    How one user went.

    @ivar outcome: C{verified}; C{not verified} (copied, but see
        C{problems}); C{not copied} (see C{problems}); C{in use}; C{no
        mailbox}; or C{dry run}.
    @ivar copied: messages written (in a dry run: that would be).
    @ivar skipped: messages the target had already.
    @ivar unreadable: source messages that could not be read (in
        C{problems} too).
    """

    user: str
    outcome: str
    copied: int = 0
    copied_octets: int = 0
    skipped: int = 0
    unreadable: int = 0
    only_in_target: int = 0
    problems: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("verified", "no mailbox", "dry run")


def size(octets: int) -> str:
    """C{3400000} -> C{3.4 MB}."""
    if octets < 1000:
        return f"{octets} B"
    value = float(octets)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _problems(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return shown + (f"; and {plural(more, 'more problem')}" if more > 0 else "")


def user_line(result: UserResult) -> str:
    """The user's line, without its newline."""
    head = f"{result.user}: "
    if result.outcome == "in use":
        return head + ("in use (a POP3 session holds the old mailbox): not copied, "
                       "run again when it has ended")
    if result.outcome == "not copied":
        return head + "not copied: " + _problems(result.problems)
    if result.outcome == "no mailbox":
        return head + f"no mailbox at {result.where}: nothing to copy"
    if result.outcome == "dry run":
        return head + (f"would copy {plural(result.copied, 'message')}, "
                       f"{size(result.copied_octets)}; {result.skipped} already there")
    counts = (f"{plural(result.copied, 'message')}, {size(result.copied_octets)} copied, "
              f"{result.skipped} skipped")
    if result.unreadable:
        counts += f", {result.unreadable} unreadable"
    if result.only_in_target:
        counts += f", {result.only_in_target} more in the target only"
    if result.outcome == "verified":
        return head + counts + ", verified"
    return head + counts + ", NOT VERIFIED: " + _problems(result.problems)


def summary(results: Sequence[UserResult], dry_run: bool = False) -> str:
    """The run's last line."""
    copied = sum(r.copied for r in results)
    octets = sum(r.copied_octets for r in results)
    skipped = sum(r.skipped for r in results)
    failed = [r for r in results if not r.ok]
    users = plural(len(results), "user")
    if dry_run:
        line = (f"dry run, nothing written: {users}, would copy {plural(copied, 'message')}, "
                f"{size(octets)}; {skipped} already there")
    elif not copied and not failed:
        line = f"{users}, nothing to copy"
        if skipped:
            there = "its message was" if skipped == 1 else f"all {skipped} messages were"
            line = f"{users}, nothing more to copy: {there} there already, verified"
    else:
        line = (f"migrated {users}: {plural(copied, 'message')}, {size(octets)} copied, "
                f"{skipped} skipped")
    if failed:
        line += f"; {plural(len(failed), 'user')} not done (see above)"
    return line
