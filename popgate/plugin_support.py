"""
Lazy plugin objects for the dropin.

twistd imports every dropin on every run, so the objects here only name the
module that does the work; that module is imported when the plugin is used.
Third parties can use these classes for their own dropins too.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from popgate.interfaces import IMailStoreFactory, ITokenValidatorFactory


def _load(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def takes_reactor(maker: Callable[..., Any]) -> bool:
    """Whether C{maker} can be called as C{maker(argstring, reactor)}:
    checked on its signature, without calling it, so a C{TypeError} raised
    inside a maker is never mistaken for an old-style one."""
    try:
        inspect.signature(maker).bind("", None)
    except (TypeError, ValueError):  # too few parameters, or no signature to read
        return False
    return True


def call_maker(maker: Callable[..., Any], argstring: str, reactor: Any) -> Any:
    """
    C{maker(argstring, reactor)}, or C{maker(argstring)} for a maker (or
    an C{IMailStoreFactory.makeStore}) written before popgate passed the
    reactor to store plugins.
    """
    if takes_reactor(maker):
        return maker(argstring, reactor)
    return maker(argstring)


@implementer(ICheckerFactory, IPlugin)
class LazyCheckerFactory:
    """
    A L{twisted.cred.strcred.ICheckerFactory} whose C{generateChecker} calls
    C{maker(argstring)}, named by its dotted path.

    @param arguments: the dotted path of the L{popgate.cred.args.ArgSpec}
        of a C{key=value,...} argument string, whose keys
        C{--help-auth-type} lists (L{describe_arguments}).
    """

    def __init__(
        self,
        authType: str,
        maker: str,
        authHelp: str,
        argStringFormat: str,
        credentialInterfaces: Sequence[Any],
        arguments: str | None = None,
    ) -> None:
        self.authType = authType
        self.authHelp = authHelp
        self.argStringFormat = argStringFormat
        self.credentialInterfaces = list(credentialInterfaces)
        self._maker = maker
        self._arguments = arguments

    def generateChecker(self, argstring: str = "") -> Any:
        return _load(self._maker)(argstring)

    def describe_arguments(self) -> list[tuple[str, str]]:
        """Each key of the argument string with its help (none: it is not
        C{key=value} pairs)."""
        return _load(self._arguments).describe() if self._arguments else []


@implementer(IMailStoreFactory)
class LazyStoreFactory:
    """
    An L{IMailStoreFactory} whose C{makeStore} calls C{maker(argstring,
    reactor)}, or C{maker(argstring)} when the maker takes no reactor (a
    store with no threads or timers, or one written before popgate passed
    it).
    """

    def __init__(self, storeType: str, maker: str, storeHelp: str, argStringFormat: str,
                 checks_users: bool = False, routable: bool = False) -> None:
        self.storeType = storeType
        self.storeHelp = storeHelp
        self.argStringFormat = argStringFormat
        #: The store can check users itself (a proxy: the upstream does),
        #: so it may be used without --auth.
        self.checksUsers = checks_users
        #: The store chooses each user's upstream from a C{--route} source:
        #: its maker takes C{route=} (L{popgate.routes}).
        self.routable = routable
        self._maker = maker

    def makeStore(self, argstring: str, reactor: Any, route: Any = None) -> Any:
        if route is not None:
            return _load(self._maker)(argstring, reactor, route=route)
        return call_maker(_load(self._maker), argstring, reactor)


@implementer(ITokenValidatorFactory, IPlugin)
class LazyValidatorFactory:
    """An L{ITokenValidatorFactory} whose C{makeValidator} calls
    C{maker(argstring, reactor)}, named by its dotted path."""

    def __init__(self, validatorType: str, maker: str, validatorHelp: str,
                 argStringFormat: str) -> None:
        self.validatorType = validatorType
        self.validatorHelp = validatorHelp
        self.argStringFormat = argStringFormat
        self._maker = maker

    def makeValidator(self, argstring: str, reactor: Any) -> Any:
        return _load(self._maker)(argstring, reactor)
