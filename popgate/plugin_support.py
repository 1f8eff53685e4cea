"""
Lazy plugin objects for the dropin.

twistd imports every dropin on every run, so the objects here only name the
module that does the work; that module is imported when the plugin is used.
Third parties can use these classes for their own dropins too.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from popgate.interfaces import IMailStoreFactory


def _load(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@implementer(ICheckerFactory, IPlugin)
class LazyCheckerFactory:
    """
    A L{twisted.cred.strcred.ICheckerFactory} whose C{generateChecker} calls
    C{maker(argstring)}, named by its dotted path.
    """

    def __init__(
        self,
        authType: str,
        maker: str,
        authHelp: str,
        argStringFormat: str,
        credentialInterfaces: Sequence[Any],
    ) -> None:
        self.authType = authType
        self.authHelp = authHelp
        self.argStringFormat = argStringFormat
        self.credentialInterfaces = list(credentialInterfaces)
        self._maker = maker

    def generateChecker(self, argstring: str = "") -> Any:
        return _load(self._maker)(argstring)


@implementer(IMailStoreFactory)
class LazyStoreFactory:
    """An L{IMailStoreFactory} whose C{makeStore} calls C{maker(argstring)}."""

    def __init__(self, storeType: str, maker: str, storeHelp: str, argStringFormat: str) -> None:
        self.storeType = storeType
        self.storeHelp = storeHelp
        self.argStringFormat = argStringFormat
        self._maker = maker

    def makeStore(self, argstring: str) -> Any:
        return _load(self._maker)(argstring)
