"""
Routes from an LDAP directory: the user's entry (found by C{filter}, as
the C{ldap:} user store finds it) holds the upstream's URL in
C{attribute} (C{mailHost}, C{labeledURI}...).

The connection keys and their checks are the user store's
(L{popgate.cred.ldap_settings}), and so is the connection
(L{popgate.cred.ldap_directory}: one service connection, reopened when it
drops, every operation timed): a directory that is down or slow is
L{TemporaryFailure}.  Nothing here binds as the user: routing never
checks a password.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from popgate.cred.args import ArgSpec
from popgate.cred.ldap_directory import Directory
from popgate.cred.ldap_filter import expand_filter, parse_filter
from popgate.cred.ldap_settings import ARGS as USER_STORE_ARGS
from popgate.cred.ldap_settings import LDAPSettings, settings_from
from popgate.cred.templates import Template
from popgate.cred.text import user_name
from popgate.errors import PermanentFailure

__all__ = ["ARGS", "LDAPRoutes", "make_source"]

_CONNECTION = ("url", "base", "filter", "binddn", "bindpw", "bindpw_file", "starttls",
               "cafile", "timeout", "connect_timeout")

ARGS = ArgSpec(
    "ldap",
    {**{key: USER_STORE_ARGS.help[key] for key in _CONNECTION},
     "attribute": "The attribute holding the user's upstream URL, e.g. mailHost "
                  "(pop3s://mail2.example.org)."},
    free_text=USER_STORE_ARGS.free_text,
    required=("url", "base", "attribute"),
)


class LDAPRoutes:
    """The URL in C{attribute} of the user's one entry."""


    def __init__(self, settings: LDAPSettings, attribute: str, reactor: Any) -> None:
        self.attribute = attribute
        self._filter = Template(settings.filter, "filter")
        self.directory = Directory(settings, [attribute], reactor)

    def lookup(self, name: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._lookup(name))

    async def _lookup(self, name: str) -> str | None:
        user = user_name(name)
        if user is None:
            return None
        entries = await self.directory.search(parse_filter(expand_filter(self._filter, user)))
        if len(entries) > 1:  # the login's error line says so
            raise PermanentFailure(f"the LDAP filter matches several entries for {user}")
        return (entries[0].first(self.attribute) or None) if entries else None

    def probe(self) -> Deferred[str]:
        return Deferred.fromCoroutine(self.directory.probe())


def make_source(argstring: str, reactor: Any) -> LDAPRoutes:
    """C{--route ldap:url=...,base=...,attribute=...[,filter=...][,binddn=...]...}

    @raise ValueError: with a one-line reason."""
    args = ARGS.parse(argstring)
    return LDAPRoutes(settings_from(args), args["attribute"], reactor)
