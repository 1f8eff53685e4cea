"""
RFC 6856 LANG against a real popgate (twistd, a real socket) with
python's poplib: the catalogs as installed, an operator's --locale-dir,
the options, and the numbers and bodies a client parses, in each language.
"""

from __future__ import annotations

import poplib

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import write_po

from popgate.cred.schemes import hash_password
from tests.popgate_server import PopgateProcess, run_twistd

pytestmark = pytest.mark.integration

MESSAGES = [b"Subject: one\n\nfirst\n.dot\n", b"Subject: two\n\n" + b"line\n" * 20]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lang")
    htpasswd = tmp / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    for sub in ("new", "cur", "tmp"):
        (tmp / "mail" / "alice" / sub).mkdir(parents=True)
    for i, data in enumerate(MESSAGES):
        (tmp / "mail" / "alice" / "cur" / f"{1700000000 + i}.M{i}P1.test:2,").write_bytes(data)
    # An operator's own catalog, as the developer guide says to make one.
    catalog = Catalog(locale="it", domain="popgate")
    catalog.add("Language changed.", "Lingua cambiata.")
    catalog.add("Logged in.", "Connesso.")
    (tmp / "locale" / "it" / "LC_MESSAGES").mkdir(parents=True)
    with (tmp / "locale" / "it" / "LC_MESSAGES" / "popgate.po").open("wb") as f:
        write_po(f, catalog)
    args = ["--auth", f"htpasswd:{htpasswd}", "--store", f"maildir:{tmp / 'mail'}/%n",
            "--languages", "de,fr,it", "--preferred-language", "fr",
            "--locale-dir", str(tmp / "locale")]
    with PopgateProcess(args, log_path=str(tmp / "popgate.log")) as process:
        yield process


def connect(server) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", server.port, timeout=10)


def test_capa_and_listing(server):
    client = connect(server)
    try:
        assert "LANG" in client.capa()
        response, lines, _ = client._longcmd("LANG")
        assert response == b"+OK Language listing follows"
        assert lines == [b"i-default Default language", b"de Deutsch", "fr Français".encode(),
                         b"it Italiano"]
    finally:
        client.quit()


def test_a_session_in_german_parses_as_one_in_english(server):
    english, german = connect(server), connect(server)
    try:
        assert german._shortcmd("LANG de") == "+OK de Sprache geändert.".encode()
        english.user("alice")
        assert english.pass_("pw") == b"+OK Logged in."
        numbers = english.stat(), english.list(), english.uidl(), english.retr(1), english.top(2, 3)
        english.quit()
        german.user("alice")
        assert german.pass_("pw") == b"+OK Angemeldet."
        assert german.stat() == numbers[0] == (2, sum(len(m) + m.count(b"\n") for m in MESSAGES))
        response, lines, octets = german.list()
        assert response == b"+OK 2 Nachrichten:" and (lines, octets) == numbers[1][1:]
        assert german.uidl() == numbers[2]
        assert german.retr(1) == numbers[3]  # "+OK N octets" and the body, byte for byte
        assert german.top(2, 3) == numbers[4]
        with pytest.raises(poplib.error_proto, match="Es gibt keine Nachricht 9"):
            german.retr(9)
        with pytest.raises(poplib.error_proto, match="Unbekannte Sprache zz"):
            german._shortcmd("LANG zz")
        assert german._shortcmd("LANG *") == "+OK fr Langue changée.".encode()
        assert german.dele(1) == "+OK Marqué pour suppression.".encode()
        assert german.rset() == b"+OK"
        assert german._shortcmd("LANG it") == b"+OK it Lingua cambiata."
        assert german.quit() == b"+OK Logging out."  # not in the operator's catalog: English
    finally:
        german.close()


def test_a_language_without_a_catalog_stops_start_up(tmp_path):
    users = tmp_path / "htpasswd"
    users.write_text("")
    result = run_twistd(["-n", "--pidfile=", "popgate", "--pop3", "tcp:0:interface=127.0.0.1",
                         "--auth", f"htpasswd:{users}", "--store",
                         f"maildir:{tmp_path}/%n", "--languages", "de,xx"])
    assert result.returncode != 0
    assert "popgate: --languages: no catalog for 'xx'" in result.stderr + result.stdout
