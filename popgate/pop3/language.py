"""
The language of a session's replies: the one place their human text is
rendered (L{Localized._}), and the RFC 6856 C{LANG} command.

Only the human text changes with the language.  Response codes
(C{[AUTH]}, C{[SYS/TEMP]}, ...), counts, octets, unique ids, the CAPA
lines, the greeting and its APOP timestamp, and every multi-line body are
built as bytes outside the text and stay byte for byte the same.  A reply
is written as C{r.err(self._("Some text."), r.SYS_TEMP)}; a text with
parts that vary names them, C{self._("There's no message {number}.",
number=n)}.  C{pybabel extract} finds every such text (the keywords are
L{popgate.i18n.catalogs.KEYWORDS}).

RFC 6856 section 3, as done here:

  - Every session starts in i-default (RFC 2277), the English text in
    ASCII, as RFC 1939 has replies; until a successful C{LANG} popgate's
    own text is ASCII (a value that is not becomes C{?}), but for the
    listing's descriptions, which the RFC has in UTF-8.
  - C{LANG} is valid in AUTHORIZATION and TRANSACTION and announced in
    both; with no argument it lists the languages (a multi-line reply,
    one C{tag SP description} per line), i-default among them.
  - C{LANG range} selects the language a basic language range (RFC 4647)
    matches, C{LANG *} the one the administrator prefers: C{+OK}, a space,
    the exact tag selected, a space, then text already in that language,
    in UTF-8, as every reply after it (whether or not C{UTF8} was given:
    C{UTF8} is about user names and message content, and is left as it
    is).  A range that matches nothing: C{-ERR}, in the language so far.
  - STLS forgets the language chosen before it, as it forgets USER (RFC
    2595 section 4: nothing the client said before TLS is kept).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from popgate.i18n.text import I_DEFAULT, Language
from popgate.interfaces import IStreamTransport
from popgate.pop3 import responses as r
from popgate.pop3.base import BadArgument

if TYPE_CHECKING:
    from popgate.pop3.settings import SessionSettings

__all__ = ["LanguageCommands", "Localized"]

# A basic language range (RFC 4647 section 2.1), at most 64 octets.
_RANGE = re.compile(rb"(?=.{1,64}\Z)(?:\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)", re.DOTALL)
_LANG = frozenset({b"LANG"})
_NONE: frozenset[bytes] = frozenset()


class Localized:
    """What every part of a session that writes a reply shares: its language."""

    #: Changed by C{LANG}; i-default until then.
    language: Language = I_DEFAULT

    def _(self, msgid: str, /, **fields: object) -> bytes:
        """The human text C{msgid} (English, with C{{name}} placeholders
        filled from C{fields}) in this session's language, as reply bytes."""
        return self.language.render(msgid, fields)


class LanguageCommands(Localized):
    """The C{LANG} command of L{popgate.pop3.protocol.POP3ServerProtocol} (a mixin)."""

    settings: SessionSettings
    transport: IStreamTransport
    # The transaction part's cached LIST and UIDL replies.
    _listings: dict[bytes, bytes]

    def language_commands(self) -> frozenset[bytes]:
        """C{{LANG}} when this server offers a choice of language, else nothing."""
        offer = self.settings.languages
        return _LANG if offer is not None and offer.enabled else _NONE

    def language_capabilities(self) -> list[bytes]:
        """The CAPA line, in both states (RFC 6856: LANG takes no arguments there)."""
        return list(self.language_commands())

    def pop3_LANG(self, argument: bytes) -> None:
        offer = self.settings.languages
        assert offer is not None  # else LANG is not a command here
        wanted = argument.strip(b" ")
        if not wanted:
            self.transport.write(r.multiline(self._("Language listing follows"),
                                             list(offer.listing)))
            return
        if not _RANGE.fullmatch(wanted):
            raise BadArgument("Invalid language range.")
        text = wanted.decode("ascii")
        language = offer.match(text)
        if language is None:
            # TRANSLATORS: {range} is what the client asked for, such as de-CH.
            self.transport.write(r.err(self._("Unknown language {range}.", range=text)))
            return
        self.language = language
        # The cached LIST reply has its first line in the language before.
        self._listings.clear()
        tag = language.tag.encode("ascii")
        self.transport.write(r.ok(tag + b" " + self._("Language changed.")))
