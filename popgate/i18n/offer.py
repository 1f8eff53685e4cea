"""
The languages a server offers with RFC 6856 LANG, and which one a
client's language range selects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from twisted.python import usage

from popgate.i18n.catalogs import CatalogError, catalogs
from popgate.i18n.text import I_DEFAULT, Language

__all__ = ["LanguageOffer", "language_offer"]


@dataclass(frozen=True, eq=False)
class LanguageOffer:
    """
    @ivar languages: what C{LANG} lists, i-default first (RFC 6856: a
        server MUST include it).
    @ivar preferred: what C{LANG *} selects, the administrator's choice.
    @ivar listing: the lines of C{LANG}'s listing, C{tag SP description},
        the description in the language itself, in UTF-8 (RFC 6856
        section 3).
    """

    languages: tuple[Language, ...]
    preferred: Language
    listing: tuple[bytes, ...] = field(init=False)
    _by_tag: dict[str, Language] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listing", tuple(
            language.tag.encode("ascii") + b" " + language.name.encode("utf-8")
            for language in self.languages))
        object.__setattr__(self, "_by_tag", {
            language.tag.lower(): language for language in self.languages})

    @property
    def enabled(self) -> bool:
        """Whether there is anything to choose: i-default alone offers no LANG."""
        return len(self.languages) > 1

    def match(self, wanted: str) -> Language | None:
        """
        The language a basic language range (RFC 4647) selects: C{*}, the
        preferred one (RFC 6856); else the tag itself (case does not
        matter); else the first offered tag that it is a prefix of (basic
        filtering, RFC 4647 section 3.3.1: C{de} finds C{de-CH}); else
        the longest offered prefix of it (lookup, section 3.4: C{de-CH-1996}
        finds C{de}); else None.
        """
        if wanted == "*":
            return self.preferred
        key = wanted.lower()
        found = self._by_tag.get(key)
        if found is not None:
            return found
        for language in self.languages:
            if language.tag.lower().startswith(key + "-"):
                return language
        subtags = key.split("-")
        while len(subtags) > 1:
            subtags.pop()
            if len(subtags) > 1 and len(subtags[-1]) == 1:
                subtags.pop()  # a singleton (x, u, ...) does not end a tag
            found = self._by_tag.get("-".join(subtags))
            if found is not None:
                return found
        return None


def language_offer(tags: tuple[str, ...] = (), preferred: str = "i-default",
                   locale_dir: str | None = None) -> LanguageOffer:
    """
    The offer of C{--languages} (empty: every language there is a catalog
    for), C{--preferred-language} and C{--locale-dir}.  Built once per
    process for each set of values: the first call reads the catalogs
    (at start-up), a later one (a reload) is a dict lookup.

    @raise usage.UsageError: naming the option.
    """
    return _offer(tuple(tags), preferred, locale_dir)


@functools.cache
def _offer(tags: tuple[str, ...], preferred: str, locale_dir: str | None) -> LanguageOffer:
    try:
        available = catalogs(locale_dir)
    except CatalogError as e:
        raise usage.UsageError(f"--locale-dir: {e}" if locale_dir else str(e)) from None
    names = ", ".join(language.tag for language in available.values())
    if not tags:
        chosen = list(available.values())
    else:
        chosen = [I_DEFAULT]
        for tag in tags:
            language = available.get(tag.lower().replace("_", "-"))
            if language is None:
                raise usage.UsageError(f"--languages: no catalog for {tag!r} (there are: {names})")
            if language not in chosen:
                chosen.append(language)
    choice = available.get(preferred.lower().replace("_", "-"))
    if choice is None or choice not in chosen:
        offered = ", ".join(language.tag for language in chosen)
        raise usage.UsageError(f"--preferred-language: {preferred!r} is not one of the "
                               f"languages offered ({offered})")
    return LanguageOffer(tuple(chosen), choice)
