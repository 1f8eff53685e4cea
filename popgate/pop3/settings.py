"""
The knobs of a POP3 listener, in one frozen value built from the options.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from popgate.i18n.offer import LanguageOffer


@dataclass(frozen=True)
class SessionSettings:
    """
    @ivar implementation: the CAPA IMPLEMENTATION text; empty hides it.
    @ivar greeting: the text of the first C{+OK} line.
    @ivar idle_timeout: seconds of silence before the session is closed
        without UPDATE (RFC 1939 asks for at least 600).
    @ivar auth_failure_delay: seconds to wait before answering a failed
        login, slowing down password guessing.
    @ivar max_auth_failures: failed logins after which the connection closes.
    @ivar max_bad_commands: after login, the connection closes at the
        unknown or malformed command that follows this many in a row
        (Dovecot's pop3: 20).
    @ivar max_login_bad_commands: before login, unknown commands in a row
        that close the connection (Dovecot's pop3-login: 3).  A refused
        USER, PASS, APOP or AUTH does not count.
    @ivar max_line_length: longest command line accepted after login, CRLF
        included (Dovecot: 2048; RFC 2449 asks clients for at most 255).  A
        longer line closes the connection.
    @ivar max_login_line_length: the same before login (Dovecot's
        pop3-login: 1024 octets of arguments).
    @ivar hostname: used in the APOP and CRAM-MD5 challenges.
    @ivar allow_plaintext_auth: accept USER/PASS and the plaintext SASL
        mechanisms (PLAIN, LOGIN) on connections that are neither TLS nor
        from C{trusted_networks}.  Unsafe: the password crosses the network
        in clear.
    @ivar trusted_networks: client networks whose connections count as
        secure without TLS (Dovecot treats loopback so): plaintext
        passwords are accepted from there.  UNIX sockets always count.
    @ivar max_sasl_line_length: longest line accepted in a SASL exchange
        (and for C{AUTH} with an initial response), CRLF included.
    @ivar login_timeout: seconds from connect to a successful login, after
        which the connection is closed whatever the client does meanwhile
        (Dovecot's login processes: 180); 0 turns it off.
    @ivar enable_last: offer the obsolete LAST command (RFC 1460), as
        Dovecot's C{pop3_enable_last}, for old clients that still send it.
    @ivar languages: the languages of RFC 6856 C{LANG}
        (L{popgate.i18n.offer.language_offer}); None, or i-default alone:
        no C{LANG}, every reply in i-default.
    @ivar login_delay: the server-wide LOGIN-DELAY in seconds (0: none).
    @ivar expire: the server-wide EXPIRE in days (L{popgate.policy.NEVER}
        for never); C{None}: not configured (not advertised, never).
    """

    implementation: str = "popgate"
    greeting: str = "popgate ready."
    idle_timeout: float = 600.0
    auth_failure_delay: float = 1.0
    max_auth_failures: int = 3
    max_bad_commands: int = 20
    max_login_bad_commands: int = 3
    max_line_length: int = 2048
    max_login_line_length: int = 1031
    hostname: str = "localhost"
    allow_plaintext_auth: bool = False
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_sasl_line_length: int = 8192
    login_timeout: float = 180.0
    enable_last: bool = False
    languages: LanguageOffer | None = None
    login_delay: int = 0
    expire: float | None = None

    def __post_init__(self) -> None:
        # A typo in a network would otherwise surface at the first login.
        for network in self.trusted_networks:
            ipaddress.ip_network(network, strict=False)
