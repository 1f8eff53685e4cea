"""
SQL queries for user names: written once with C{%(user)s},
C{%(localpart)s} and C{%(domain)s} (L{popgate.cred.templates.SQL}), they
become bound parameters in the driver's own style, so a user name is never
pasted into SQL text.  C{%%} is a literal C{%}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from popgate.cred.templates import SQL, Template

__all__ = ["PLACEHOLDERS", "POLICY_COLUMNS", "USER_COLUMN", "Query", "Row", "compile_query",
           "rows"]

PLACEHOLDERS = tuple(SQL.parts)
#: A result column of this name (any case) is the user's stored name.
USER_COLUMN = "user"
#: Result columns of these names (any case) are the user's own LOGIN-DELAY
#: and EXPIRE (L{popgate.policy}); like C{user}, not counted in positions.
POLICY_COLUMNS = ("login_delay", "expire")


@dataclass(frozen=True)
class Query:
    """A query rewritten for one driver, and the placeholders it uses."""

    text: str
    template: Template

    @property
    def names(self) -> tuple[str, ...]:
        return self.template.names

    def params(self, name: str) -> dict[str, str]:
        """The bound parameters for the user C{name}."""
        return self.template.values(name)


def compile_query(query: str, paramstyle: str) -> Query:
    """
    Rewrite C{%(user)s}-style placeholders for a driver's C{paramstyle}
    (C{named} for sqlite3, C{pyformat} for psycopg and PyMySQL).

    @raise ValueError: an unknown placeholder, a lone C{%}, or no
        placeholder at all (every user would get the same row).
    """
    try:
        template = Template(query, "query", SQL)
    except ValueError as e:
        raise ValueError(f"sql: {e}") from None
    if not template.names:
        raise ValueError("sql: the query must use %(user)s, %(localpart)s or %(domain)s")
    if paramstyle == "named":
        text = template.render(lambda name: f":{name}")
    else:
        text = template.render(lambda name: f"%({name})s", percent="%%")
    return Query(text, template)


@dataclass(frozen=True)
class Row:
    """
    One result row: its columns but the C{user} one, in order (password,
    mail location), and the C{user} column's value if the query has one.
    """

    columns: tuple[Any, ...]
    user: Any = None
    has_user: bool = False
    #: The L{POLICY_COLUMNS} the query returns, by name.
    named: Mapping[str, Any] = field(default_factory=dict)


def rows(description: Any, fetched: list[Any]) -> list[Row]:
    """The rows of a cursor, with the C{user} and L{POLICY_COLUMNS} taken out."""
    names = [str(column[0]).lower() for column in description or ()]
    taken = {name: names.index(name) for name in (USER_COLUMN, *POLICY_COLUMNS) if name in names}
    if not taken:
        return [Row(tuple(row)) for row in fetched]
    positions = set(taken.values())
    user = taken.pop(USER_COLUMN, None)
    return [Row(tuple(v for i, v in enumerate(row) if i not in positions),
                None if user is None else row[user], user is not None,
                {name: row[i] for name, i in taken.items()})
            for row in fetched]
