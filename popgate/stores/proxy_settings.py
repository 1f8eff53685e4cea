"""
The C{proxy:} and C{imap:} stores' argument string: which upstream POP3
or IMAP server (or, with C{--route}, the one for users without a route),
how TLS to it is checked, the deadlines, and the master user for local
authentication.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from popgate.cred.args import ArgSpec

__all__ = ["ARGS", "IMAP_ARGS", "ProxySettings", "Upstream", "parse_args", "parse_upstream"]

ARGS = ArgSpec(
    "proxy",
    {
        "upstream": "pop3://HOST:PORT (STLS with ?tls=starttls), or pop3s://HOST:PORT "
                    "(TLS from the first octet); ports default to 110 and 995. With "
                    "--route, the upstream of users without a route (default: none: "
                    "they are refused).",
        "ca_file": "PEM file of the CAs that sign the upstream's certificate (default: "
                   "the system's trust store).",
        "server_name": "The name the certificate of upstream= must carry (default: the "
                       "URL's host; a routed upstream's is always its URL's host).",
        "connect_timeout": "Seconds to connect, TLS included (default: 10).",
        "greeting_timeout": "Seconds to wait for the upstream's greeting (default: 10).",
        "command_timeout": "Seconds an upstream reply may make no progress (default: 60).",
        "master_user": "With --auth: log in upstream as USER*MASTER_USER with the master "
                       "password (Dovecot's master users) instead of the user's own password.",
        "master_password_file": "The file holding the master user's password (its first "
                                "line).",
        "master_separator": "What joins the user and the master user (default: *).",
    },
)

#: The C{imap:} store's keys: the same, for an IMAP upstream.
IMAP_ARGS = ArgSpec(
    "imap",
    {
        **ARGS.help,
        "upstream": "imap://HOST:PORT (STARTTLS with ?tls=starttls), or imaps://HOST:PORT "
                    "(TLS from the first octet); ports default to 143 and 993.",
        "master_user": "With --auth: log in upstream as this master user for each user "
                       "(AUTHENTICATE PLAIN, the user as authorization identity).",
        "master_separator": "What joins the user and the master user in LOGIN, for an "
                            "upstream without AUTH=PLAIN (default: *).",
    },
)

#: Each upstream protocol: its two URL schemes and their default ports.
_SCHEMES = {"pop3": ("pop3", "pop3s", 110, 995), "imap": ("imap", "imaps", 143, 993)}


@dataclass(frozen=True)
class Upstream:
    """
    One upstream POP3 (or IMAP) server.

    @ivar tls: C{"none"}, C{"starttls"} or C{"implicit"}.
    @ivar server_name: what its certificate must name.
    """

    host: str
    port: int
    tls: str = "none"
    server_name: str = ""
    ca_file: str | None = None
    protocol: str = "pop3"  # or "imap"

    @property
    def url(self) -> str:
        scheme = self.protocol + ("s" if self.tls == "implicit" else "")
        query = "?tls=starttls" if self.tls == "starttls" else ""
        return f"{scheme}://{self.host}:{self.port}{query}"


@dataclass(frozen=True)
class ProxySettings:
    #: None with --route and no upstream=.
    upstream: Upstream | None
    connect_timeout: float = 10.0
    greeting_timeout: float = 10.0
    command_timeout: float = 60.0
    master_user: str | None = None
    master_password: bytes | None = field(default=None, repr=False)
    master_separator: str = "*"
    #: The CAs of every upstream, routed ones included.
    ca_file: str | None = None


def parse_upstream(url: str, ca_file: str | None = None,
                   server_name: str | None = None, protocol: str = "pop3",
                   what: str = "upstream=") -> Upstream:
    """
    C{pop3://mail.example.org:110?tls=starttls} (or, for C{protocol}
    C{"imap"}, C{imaps://mail.example.org}) -> an L{Upstream}.

    @param what: how messages name the URL (C{route} for a routed one).
    @raise ValueError: with a one-line reason.
    """
    plain, secure, plain_port, secure_port = _SCHEMES[protocol]
    kind = "proxy" if protocol == "pop3" else protocol
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in (plain, secure):
        raise ValueError(f"{kind}: {what} must be a {plain}:// or {secure}:// URL, "
                         f"got {url[:60]!r}")
    if not parts.hostname:
        raise ValueError(f"{kind}: {what} {url[:60]!r} names no host")
    try:
        port = parts.port or (secure_port if scheme == secure else plain_port)
    except ValueError:
        raise ValueError(f"{kind}: {what} {url[:60]!r} has a bad port") from None
    if parts.path not in ("", "/") or parts.username or parts.password:
        raise ValueError(f"{kind}: {what} takes scheme://host:port[?tls=starttls] only")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"tls"}
    if unknown:
        raise ValueError(f"{kind}: {what} unknown parameter {sorted(unknown)[0]!r}")
    tls = "implicit" if scheme == secure else "none"
    wanted = query.get("tls", [""])[-1].lower()
    if wanted:
        if scheme == secure or wanted != "starttls":
            raise ValueError(f"{kind}: {what} ?tls=starttls is the only tls= value, "
                             f"and only for {plain}://")
        tls = "starttls"
    return Upstream(parts.hostname, port, tls, server_name or parts.hostname, ca_file, protocol)


def parse_args(argstring: str, protocol: str = "pop3", routed: bool = False) -> ProxySettings:
    """
    @param protocol: C{"pop3"} (the C{proxy:} store) or C{"imap"}.
    @param routed: a route source chooses the upstreams (C{--route}), so
        C{upstream=} is optional.
    @raise ValueError: with a one-line reason.
    """
    spec = IMAP_ARGS if protocol == "imap" else ARGS
    args = spec.parse(argstring)
    ca_file = args.text("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise spec.error(f"ca_file= {ca_file}: no such file")
    given = args.text("upstream")
    if given is None and not routed:
        raise spec.error("upstream= is required (or give --route)")
    upstream = None if given is None else parse_upstream(given, ca_file,
                                                          args.text("server_name"), protocol)
    timeouts = {}
    for key, default in (("connect_timeout", 10.0), ("greeting_timeout", 10.0),
                         ("command_timeout", 60.0)):
        value = args.number(key, float, default, unit="seconds")
        if not value > 0:
            raise spec.error(f"{key}= must be more than 0")
        timeouts[key] = value
    master = args.text("master_user")
    secret_file = args.text("master_password_file")
    if bool(master) != bool(secret_file):
        raise spec.error("master_user= and master_password_file= go together")
    secret = None
    if secret_file is not None:
        try:
            lines = Path(secret_file).read_bytes().splitlines()
        except OSError as e:
            raise spec.error(f"master_password_file= {secret_file}: {e.strerror}") from None
        secret = lines[0] if lines else b""
        if not secret:
            raise spec.error(f"master_password_file= {secret_file} is empty")
    separator = args.text("master_separator") or "*"
    return ProxySettings(upstream, master_user=master, master_password=secret,
                         master_separator=separator, ca_file=ca_file, **timeouts)
