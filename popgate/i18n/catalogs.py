"""
The message catalogs: gettext C{.po} files, read with Babel once per
process, at start-up.

Why C{.po} files read at start-up rather than C{.mo} files compiled at
build time: nothing binary is kept in git or has to be rebuilt; the
editable install in C{.venv}, a wheel and an sdist all carry the very
same text files as package data, with no build hook that an editable
install could skip; and an operator's catalog in C{--locale-dir} is used
as the translator saved it.  Reading the three shipped catalogs takes a
few milliseconds, once: a session switching language costs a dict
lookup, never a file read.

Layout, the one C{pybabel init} makes (C{-D popgate}):
C{DIR/TAG/LC_MESSAGES/popgate.po}, TAG a language tag (RFC 5646), with
C{-} or gettext's C{_} (C{pt_BR} is listed as C{pt-BR}).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path

from popgate.i18n.text import I_DEFAULT, Language

__all__ = ["DOMAIN", "KEYWORDS", "LOCALE_DIR", "CatalogError", "catalogs", "placeholders",
           "read_catalog"]

#: The gettext domain: the catalogs' file name.
DOMAIN = "popgate"
#: The catalogs popgate ships, and its template (C{popgate.pot}).
LOCALE_DIR = Path(__file__).parent / "locale"
#: What marks a message in popgate's code, for C{pybabel extract -k}:
#: C{self._("...")} renders one now, C{N_("...")} marks one kept for
#: later, C{BadArgument("...")} is one raised by a command.
KEYWORDS = ("_", "N_", "BadArgument")
#: The source language, which needs no catalog: the msgids are its text.
ENGLISH = Language("en", "English")

_TAG = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*")


class CatalogError(ValueError):
    """A catalog that cannot be used: the message names the file."""


def placeholders(text: str) -> set[str]:
    """The C{{name}} placeholders of a message.

    @raise ValueError: a brace that is not a placeholder (C{{{}} escapes one).
    """
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _display_name(tag: str) -> str:
    """The language's name in itself, from Babel's CLDR data (C{Deutsch},
    C{Français}); the tag itself for a language CLDR does not know."""
    from babel import Locale, UnknownLocaleError

    try:
        name = Locale.parse(tag, sep="-").get_display_name() or tag
    except (UnknownLocaleError, ValueError):
        return tag
    return name[:1].upper() + name[1:]


def read_catalog(path: Path, tag: str) -> Language:
    """
    The language of the catalog at C{path}: its translated messages (fuzzy
    and empty ones are left out, and stay English, as gettext does).

    @raise CatalogError: the file does not parse, or a translation's
        placeholders are not its msgid's (it would fail in a session).
    """
    from babel.messages.pofile import PoFileError, read_po

    try:
        with path.open("rb") as f:
            catalog = read_po(f, domain=DOMAIN, abort_invalid=True)
    except (OSError, PoFileError, ValueError) as e:
        raise CatalogError(f"{path}: {e}") from None
    messages: dict[str, str] = {}
    for message in catalog:
        msgid, msgstr = message.id, message.string
        if not msgid or message.fuzzy or not isinstance(msgid, str):
            continue  # the header; a draft; plural forms (popgate has none)
        if not isinstance(msgstr, str) or not msgstr:
            continue
        try:
            same = placeholders(msgstr) == placeholders(msgid)
        except ValueError as e:
            raise CatalogError(f"{path}: {msgid!r}: {e}") from None
        if not same:
            raise CatalogError(f"{path}: the translation of {msgid!r} has the placeholders "
                               f"{sorted(placeholders(msgstr))}, not {sorted(placeholders(msgid))}")
        messages[msgid] = msgstr
    return Language(tag, _display_name(tag), messages)


def _found(directory: Path) -> Iterator[tuple[str, Path]]:
    if not directory.is_dir():
        raise CatalogError(f"{directory}: not a directory")
    for entry in sorted(directory.iterdir()):
        path = entry / "LC_MESSAGES" / f"{DOMAIN}.po"
        # i-default is the English source text in ASCII: not translated.
        if _TAG.fullmatch(entry.name) and entry.name.lower() != "i-default" and path.is_file():
            yield entry.name.replace("_", "-"), path


@functools.cache
def catalogs(extra: str | None = None) -> Mapping[str, Language]:
    """
    Every language there is a catalog for, by lower-case tag: i-default
    and English, those popgate ships, and those in C{extra} (an
    operator's C{--locale-dir}, which wins over a shipped one of the same
    tag).  Read once per process and kept (blocking: call it at start-up).

    @raise CatalogError: naming the file.
    """
    found: dict[str, Language] = {"i-default": I_DEFAULT, "en": ENGLISH}
    directories = [LOCALE_DIR] + ([Path(extra)] if extra else [])
    for directory in directories:
        for tag, path in _found(directory):
            found[tag.lower()] = read_catalog(path, tag)
    return found
