"""
The user stores popgate offers: what C{--help-auth} lists, what
C{--help-auth-type} explains, and how one C{--auth TYPE:ARGS} is built.

strcred finds every checker plugin installed, Twisted's own among them,
and none of those serves POP3 users: C{file} reads a plaintext file on
the reactor thread, C{unix} checks shadow passwords that popgate cannot
read once it runs as its C{--uid} (with a blocking crypt), C{anonymous}
and C{sshkeys} take no passwords, and Twisted's C{memory} never logs
anyone in (its users are text, POP3 sends bytes).  So Twisted's stock
checkers are neither listed nor accepted, except C{memory}, which popgate
builds itself (L{popgate.cred.memory}, for tests and demos), with a
warning.  A library a store needs that is missing is named with the pip
extra that brings it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.logger import Logger

from popgate.cred.memory import MemoryChecker
from popgate.optional import missing_library
from popgate.plural import plural

__all__ = ["describe_all", "describe_type", "is_stock", "make_checker", "offered"]

log = Logger()


_WIDTH = 79
_MEMORY_HELP = (
    "Users and passwords given on the command line, for tests and demos: the "
    "passwords show in ps and in the configuration. popgate's own, in place of "
    "Twisted's memory checker, which never logs anyone in.")


class UnknownStore(ValueError):
    """No user store of that type is offered; the text is one line."""


def is_stock(factory: Any) -> bool:
    """Whether a checker factory is one of Twisted's own (C{file},
    C{memory}, C{unix}, ...: Twisted's dropins are C{cred_*.py}) rather
    than popgate's or a third party's (whose dropins live in
    C{twisted/plugins} too)."""
    return type(factory).__module__.startswith("twisted.plugins.cred_")


def offered(interfaces: Iterable[Any]) -> list[Any]:
    """The checker factories popgate offers for C{interfaces}: installed,
    not Twisted's stock ones, taking at least one of those credentials."""
    wanted = set(interfaces)
    return [factory for factory in strcred.findCheckerFactories()
            if not is_stock(factory) and wanted & set(factory.credentialInterfaces)]


def _find(auth_type: str, interfaces: Iterable[Any]) -> Any:
    """
    @return: the factory popgate offers for C{auth_type}, or C{None} for
        C{memory}.
    @raise UnknownStore: there is none.
    """
    for factory in offered(interfaces):
        if factory.authType == auth_type:
            return factory
    if auth_type == "memory":
        return None
    if any(is_stock(f) and f.authType == auth_type for f in strcred.findCheckerFactories()):
        raise UnknownStore(f"{auth_type!r} is Twisted's checker, not a user store popgate "
                           "can use (see --help-auth)")
    raise UnknownStore(f"unknown user store type {auth_type!r} (see --help-auth)")


def make_checker(description: str, interfaces: Iterable[Any]) -> ICredentialsChecker:
    """
    The user store of one C{--auth TYPE:ARGS}.

    @raise UnknownStore: not a type popgate offers.
    @raise ValueError: with a one-line reason (the store's own, or the
        library to install).
    """
    auth_type, _, argstring = description.partition(":")
    factory = _find(auth_type, interfaces)
    if factory is None:
        checker: ICredentialsChecker = MemoryChecker.from_argstring(argstring)
        log.warn("--auth memory: {users} and their passwords from the configuration, "
                 "for tests and demos only",
                 users=plural(len(checker.users), "user"))  # type: ignore[attr-defined]
        return checker
    try:
        checker = factory.generateChecker(argstring)
    except ImportError as e:
        raise ValueError(missing_library(e)) from None
    except strcred.StrcredException as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return checker


def _wrap(head: str, text: str, indent: int) -> list[str]:
    """C{head} then C{text}, wrapped to 79 columns under an indent."""
    return textwrap.wrap(text, _WIDTH, initial_indent=head.ljust(indent),
                         subsequent_indent=" " * indent, break_on_hyphens=False,
                         break_long_words=False) or [head]


def describe_all(interfaces: Iterable[Any]) -> str:
    """The text of C{--help-auth}."""
    factories = sorted(offered(interfaces), key=lambda f: f.authType)
    width = max((len(f.authType) for f in factories), default=4) + 4
    lines = ["User store types (--auth TYPE:ARGS, repeatable: tried in order);",
             "--help-auth-type TYPE lists the keys of one.", ""]
    for factory in factories:
        lines += _wrap(f"  {factory.authType}", factory.authHelp, width)
        lines.append(" " * width + factory.argStringFormat)
    return "\n".join(lines) + "\n"


def describe_type(auth_type: str, interfaces: Iterable[Any]) -> str:
    """
    The text of C{--help-auth-type TYPE}: what it is, its format, each key.

    @raise UnknownStore: not a type popgate offers.
    """
    factory = _find(auth_type, interfaces)
    if factory is None:
        return "\n".join(["--auth memory:USER:PASSWORD[:USER:PASSWORD...]", "",
                          *_wrap("", _MEMORY_HELP, 2), ""]) + "\n"
    lines = [f"--auth {factory.argStringFormat}", "", *_wrap("", factory.authHelp, 2), ""]
    describe = getattr(factory, "describe_arguments", None)
    if describe is not None:
        try:
            keys = describe()
        except ImportError as e:
            keys = [("", f"(its keys cannot be listed: {missing_library(e)})")]
        if keys:
            lines += ["Keys (key=value, separated by commas; values keep their own commas):"]
            width = max(len(key) for key, _ in keys) + 4
            for key, text in keys:
                lines += _wrap(f"  {key}", text, width)
            lines.append("")
    return "\n".join(lines) + "\n"
