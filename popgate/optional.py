"""
popgate's optional dependencies (the C{ldap} and C{sql} extras): when
one cannot be imported, the one line that names it and how to install it,
so that C{--store postgresql:...} or C{--auth sql:...} without psycopg is
a usage error, not an C{ImportError} traceback.  The store and user store
plugins are lazy (L{popgate.plugin_support}): their module, and so the
library, is imported only when one is built.
"""

from __future__ import annotations

__all__ = ["EXTRAS", "is_missing_dependency", "missing_library"]

#: The extra that installs each optional library.
EXTRAS = {"ldaptor": "ldap", "psycopg": "sql", "pymysql": "sql", "jwt": "oauth"}


def _top(name: str | None) -> str:
    return (name or "").partition(".")[0]


def is_missing_dependency(error: ImportError) -> bool:
    """Whether C{error} is a library failing to import, not one of
    popgate's own modules (a bug, which should stay a traceback)."""
    return _top(error.name) != "popgate"


def missing_library(error: ImportError) -> str:
    """
    One line: which library cannot be imported, and how to install it.

    psycopg installed without its C{binary} extra on a machine without
    libpq raises an C{ImportError} naming no module ("no pq wrapper
    available", then a line per attempt): its first line is kept.
    """
    first = str(error).strip().partition("\n")[0]
    if not error.name and first.startswith("no pq wrapper available"):
        return f"psycopg cannot be imported ({first}): pip install 'psycopg[binary]'"
    top = _top(error.name)
    extra = EXTRAS.get(top)
    if extra is None:
        return f"cannot import {error.name or 'a module'}: {first}"
    return f"the {top} module is missing: pip install 'popgate[{extra}]'"
