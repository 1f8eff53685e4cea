"""
The human text of POP3 replies in the client's language (RFC 6856 LANG):
the catalogs (L{popgate.i18n.catalogs}), a language's rendering of a
message (L{popgate.i18n.text}) and the languages a server offers
(L{popgate.i18n.offer}).  The session's side, the C{LANG} command and
the one place replies get their text, is L{popgate.pop3.language}.
"""
