"""
The message catalogs keep up with the code: every text a reply can carry
is in the template (C{popgate.pot}) and translated in every shipped
catalog, with the same placeholders; replies get their text only through
the session's language (so a new text cannot slip past the catalogs); and
the developer guide's commands are the ones these tests use.
"""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from popgate.i18n.catalogs import DOMAIN, KEYWORDS, LOCALE_DIR, catalogs, placeholders
from tests.popgate_server import REPO

ROOT = Path(REPO)
SHIPPED = sorted(p.name for p in LOCALE_DIR.iterdir() if (p / "LC_MESSAGES").is_dir())
UPDATE = ("pybabel extract, then pybabel update: see \"Translations\" in docs/extending.md")


def read(path: Path) -> Catalog:
    with path.open("rb") as f:
        return read_po(f)


def extracted() -> dict[str, set[str]]:
    """Every message marked in popgate's code, and where: what C{pybabel
    extract -F babel.cfg} with popgate's keywords finds."""
    with (ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    found: dict[str, set[str]] = {}
    for filename, _, message, _, _ in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=dict.fromkeys(KEYWORDS)):
        assert isinstance(message, str), (filename, message)  # no plural forms
        found.setdefault(message, set()).add(filename)
    return found


TEMPLATE = read(LOCALE_DIR / f"{DOMAIN}.pot")
MSGIDS = {str(m.id) for m in TEMPLATE if m.id}


def test_shipped_catalogs() -> None:
    assert SHIPPED == ["de", "fr"]
    assert list(catalogs()) == ["i-default", "en", "de", "fr"]


def test_the_template_has_every_message_of_the_code_and_no_other() -> None:
    code = extracted()
    assert len(code) > 40
    missing = sorted(set(code) - MSGIDS)
    assert not missing, f"new texts not in popgate.pot ({UPDATE}): {missing}"
    stale = sorted(MSGIDS - set(code))
    assert not stale, f"texts no longer used, still in popgate.pot ({UPDATE}): {stale}"


@pytest.mark.parametrize("tag", SHIPPED)
def test_every_catalog_translates_every_message(tag: str) -> None:
    catalog = read(LOCALE_DIR / tag / "LC_MESSAGES" / f"{DOMAIN}.po")
    assert str(catalog.locale) == tag
    messages = {str(m.id): m for m in catalog if m.id}
    missing = sorted(MSGIDS - set(messages))
    assert not missing, f"{tag}: not in the catalog ({UPDATE}): {missing}"
    for msgid in sorted(MSGIDS):
        message = messages[msgid]
        assert isinstance(message.string, str) and message.string, f"{tag}: untranslated {msgid!r}"
        assert not message.fuzzy, f"{tag}: fuzzy (check it, then remove the flag): {msgid!r}"
        assert "\r" not in message.string and "\n" not in message.string, (tag, msgid)


@pytest.mark.parametrize("tag", SHIPPED)
def test_the_placeholders_are_the_msgids(tag: str) -> None:
    catalog = read(LOCALE_DIR / tag / "LC_MESSAGES" / f"{DOMAIN}.po")
    for message in catalog:
        if not message.id or not message.string:
            continue
        msgid, msgstr = str(message.id), str(message.string)
        assert placeholders(msgstr) == placeholders(msgid), (tag, msgid, msgstr)
        values = dict.fromkeys(placeholders(msgid), 7)
        assert msgstr.format_map(values)  # renders, as a session will
        if placeholders(msgid):
            assert "python-brace-format" in message.flags, (tag, msgid)


def test_every_msgid_renders_with_its_placeholders() -> None:
    for msgid in MSGIDS:
        names = {name for _, name, _, _ in string.Formatter().parse(msgid) if name is not None}
        assert msgid.format_map(dict.fromkeys(names, 1))
        assert msgid.isascii(), msgid  # i-default is ASCII


# -- replies take their text from the session's language only


_REPLY_BUILDERS = {"ok", "err", "multiline"}
#: Machine-readable first lines, the same in every language.
_NOT_HUMAN = {b"%d octets"}  # RETR: clients read the size from it (fetchmail)


def _calls(path: Path) -> list[tuple[int, ast.Call]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _bytes_with_words(node: ast.AST) -> bytes | None:
    """A bytes literal (or C{literal % ...}) with letters in it."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        node = node.left
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        if re.search(rb"[A-Za-z]", re.sub(rb"%[-#0 +]*[0-9]*[a-z]", b"", node.value)):
            return node.value
    return None


def test_replies_get_their_text_through_the_language() -> None:
    """C{r.err(b"Text.")} would send English in every language: a reply's
    text is C{self._("Text.")}, and a BadArgument's a plain string (an
    f-string would never be in the catalogs: use placeholders)."""
    wrong = []
    for path in sorted((ROOT / "popgate").rglob("*.py")):
        for line, call in _calls(path):
            func = call.func
            where = f"{path.relative_to(ROOT)}:{line}"
            if (isinstance(func, ast.Attribute) and func.attr in _REPLY_BUILDERS
                    and isinstance(func.value, ast.Name) and func.value.id == "r" and call.args):
                text = _bytes_with_words(call.args[0])
                if text is not None and text not in _NOT_HUMAN:
                    wrong.append(f"{where}: r.{func.attr}({text!r})")
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in KEYWORDS and call.args:
                first = call.args[0]
                literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
                if isinstance(first, ast.JoinedStr) or (name != "_" and not literal):
                    wrong.append(f"{where}: {name}({ast.unparse(first)})")
    assert not wrong, "texts the catalogs cannot have:\n" + "\n".join(wrong)


# -- the developer guide


def test_the_guide_has_the_extract_command_these_tests_use() -> None:
    guide = (ROOT / "docs" / "extending.md").read_text()
    start = guide.index("pybabel extract")
    command = guide[start:guide.index("\n\n", start)].replace("\\\n", " ")
    words = command.split()
    assert "-F" in words and words[words.index("-F") + 1] == "babel.cfg"
    keywords = [words[i + 1] for i, w in enumerate(words) if w == "-k"]
    assert sorted(keywords) == sorted(KEYWORDS)
    assert "--no-default-keywords" in words
    assert "popgate/i18n/locale/popgate.pot" in words
    for step in ("pybabel init", "pybabel update", "--locale-dir"):
        assert step in guide, step
