"""
The C{ldap:} argument string, parsed and checked at start-up: a typo is a
one-line error naming the key, never a failed login later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import ssl

from popgate.cred.args import Args, ArgSpec
from popgate.cred.ldap_filter import DEFAULT_FILTER, expand_filter, parse_filter

__all__ = ["DEFAULT_TIMEOUT", "LDAPSettings", "load_trust_root", "parse_args", "settings_from"]

DEFAULT_TIMEOUT = 5.0

ARGS = ArgSpec(
    "ldap",
    {
        "url": "ldap://HOST[:PORT]/ or ldaps://HOST[:PORT]/ (implicit TLS, port 636).",
        "base": "The DN searched under, e.g. ou=people,dc=example,dc=org.",
        "filter": "The search filter; %u is the login name, %n its local part, %d its "
                  f"domain, each escaped (default: {DEFAULT_FILTER}).",
        "binddn": "The service account the searches bind as (default: anonymous searches).",
        "bindpw": "Its password; it then shows in ps: prefer bindpw_file.",
        "bindpw_file": "A file holding the service account's password on one line "
                       "(chmod 600).",
        "starttls": "yes: StartTLS on ldap:// before anything else is sent (default: no).",
        "cafile": "PEM CA certificates to verify the directory with (default: the "
                  "system's).",
        "timeout": f"Seconds for each LDAP operation (default: {DEFAULT_TIMEOUT:g}).",
        "connect_timeout": "Seconds for connecting (default: timeout).",
        "mail_attribute": "The attribute holding the user's mail location, e.g. "
                          "mailMessageStore (default: the --store template).",
        "login_delay_attribute": "The attribute holding the user's own LOGIN-DELAY in "
                                 "seconds (default: --login-delay for everyone).",
        "expire_attribute": "The attribute holding the user's own EXPIRE, days or never "
                            "(default: --expire for everyone).",
        "scram_attribute": "The attribute holding the user's SCRAM keys, e.g. userPassword "
                           "with a {SCRAM-SHA-256}... value beside the one binds use: "
                           "offers AUTH SCRAM-SHA-256 and SCRAM-SHA-1, and the service "
                           "account must be allowed to read it (default: no SCRAM).",
        "user_attribute": "The attribute whose value names the user, and so the mailbox; "
                          "mail is a good choice (default: the attribute the filter "
                          "matched %u or %n against, as the directory spells it).",
    },
    # DNs and filters have commas and '='s of their own; so may a password.
    free_text=("base", "filter", "binddn", "bindpw"),
    required=("url", "base"),
)


@dataclass(frozen=True)
class LDAPSettings:
    """Everything an L{popgate.cred.ldap.LDAPChecker} needs, parsed and checked."""

    host: str
    port: int
    base: str
    filter: str = DEFAULT_FILTER
    ldaps: bool = False
    starttls: bool = False
    binddn: str | None = None
    bindpw: str = ""
    cafile: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_TIMEOUT
    mail_attribute: str | None = None
    user_attribute: str | None = None
    login_delay_attribute: str | None = None
    expire_attribute: str | None = None
    scram_attribute: str | None = None

    def __repr__(self) -> str:
        # Keep the service password out of logs and tracebacks.
        return (f"LDAPSettings(host={self.host!r}, port={self.port}, base={self.base!r}, "
                f"binddn={self.binddn!r})")


def parse_args(argstring: str) -> LDAPSettings:
    """
    Parse C{url=...,base=...[,filter=...][,binddn=...,bindpw=...|bindpw_file=...]
    [,starttls=yes][,cafile=...][,timeout=5][,connect_timeout=5]
    [,mail_attribute=...][,user_attribute=...][,login_delay_attribute=...]
    [,expire_attribute=...][,scram_attribute=...]} (see L{popgate.cred.args}:
    a password containing C{,KEY=} goes in C{bindpw_file}).

    @raise ValueError: with a one-line reason.
    """
    return settings_from(ARGS.parse(argstring))


def settings_from(args: Args) -> LDAPSettings:
    """
    The settings of parsed arguments: L{ARGS}', or those of another
    L{ArgSpec} holding the connection keys (a route source's,
    L{popgate.routes.ldap}); keys it lacks take their defaults.

    @raise ValueError: with a one-line reason.
    """
    ldaps, host, port = _parse_url(args["url"])
    starttls = args.yes_no("starttls")
    if starttls and ldaps:
        raise ARGS.error("starttls=yes makes no sense with ldaps://")
    if "bindpw" in args and "bindpw_file" in args:
        raise ARGS.error("give bindpw= or bindpw_file=, not both")
    binddn = args.text("binddn")
    bindpw = _read_secret(args["bindpw_file"]) if "bindpw_file" in args else args.get("bindpw", "")
    if binddn and not bindpw:
        # A DN with an empty password is an unauthenticated bind: it
        # "succeeds" without proving anything.
        raise ARGS.error("binddn= needs bindpw= or bindpw_file=")
    if bindpw and not binddn:
        raise ARGS.error("bindpw= given without binddn=")
    template = args.text("filter") or DEFAULT_FILTER
    try:
        parse_filter(expand_filter(template, "user@example.org"))
    except ValueError as e:
        raise ARGS.error(str(e)) from None
    timeout = _seconds(args.number("timeout", float, DEFAULT_TIMEOUT, unit="seconds"), "timeout")
    connect_timeout = _seconds(args.number("connect_timeout", float, timeout, unit="seconds"),
                               "connect_timeout")
    cafile = args.text("cafile")
    if cafile is not None:
        load_trust_root(cafile)
    return LDAPSettings(
        host=host,
        port=port,
        base=args["base"],
        filter=template,
        ldaps=ldaps,
        starttls=starttls,
        binddn=binddn,
        bindpw=bindpw,
        cafile=cafile,
        timeout=timeout,
        connect_timeout=connect_timeout,
        mail_attribute=args.text("mail_attribute"),
        user_attribute=args.text("user_attribute"),
        login_delay_attribute=args.text("login_delay_attribute"),
        expire_attribute=args.text("expire_attribute"),
        scram_attribute=args.text("scram_attribute"),
    )


def _seconds(value: float, key: str) -> float:
    if not 0 < value < 3600:
        raise ARGS.error(f"{key}= must be between 0 and 3600 seconds")
    return value


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as e:
        raise ARGS.error(f"cannot read bindpw_file {path!r}: {e.strerror}") from None
    if not secret:
        raise ARGS.error(f"bindpw_file {path!r} is empty")
    return secret


def _parse_url(url: str) -> tuple[bool, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ARGS.error(f"bad url {url!r}") from None
    if parts.scheme not in ("ldap", "ldaps"):
        raise ARGS.error(f"url must start with ldap:// or ldaps://, got {url!r}")
    if not parts.hostname:
        raise ARGS.error(f"url {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ARGS.error(f"url {url!r} must be scheme://host[:port]/ only (give base= separately)")
    ldaps = parts.scheme == "ldaps"
    return ldaps, parts.hostname, port or (636 if ldaps else 389)


def load_trust_root(cafile: str) -> Any:
    """
    The certificates in C{cafile} as a trust root.

    @raise ValueError: the file cannot be read or holds no certificate.
    """
    try:
        with open(cafile, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ARGS.error(f"cannot read cafile {cafile!r}: {e.strerror}") from None
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise ARGS.error(f"cafile {cafile!r} holds a certificate that cannot be read") from None
    if not certificates:
        raise ARGS.error(f"cafile {cafile!r} holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)
