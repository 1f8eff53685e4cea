"""
LDAP search filters for user names: the C{%u/%n/%d} template
(L{popgate.cred.templates}) with every value escaped per RFC 4515, so a
user name such as C{*)(uid=*} matches only itself.
"""

from __future__ import annotations

import re
from typing import Any

from ldaptor import ldapfilter

from popgate.cred.templates import Template

__all__ = ["DEFAULT_FILTER", "escape_filter_value", "expand_filter", "name_attributes",
           "parse_filter"]

DEFAULT_FILTER = "(&(objectClass=inetOrgPerson)(uid=%n))"

_FILTER_SPECIALS = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}


def escape_filter_value(value: str) -> str:
    """
    Escape C{value} for an RFC 4515 filter assertion.  Non-ASCII text stays
    as UTF-8, which RFC 4515 allows and ldaptor's filter parser reads
    correctly.
    """
    return "".join(_FILTER_SPECIALS.get(c, c) for c in value)


def expand_filter(template: str | Template, user: str) -> str:
    """
    Fill C{%u} (full user), C{%n} (local part), C{%d} (domain) and C{%%} in
    C{template}, each value escaped with L{escape_filter_value}.

    @raise ValueError: on an unknown placeholder.
    """
    if isinstance(template, str):
        template = Template(template, "filter")
    return template.expand(user, escape_filter_value)


# An equality assertion on exactly the user name or its local part:
# (uid=%n), (mail=%u), (mail=%n@%d).  The entry's value there is the name's
# stored spelling.
_NAME_ASSERTION = re.compile(r"\(([A-Za-z][A-Za-z0-9-]*)=(%u|%n|%n@%d)\)")


def name_attributes(template: str) -> list[tuple[str, bool]]:
    """
    The attributes a filter compares with the whole user name (C{True}) or
    its local part (C{False}), in filter order: where the directory's
    spelling of the name is found.
    """
    return [(m.group(1), m.group(2) != "%n") for m in _NAME_ASSERTION.finditer(template)]


def parse_filter(text: str) -> Any:
    """ldaptor's filter object for C{text}; L{ValueError} if it is not one."""
    try:
        return ldapfilter.parseFilter(text)
    except (ldapfilter.InvalidLDAPFilter, ValueError) as e:
        raise ValueError(f"invalid LDAP filter {text!r}") from e
