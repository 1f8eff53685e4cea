"""
A route source: a user name in, the URL of that user's upstream out (or
C{None}: the directory has no route for them).  It only reads the URL;
whether the store can serve its scheme is the store's business
(L{popgate.routes.router}), so one source serves every proxy store.

C{--route TYPE:ARGS} names one: C{ldap:} (L{popgate.routes.ldap}) or
C{sql:} (L{popgate.routes.sql}).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

__all__ = ["TYPES", "RouteSource", "make_route_source"]

#: Each type, with the module whose C{make_source(argstring, reactor)} builds it.
TYPES = {"ldap": "popgate.routes.ldap", "sql": "popgate.routes.sql"}


class RouteSource(Protocol):
    def lookup(self, name: str) -> Deferred[str | None]:
        """
        The URL stored for C{name}, or C{None} when there is none.

        @raise popgate.errors.TemporaryFailure: the directory cannot answer.
        @raise popgate.errors.PermanentFailure: its answer is ambiguous
            (several entries or rows).
        """

    def probe(self) -> Deferred[str]:
        """Whether the directory answers (C{popgate check-config})."""


def make_route_source(description: str, reactor: Any) -> RouteSource:
    """
    The source C{description} (C{ldap:url=...,base=...,attribute=...})
    names, on C{reactor}.

    @raise ValueError: with a one-line reason.
    """
    import importlib

    kind, _, argstring = description.partition(":")
    module = TYPES.get(kind.strip().lower())
    if module is None:
        raise ValueError(f"unknown route source {kind[:20]!r} (known: {', '.join(TYPES)})")
    made: RouteSource = importlib.import_module(module).make_source(argstring, reactor)
    return made
