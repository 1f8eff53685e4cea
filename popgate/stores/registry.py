"""
Finding mail store plugins (L{IMailStoreFactory}) the way
L{twisted.cred.strcred} finds checker plugins: by the prefix of C{TYPE:ARGS}.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import getPlugins

from popgate.interfaces import IMailStoreFactory
from popgate.optional import is_missing_dependency, missing_library
from popgate.plugin_support import call_maker


def store_factories() -> dict[str, Any]:
    """Every installed store plugin, by type name."""
    from twisted import plugins

    return {f.storeType: f for f in getPlugins(IMailStoreFactory, plugins)}


def make_store(description: str, reactor: Any, route: Any = None) -> Any:
    """
    Build the store that C{description} (C{maildir:/var/mail/%d/%n}) names,
    running on C{reactor} (handed to the plugin's C{makeStore} when it
    takes one; see L{IMailStoreFactory.makeStore}).

    @param route: a C{--route} source (L{popgate.routes.source}), for a
        store whose factory is C{routable} (a proxy).

    @raise ValueError: with a one-line reason, also when the plugin's
        module needs an optional dependency that is not installed
        (psycopg for C{postgresql:}): the lazy plugins import it only now.
    """
    store_type, _, argstring = description.partition(":")
    factories = store_factories()
    factory = factories.get(store_type)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        raise ValueError(f"unknown store type {store_type!r} (known: {known})")
    if route is not None and not getattr(factory, "routable", False):
        raise ValueError(f"the {store_type}: store takes no --route (proxy stores do)")
    try:
        if route is not None:
            return factory.makeStore(argstring, reactor, route=route)
        return call_maker(factory.makeStore, argstring, reactor)
    except ImportError as e:
        if not is_missing_dependency(e):
            raise
        raise ValueError(f"{store_type}: {missing_library(e)}") from None


def store_checks_users(description: str | None) -> bool:
    """Whether the store C{description} names can check users itself (a
    proxy whose upstream does), so it needs no --auth."""
    factory = store_factories().get((description or "").partition(":")[0])
    return bool(getattr(factory, "checksUsers", False))


def describe_store_factories() -> str:
    """The text of C{--help-stores}."""
    lines = ["Mail store types (--store TYPE:ARGS):", ""]
    for name, factory in sorted(store_factories().items()):
        lines.append(f"  {name}: {factory.storeHelp}")
        lines.append(f"      {factory.argStringFormat}")
    return "\n".join(lines)
