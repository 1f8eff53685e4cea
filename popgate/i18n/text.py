"""
The human text of one language, rendered to the bytes of a reply line.

A message is its English text (the gettext msgid), with C{{name}}
placeholders for the parts that vary; a L{Language} maps it to its own
text, or keeps the English one.  Rendering is a dict lookup and, for the
messages without placeholders, no formatting at all: the encoded bytes are
made once, when the catalog is loaded (the English ones at first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["I_DEFAULT", "Language", "N_"]


def N_(msgid: str) -> str:
    """Mark C{msgid} for extraction (C{pybabel extract}), unchanged: for
    text stored now and rendered later, in the session's language."""
    return msgid


# Messages are literals in the code, a few dozen; the bound is for safety.
_CACHED = 1024


def _one_line(text: str) -> str:
    """Nothing that varies may end the reply line."""
    return text.replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True, eq=False)
class Language:
    """
    A language replies can be in (RFC 6856 LANG).

    @ivar tag: the language tag, as C{LANG} lists and confirms it (RFC 5646).
    @ivar name: the language's name in the language itself (the listing's
        description).
    @ivar messages: English text to this language's text; a message that is
        not in it stays English.
    @ivar charset: C{ascii} for i-default, whose text is RFC 1939's ASCII
        (anything else becomes C{?}); C{utf-8} for a negotiated language
        (RFC 6856 section 3: the LANG reply "and subsequent protocol-level
        human-readable text" are UTF-8).
    """

    tag: str
    name: str
    messages: Mapping[str, str] = field(default_factory=dict)
    charset: str = "utf-8"
    _encoded: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = {msgid: _one_line(text).encode(self.charset, "replace")
                   for msgid, text in self.messages.items()}
        object.__setattr__(self, "_encoded", encoded)

    def render(self, msgid: str, fields: Mapping[str, object] | None = None) -> bytes:
        """
        The text of C{msgid} in this language, as reply bytes; C{fields}
        fill its placeholders (C{str.format} syntax).  A message without
        fields is not formatted, so a literal brace in it stays.
        """
        if not fields:
            cached = self._encoded.get(msgid)
            if cached is None:  # not translated: the English text
                cached = _one_line(msgid).encode(self.charset, "replace")
                if len(self._encoded) < _CACHED:
                    self._encoded[msgid] = cached
            return cached
        text = self.messages.get(msgid, msgid).format_map(fields)
        return _one_line(text).encode(self.charset, "replace")


#: RFC 2277's default language, in which every session starts (RFC 6856
#: section 3): the English source text, in ASCII.
I_DEFAULT = Language("i-default", "Default language", charset="ascii")
