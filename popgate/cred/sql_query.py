"""
SQL queries for user names: written once with C{%(user)s},
C{%(localpart)s} and C{%(domain)s} (L{popgate.cred.templates.SQL}), they
become bound parameters in the driver's own style, so a user name is never
pasted into SQL text.  C{%%} is a literal C{%}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from popgate.cred.templates import SQL, Template

__all__ = ["PLACEHOLDERS", "USER_COLUMN", "Query", "Row", "compile_query", "rows"]

PLACEHOLDERS = tuple(SQL.parts)
#: A result column of this name (any case) is the user's stored name.
USER_COLUMN = "user"


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


def rows(description: Any, fetched: list[Any]) -> list[Row]:
    """The rows of a cursor, with the C{user} column taken out."""
    names = [str(column[0]).lower() for column in description or ()]
    if USER_COLUMN not in names:
        return [Row(tuple(row)) for row in fetched]
    i = names.index(USER_COLUMN)
    return [Row(tuple(row[:i]) + tuple(row[i + 1 :]), row[i], True) for row in fetched]
