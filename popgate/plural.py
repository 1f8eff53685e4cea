"""
Counts in messages: C{1 user}, C{2 users} (a log line or a probe's
answer that says C{1 users} reads as a bug).
"""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """C{count} and C{noun}, or C{nouns} (default C{noun + "s"}) unless
    C{count} is 1: C{plural(1, "user") == "1 user"}."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
