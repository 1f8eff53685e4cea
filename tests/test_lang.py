"""
RFC 6856 LANG, in memory: CAPA, the listing, switching, C{*}, unknown and
malformed ranges, both states, STLS; and that in every shipped language
only the human text changes -- response codes, counts, octets, unique ids,
CAPA and every multi-line body stay byte for byte the same.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from popgate import errors
from popgate.admin import check
from popgate.build import session_settings
from popgate.i18n.catalogs import ENGLISH, LOCALE_DIR, catalogs, read_catalog
from popgate.i18n.offer import language_offer
from popgate.i18n.text import I_DEFAULT, Language
from popgate.pop3.settings import SessionSettings
from popgate.settings import Config, resolve
from popgate.stores.memory import MemoryStore

from .helpers import Session, connect, make_portal
from .test_protocol import FailingStore, WrappingStore
from .test_tls import stls_session

OFFER = language_offer()
SETTINGS = SessionSettings(languages=OFFER)
LISTING = ("+OK Language listing follows\r\n"
           "i-default Default language\r\n"
           "en English\r\n"
           "de Deutsch\r\n"
           "fr Français\r\n"
           ".\r\n").encode()
REMOTE = IPv4Address("TCP", "192.0.2.1", 40000)  # TEST-NET-1: never contacted
M1 = b"From: a@example.org\nSubject: one\n\nfirst body\n.leading dot\n"
M2 = b"Subject: two\n\n" + b"line\n" * 50
with (LOCALE_DIR / "popgate.pot").open("rb") as _pot:
    MSGIDS = sorted(str(m.id) for m in read_po(_pot) if m.id)


def store_with_mail() -> MemoryStore:
    store = MemoryStore()
    store.add_message("alice", M1)
    store.add_message("alice", M2)
    return store


def session(settings: SessionSettings = SETTINGS, store: MemoryStore | None = None,
            peer: IPv4Address | None = None) -> Session:
    portal, _ = make_portal(store if store is not None else store_with_mail())
    transport = StringTransport(peerAddress=peer) if peer is not None else None
    s = connect(portal, settings=settings, transport=transport)
    s.take()
    return s


def capa(s: Session) -> list[bytes]:
    reply = s.send(b"CAPA\r\n")
    assert reply.endswith(b"\r\n.\r\n")
    return reply.split(b"\r\n")[1:-2]


# -- CAPA and the listing


def test_capa_announces_lang_in_both_states() -> None:
    s = session()
    assert capa(s) == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                       b"USER", b"SASL PLAIN LOGIN CRAM-MD5", b"UTF8", b"LANG",
                       b"IMPLEMENTATION popgate"]
    s.login()
    assert capa(s) == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                       b"LANG", b"IMPLEMENTATION popgate"]


@pytest.mark.parametrize("settings", [
    SessionSettings(),  # a protocol built without an offer
    SessionSettings(languages=language_offer(("i-default",))),  # nothing to choose
], ids=["no-offer", "i-default-alone"])
def test_no_lang_without_a_choice(settings: SessionSettings) -> None:
    s = session(settings)
    assert b"LANG" not in capa(s)
    assert s.send(b"LANG\r\n") == b"-ERR Unknown command.\r\n"
    s.login()
    assert b"LANG" not in capa(s)
    assert s.send(b"LANG de\r\n") == b"-ERR Unknown command.\r\n"


def test_listing_is_multiline_tag_space_description() -> None:
    s = session()
    assert s.send(b"LANG\r\n") == LISTING
    # The descriptions are each language's own name, whatever the session's.
    s.send(b"LANG de\r\n")
    assert s.send(b"LANG\r\n") == LISTING.replace(b"Language listing follows",
                                                  b"Liste der Sprachen folgt")
    assert s.send(b"LANG  \r\n").endswith(b"de Deutsch\r\n" + "fr Français\r\n".encode() + b".\r\n")


def test_listing_of_chosen_languages() -> None:
    s = session(SessionSettings(languages=language_offer(("fr",), "fr")))
    assert s.send(b"LANG\r\n") == (b"+OK Language listing follows\r\ni-default Default language\r\n"
                                   + "fr Français\r\n".encode() + b".\r\n")
    assert s.send(b"LANG de\r\n") == b"-ERR Unknown language de.\r\n"
    assert s.send(b"LANG *\r\n") == "+OK fr Langue changée.\r\n".encode()


# -- switching


def test_the_lang_reply_is_in_the_new_language_and_so_is_every_reply_after() -> None:
    s = session()
    assert s.send(b"LANG de\r\n") == "+OK de Sprache geändert.\r\n".encode()
    assert s.send(b"PASS x\r\n") == b"-ERR Kein Benutzername angegeben.\r\n"
    assert s.send(b"FOO\r\n") == b"-ERR Unbekannter Befehl.\r\n"
    assert s.send(b"USER alice\r\nPASS secret\r\n") == b"+OK\r\n+OK Angemeldet.\r\n"
    assert s.send(b"RETR 9\r\n") == b"-ERR Es gibt keine Nachricht 9.\r\n"
    assert s.send(b"LANG fr\r\n") == "+OK fr Langue changée.\r\n".encode()
    assert s.send(b"DELE 1\r\n") == "+OK Marqué pour suppression.\r\n".encode()
    assert s.send(b"LANG en\r\n") == b"+OK en Language changed.\r\n"
    assert s.send(b"RETR 1\r\n") == b"-ERR Message is deleted.\r\n"
    assert s.send(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"


def test_back_to_i_default() -> None:
    s = session()
    s.send(b"LANG fr\r\n")
    assert s.send(b"LANG i-default\r\n") == b"+OK i-default Language changed.\r\n"
    assert s.protocol.language is I_DEFAULT
    assert s.send(b"FOO\r\n") == b"-ERR Unknown command.\r\n"


def test_star_selects_the_preferred_language() -> None:
    assert session().send(b"LANG *\r\n") == b"+OK i-default Language changed.\r\n"
    s = session(SessionSettings(languages=language_offer((), "de")))
    assert s.send(b"LANG *\r\n") == "+OK de Sprache geändert.\r\n".encode()


@pytest.mark.parametrize("wanted, tag", [
    (b"de", b"de"), (b"DE", b"de"), (b"de-CH", b"de"), (b"de-CH-1996", b"de"),
    (b"fr-CA-x-foo", b"fr"), (b"en-US", b"en"), (b"En-gb", b"en"), (b"I-DEFAULT", b"i-default"),
])
def test_a_range_selects_the_tag_it_matches_and_the_reply_names_that_tag(
        wanted: bytes, tag: bytes) -> None:
    reply = session().send(b"LANG " + wanted + b"\r\n")
    assert reply.startswith(b"+OK " + tag + b" ")


def test_basic_filtering_finds_a_longer_offered_tag() -> None:
    offer = language_offer(("de",))
    chosen = Language("de-CH", "Schweizer Hochdeutsch", {"Logged in.": "Angemeldet."})
    wider = type(offer)((I_DEFAULT, chosen), I_DEFAULT)
    assert wider.match("de") is chosen
    assert wider.match("de-ch") is chosen
    assert wider.match("fr") is None


def test_an_unknown_language_keeps_the_language_so_far() -> None:
    s = session()
    assert s.send(b"LANG zz\r\n") == b"-ERR Unknown language zz.\r\n"
    s.send(b"LANG de\r\n")
    assert s.send(b"LANG uga\r\n") == b"-ERR Unbekannte Sprache uga.\r\n"
    assert s.protocol.language.tag == "de"
    assert s.send(b"NOOP\r\n") == b"-ERR Unbekannter Befehl.\r\n"  # not logged in yet


@pytest.mark.parametrize("argument", [
    b"de_DE", b"1234", b"de fr", b"de-", b"-de", b"toolongtag", b"de-toolongsub",
    "dé".encode(), b"\xff", b"**", b"x" * 70, b"de-" + b"-".join([b"ab"] * 30),
])
def test_a_malformed_range_is_refused(argument: bytes) -> None:
    s = session()
    assert s.send(b"LANG " + argument + b"\r\n") == b"-ERR Invalid language range.\r\n"
    assert s.protocol.language is I_DEFAULT
    assert not s.transport.disconnecting


def test_malformed_ranges_count_as_bad_commands_after_login() -> None:
    s = session(SessionSettings(languages=OFFER, max_bad_commands=2))
    s.login()
    s.send(b"LANG de fr\r\nLANG 12\r\n")
    assert not s.transport.disconnecting
    assert s.send(b"LANG !\r\n").endswith(b"-ERR Too many bad commands.\r\n")
    assert s.transport.disconnecting


def test_lang_in_the_transaction_state_redoes_the_list_reply() -> None:
    s = session()
    s.login()
    assert s.send(b"LIST\r\n").startswith(b"+OK 2 messages:\r\n")
    s.send(b"LANG de\r\n")
    assert s.send(b"LIST\r\n").startswith(b"+OK 2 Nachrichten:\r\n")
    s.send(b"LANG fr\r\n")
    assert s.send(b"LIST\r\n").startswith(b"+OK 2 messages :\r\n")


def test_lang_is_pipelined_in_order() -> None:
    s = session()
    assert s.send(b"LANG de\r\nFOO\r\nLANG fr\r\nFOO\r\n") == (
        "+OK de Sprache geändert.\r\n-ERR Unbekannter Befehl.\r\n"
        "+OK fr Langue changée.\r\n-ERR Commande inconnue.\r\n").encode()


def test_stls_forgets_the_language() -> None:
    s = stls_session(settings=SETTINGS)
    assert s.send(b"LANG de\r\n") == "+OK de Sprache geändert.\r\n".encode()
    assert s.send(b"STLS\r\n") == b"+OK TLS-Aushandlung jetzt beginnen.\r\n"
    assert s.protocol.language is I_DEFAULT
    assert s.send(b"FOO\r\n") == b"-ERR Unknown command.\r\n"


# -- i-default is ASCII, a negotiated language UTF-8, every reply one line


def test_i_default_is_ascii_and_a_negotiated_language_utf8() -> None:
    assert I_DEFAULT.render("Unknown language {range}.", {"range": "dé"}) == \
        b"Unknown language d?."
    assert ENGLISH.render("Unknown language {range}.", {"range": "dé"}) == \
        "Unknown language dé.".encode()
    assert I_DEFAULT.render("Ünknown.") == b"?nknown."


def test_a_value_cannot_end_the_line() -> None:
    german = catalogs()["de"]
    assert german.render("There's no message {number}.", {"number": "1\r\n+OK x"}) == \
        b"Es gibt keine Nachricht 1  +OK x."


def test_a_message_without_fields_keeps_its_braces() -> None:
    assert I_DEFAULT.render("{not a field}") == b"{not a field}"


# -- only the human text changes


def script(language: bytes | None, peer: IPv4Address | None = None) -> list[bytes]:
    """The replies of one session that touches every kind of reply, after
    C{LANG language} (none: i-default), one entry per command."""
    store = store_with_mail()
    s = session(store=store, peer=peer)
    replies = []
    if language is not None:
        s.send(b"LANG " + language + b"\r\n")
    commands = [b"CAPA", b"FOO", b"PASS x", b"APOP alice 123", b"AUTH", b"AUTH X", b"AUTH PLAIN !",
                b"UTF8", b"STLS", b"LANG zz", b"LANG 1", b"USER alice", b"PASS wrong"]
    for command in commands:
        replies.append(s.send(command + b"\r\n"))
        s.clock.advance(5)
        replies[-1] += s.take()
    other = session(store=store)  # the maildrop is locked by the first session
    if language is not None:
        other.send(b"LANG " + language + b"\r\n")
    replies.append(s.send(b"USER alice\r\nPASS secret\r\n"))
    replies.append(other.send(b"USER alice\r\nPASS secret\r\n"))
    for command in [b"CAPA", b"STAT", b"LIST", b"LIST 2", b"LIST 3", b"LIST x", b"LIST 1 2",
                    b"LIST 99999999999", b"UIDL", b"UIDL 1", b"RETR 1", b"TOP 2 3", b"TOP 1",
                    b"TOP 1 x", b"TOP 1 99999999999999999999999", b"TOP 1 1 1", b"DELE 1",
                    b"DELE 1", b"LIST", b"STAT", b"RSET", b"NOOP", b"LANG", b"USER x", b"QUIT"]:
        replies.append(s.send(command + b"\r\n"))
    return replies


def _patterns(language: Language) -> list[tuple[re.Pattern[bytes], str]]:
    """Each message as this language renders it, its placeholders groups."""
    patterns = []
    for msgid in MSGIDS:
        pattern = b""
        for literal, name, _, _ in string.Formatter().parse(language.messages.get(msgid, msgid)):
            pattern += re.escape(literal.encode(language.charset))
            if name is not None:
                pattern += rb"(.*?)"
        patterns.append((re.compile(pattern), msgid))
    return patterns


def read(line: bytes, language: Language) -> bytes | tuple[bytes, bytes, frozenset[object]]:
    """A status line with human text: its status, its response code, and
    which messages (with which values) its text can be; any other line
    (a body line, C{+OK 2 320}, C{+OK 63 octets}) as it is."""
    status = re.fullmatch(rb"(\+OK|-ERR)( \[[^]]+\])? (.+)", line)
    if status is None:
        return line
    messages = frozenset((msgid, found.groups()) for pattern, msgid in _patterns(language)
                         if (found := pattern.fullmatch(status.group(3))) is not None)
    if not messages:
        return line
    return status.group(1), status.group(2) or b"", messages


def assert_same_but_the_text(plain: bytes, localized: bytes, language: Language) -> None:
    """Line by line: the same bytes, or the same status, response code and
    message with the same values, in another language."""
    before, after = plain.split(b"\r\n"), localized.split(b"\r\n")
    assert len(before) == len(after), (plain, localized)
    for line, other in zip(before, after, strict=True):
        english = read(line, I_DEFAULT)
        if isinstance(english, bytes):
            assert other == line, (plain, localized)
            continue
        translated = read(other, language)
        assert not isinstance(translated, bytes), (line, other)
        assert translated[:2] == english[:2], (line, other)
        assert english[2] & translated[2], (line, other)


@pytest.mark.parametrize("tag", [b"en", b"de", b"fr"])
@pytest.mark.parametrize("peer", [None, REMOTE], ids=["loopback", "remote"])
def test_only_the_human_text_changes(tag: bytes, peer: IPv4Address | None) -> None:
    language = catalogs()[tag.decode()]
    plain, localized = script(None, peer), script(tag, peer)
    for before, after in zip(plain, localized, strict=True):
        assert_same_but_the_text(before, after, language)
    if tag == b"en":
        assert plain == localized
    else:
        changed = sum(before != after for before, after in zip(plain, localized, strict=True))
        assert changed > 15
    codes = b"".join(localized)
    if peer is REMOTE:
        assert codes.count(b"-ERR [AUTH] ") >= 3  # USER, PASS refused; AUTH X
    else:
        assert b"-ERR [IN-USE] " in codes and b"-ERR [AUTH] " in codes


@pytest.mark.parametrize("failure, code", [
    (errors.TemporaryFailure("db"), b"SYS/TEMP"), (errors.PermanentFailure("x"), b"SYS/PERM"),
    (errors.MaildropInUse("x"), b"IN-USE"),
])
@pytest.mark.parametrize("tag", ["de", "fr"])
def test_login_failures_keep_their_codes(failure: Exception, code: bytes, tag: str) -> None:
    portal, _ = make_portal(FailingStore(failure))
    replies = []
    for language in (None, tag):
        s = connect(portal, settings=SETTINGS)
        s.take()
        if language is not None:
            s.send(b"LANG " + language.encode() + b"\r\n")
        replies.append(s.send(b"USER alice\r\nPASS secret\r\n"))
    english, localized = replies
    assert localized.startswith(b"+OK\r\n-ERR [" + code + b"] ") and localized != english
    assert_same_but_the_text(english, localized, catalogs()[tag])


def test_retr_failure_and_quit_failure_keep_their_codes() -> None:
    wrapping = WrappingStore(store_with_mail())
    portal, _ = make_portal(wrapping)
    s = connect(portal, settings=SETTINGS)
    s.take()
    s.send(b"LANG de\r\nUSER alice\r\nPASS secret\r\n")
    wrapping.opened[0].open_failure = errors.TemporaryFailure("nfs")
    assert s.send(b"RETR 1\r\n") == (b"-ERR [SYS/TEMP] Vor\xc3\xbcbergehender Fehler beim Lesen "
                                     b"der Nachricht.\r\n")


def test_timeouts_and_kick_are_localized_and_keep_their_codes() -> None:
    s = session()
    s.send(b"LANG fr\r\n")
    s.protocol.disconnect_by_admin()
    assert s.take() == "-ERR [SYS/PERM] Déconnecté par l'administrateur.\r\n".encode()
    s = session(SessionSettings(languages=OFFER, login_timeout=10))
    s.send(b"LANG de\r\n")
    s.clock.advance(10)
    assert s.take() == b"-ERR Getrennt: keine Anmeldung in der vorgesehenen Zeit.\r\n"


def test_the_greeting_and_its_apop_timestamp_do_not_change() -> None:
    portal, _ = make_portal(store_with_mail())
    s = connect(portal, settings=SETTINGS)
    greeting = s.take()
    assert re.fullmatch(rb"\+OK popgate ready\. <[0-9]+\.[0-9]+\.[0-9]+@localhost>\r\n", greeting)


# -- the offer, the options, the catalogs


def test_the_default_offer_is_every_catalog_and_the_build_uses_it() -> None:
    assert [language.tag for language in OFFER.languages] == ["i-default", "en", "de", "fr"]
    assert OFFER.preferred is I_DEFAULT
    settings = session_settings(Config(), "mail.example.org")
    assert settings.languages is OFFER  # built once per process
    configured = session_settings(resolve({"languages": ["de"], "preferred_language": "de"}),
                                  "h")
    assert configured.languages is not None
    assert [language.tag for language in configured.languages.languages] == ["i-default", "de"]


def test_options_parse() -> None:
    config = resolve({"languages": ["de, fr"], "preferred_language": "fr"})
    assert config.languages == ("de", "fr")
    assert resolve({}, {"languages": ["de", "fr"]}).languages == ("de", "fr")
    with pytest.raises(usage.UsageError, match="--languages: not a language tag: 'd e'"):
        resolve({"languages": ["d e"]})


@pytest.mark.parametrize("tags, preferred, message", [
    (("xx",), "i-default", "--languages: no catalog for 'xx' (there are: i-default, en, de, fr)"),
    (("de",), "fr", "--preferred-language: 'fr' is not one of the languages offered "
                    "(i-default, de)"),
    ((), "zz", "--preferred-language: 'zz' is not one"),
])
def test_offer_errors_name_the_option(tags: tuple[str, ...], preferred: str,
                                      message: str) -> None:
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        language_offer(tags, preferred)


def write_catalog(path: Path, translations: dict[str, str], locale: str | None = "de") -> None:
    catalog = Catalog(locale=locale, domain="popgate")
    for msgid, msgstr in translations.items():
        catalog.add(msgid, msgstr)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        write_po(f, catalog)


def test_a_locale_dir_adds_and_overrides_languages(tmp_path: Path) -> None:
    write_catalog(tmp_path / "it" / "LC_MESSAGES" / "popgate.po",
                  {"Logged in.": "Connesso.", "Language changed.": "Lingua cambiata."}, "it")
    write_catalog(tmp_path / "de" / "LC_MESSAGES" / "popgate.po", {"Logged in.": "Drin."})
    write_catalog(tmp_path / "x-klingon" / "LC_MESSAGES" / "popgate.po", {"Logged in.": "Qapla'."},
                  None)
    offer = language_offer((), "it", str(tmp_path))
    assert [language.tag for language in offer.languages] == [
        "i-default", "en", "de", "fr", "it", "x-klingon"]
    assert offer.listing[-2:] == (b"it Italiano", b"x-klingon x-klingon")
    s = session(SessionSettings(languages=offer))
    assert s.send(b"LANG *\r\n") == b"+OK it Lingua cambiata.\r\n"
    # Not translated there: English.
    assert s.send(b"PASS x\r\n") == b"-ERR No username given.\r\n"
    s.send(b"LANG de\r\n")
    assert s.send(b"USER alice\r\nPASS secret\r\n") == b"+OK\r\n+OK Drin.\r\n"
    assert s.send(b"FOO\r\n") == b"-ERR Unknown command.\r\n"  # not in this de


def test_a_catalog_whose_placeholders_differ_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "de" / "LC_MESSAGES" / "popgate.po"
    write_catalog(path, {"There's no message {number}.": "Keine Nachricht {nummer}."})
    with pytest.raises(usage.UsageError, match=r"--locale-dir: .*popgate\.po: the translation "
                                               r"of \"There's no message \{number\}\.\""):
        language_offer((), "i-default", str(tmp_path))
    write_catalog(path, {"Logged in.": "Angemeldet {."})
    with pytest.raises(usage.UsageError, match="Angemeldet|Logged in"):
        language_offer((), "i-default", str(tmp_path))


def test_a_missing_locale_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--locale-dir: .*: not a directory"):
        language_offer((), "i-default", str(tmp_path / "nowhere"))


def test_fuzzy_and_empty_translations_stay_english(tmp_path: Path) -> None:
    path = tmp_path / "de.po"
    catalog = Catalog(locale="de", domain="popgate")
    catalog.add("Logged in.", "Angemeldet.", flags=["fuzzy"])
    catalog.add("Logging out.", "")
    catalog.add("Unknown command.", "Unbekannter Befehl.")
    with path.open("wb") as f:
        write_po(f, catalog)
    language = read_catalog(path, "de")
    assert dict(language.messages) == {"Unknown command.": "Unbekannter Befehl."}
    assert language.render("Logged in.") == b"Logged in."


def test_check_config_reports_a_language_without_a_catalog() -> None:
    config = resolve({"store": "memory:", "auth": ["memory:a:b"], "languages": ["de", "xx"]})
    found = check.build_parts(config, MemoryReactorClock())
    assert found.problems == ["--languages: no catalog for 'xx' (there are: i-default, en, de, fr)"]
