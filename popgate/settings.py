"""
Every setting of a popgate server, declared once, as a field of L{Config}.

Each field carries its L{Setting}: help text, kind, the docs section it
belongs to.  From these come the twistd options (L{popgate.tap}), the keys
and type checks of the TOML file (L{popgate.config}), the values sessions
receive (L{popgate.build.session_settings}) and the configuration
reference, which a test keeps equal to the committed file:

    python -m popgate.settings --markdown > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from twisted.python import usage

from popgate.addresses import parse_networks
from popgate.policy import NEVER, parse_expire
from popgate.pop3.settings import SessionSettings

Kind = Literal["text", "int", "float", "flag", "list"]
_KEY = "popgate.setting"

#: The docs sections, in order: (title, what the section is about).
SECTIONS = {
    "Listeners": "Where popgate listens. ENDPOINT is a [Twisted endpoint string]"
                 "(https://docs.twisted.org/en/stable/core/howto/endpoints.html); "
                 "a port that cannot be bound stops start-up.",
    "Stores": "Who the users are and where their mail lives: see "
              "[User stores](user-stores.md) and "
              "[Mail stores](mail-stores.md).",
    "TLS": "See [TLS and authentication](tls.md).",
    "Sessions": "How a POP3 session behaves.",
    "Limits": "See [Connection limits](operations.md#connection-limits) and "
              "[Password guessing](operations.md#password-guessing).",
    "Logging": "What each line means: the event catalogue in `popgate/events.py` "
               "(`python -m popgate.events`). twistd's `--logfile` and `--syslog` say where "
               "the log goes; these options say what and how.",
    "Processes": "See [Using every core](operations.md#using-every-core).",
    "Administration": "`popgate who` and `popgate kick` talk to a running server over its "
                      "admin socket; see [who and kick](operations.md#who-and-kick).",
    "Configuration file": "",
}


@dataclass(frozen=True)
class Setting:
    """
    How one setting is given, checked and documented.

    @ivar kind: C{text}, C{int} and C{float} take a value; C{flag} takes
        none (TOML: a boolean); C{list} is repeatable on the command line
        (TOML: a list of strings, or one string) unless C{comma_list}.
    @ivar minimum: the smallest number accepted.
    @ivar toml: whether the TOML file may give it.
    @ivar default_text: how the docs say the default, when the value alone
        would not.
    @ivar comma_list: a list given once on the command line, comma-separated.
    @ivar items: checks and normalises a list's items.
    @ivar internal: left out of the docs.
    @ivar choices: the values a C{text} setting accepts, when limited.
    @ivar live: a SIGHUP reload applies a new value to the running server
        (L{popgate.reload}); a change to any other setting is logged as
        needing a restart.
    @ivar parse: checks and normalises a C{text} value (C{ValueError}:
        refused); the TOML file may give such a value as a whole number.
    """

    help: str
    section: str
    kind: Kind = "text"
    metavar: str = ""
    minimum: int = 0
    toml: bool = True
    short: str | None = None
    default_text: str | None = None
    comma_list: bool = False
    items: Callable[[list[str]], tuple[str, ...]] | None = None
    internal: bool = False
    choices: tuple[str, ...] = ()
    live: bool = False
    parse: Callable[[str], Any] | None = None
    # Filled in from the field that declares it.
    key: str = ""
    default: Any = None

    @property
    def option(self) -> str:
        """The command-line name, without the dashes."""
        return self.key.replace("_", "-")

    @property
    def repeatable(self) -> bool:
        return self.kind == "list" and not self.comma_list

    def describe_default(self) -> str | None:
        """The default as the docs say it, or None when there is none."""
        if self.default_text is not None:
            return self.default_text
        if self.kind == "flag" or self.default in (None, ()):
            return None
        if isinstance(self.default, str):
            return f'"{self.default}"'
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def help_line(self) -> str:
        """The text of C{--help}: the help, then the default."""
        default = self.describe_default()
        return f"{self.help} (default: {default})" if default else self.help

    def convert(self, value: Any) -> Any:
        """
        The typed value of a command-line text (a list of them when
        repeatable) or of a value from the TOML file (checked for its type
        there).

        @raise usage.UsageError: naming the option.
        """
        if self.kind in ("int", "float"):
            number = int if self.kind == "int" else float
            try:
                converted = number(value)
            except (TypeError, ValueError):
                raise usage.UsageError(f"--{self.option} must be a number, not {value!r}") from None
            if converted < self.minimum:
                raise usage.UsageError(f"--{self.option} must be at least {self.minimum}")
            return converted
        if self.kind == "flag":
            return bool(value)
        if self.kind == "list":
            values = [value] if isinstance(value, str) else list(value)
            if self.items is None:
                return tuple(values)
            try:
                return self.items(values)
            except ValueError as e:
                raise usage.UsageError(f"--{self.option}: {e}") from None
        if self.choices and value not in self.choices:
            raise usage.UsageError(
                f"--{self.option} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.parse is not None:
            try:
                return self.parse(str(value))
            except ValueError as e:
                raise usage.UsageError(f"--{self.option}: {e}") from None
        return value


def _networks(specs: list[str]) -> tuple[str, ...]:
    """CIDR strings (or comma-separated lists of them), normalised."""
    return tuple(str(network) for network in parse_networks(specs))


def _language_tags(specs: list[str]) -> tuple[str, ...]:
    """Language tags (or comma-separated lists of them); that each has a
    catalog is checked when the server is built
    (L{popgate.i18n.offer.language_offer})."""
    tags = tuple(t.strip() for spec in specs for t in spec.split(",") if t.strip())
    for tag in tags:
        if not tag.replace("-", "").replace("_", "").isalnum() or not tag.isascii():
            raise ValueError(f"not a language tag: {tag!r}")
    return tags


def _expire(text: str) -> str:
    """C{never} or whole days, as written in the configuration."""
    days = parse_expire(text)
    return "never" if days == NEVER else str(int(days))


def _declare(default: Any, help: str, section: str, **how: Any) -> Any:
    return field(default=default, metadata={_KEY: Setting(help, section, **how)})


@dataclass(frozen=True)
class RunAs:
    """The user twistd will switch to (C{--uid}/C{--gid})."""

    uid: int
    gid: int
    name: str


_SESSION = SessionSettings()


@dataclass(frozen=True)
class Config:
    """
    A parsed, typed popgate configuration: what
    L{popgate.build.build_server} turns into a running server.  Every
    field but the last two is a setting.

    @ivar argv: the command line, which the C{--workers} processes get too.
    @ivar run_as: the user twistd switches to, when start-up must check
        the files as that user (L{popgate.startup_checks}).
    """

    pop3: tuple[str, ...] = _declare(
        (), "A plaintext POP3 listener (repeatable); STLS is offered when a certificate is "
        "configured.", "Listeners", kind="list", metavar="ENDPOINT",
        default_text="tcp:110, unless --pop3s is given")
    pop3s: tuple[str, ...] = _declare(
        (), "An implicit-TLS (POP3S) listener, e.g. tcp:995 (repeatable; needs --tls-cert and "
        "--tls-key).", "Listeners", kind="list", metavar="ENDPOINT")
    lmtp: tuple[str, ...] = _declare(
        (), "An LMTP delivery listener for the SMTP server, e.g. tcp:2424:interface=127.0.0.1 "
        "(repeatable).", "Listeners", kind="list", metavar="ENDPOINT")
    proxy_trusted: tuple[str, ...] = _declare(
        ("127.0.0.0/8", "::1/128"), "The proxies (addresses or CIDR networks, IPv4 or IPv6) "
        "that may connect to haproxy: listeners and say, in a PROXY header, whose connection "
        "it is; a connection from anywhere else is closed before anything is read. UNIX "
        "sockets always may. In TOML a list, proxy_trusted = [\"10.1.0.5\", \"10.1.0.6\"].",
        "Listeners", kind="list", comma_list=True, items=_networks, metavar="CIDR[,CIDR...]",
        default_text="127.0.0.0/8,::1 (loopback: HAProxy on the same host)")
    metrics: str | None = _declare(
        None, "Serve Prometheus metrics as /metrics on this endpoint, e.g. "
        "tcp:9110:interface=127.0.0.1 (not for the internet: it has no authentication). With "
        "--workers N each process serves its own: worker I (1 to N-1) on the port plus I "
        "(unix: the path plus .I); scrape them all and sum() them.", "Listeners",
        metavar="ENDPOINT", default_text="none (off)")
    auth: tuple[str, ...] = _declare(
        (), "A user store, TYPE:ARGS in twisted.cred.strcred syntax (repeatable: tried in "
        "order, and an outage in one is never reported as a wrong password); --help-auth "
        "lists the types, --help-auth-type TYPE explains one.", "Stores", kind="list",
        metavar="TYPE:ARGS", live=True)
    store: str | None = _declare(
        None, "The mail store, TYPE:ARGS (e.g. maildir:/var/mail/%d/%n); --help-stores lists "
        "the types.", "Stores", metavar="TYPE:ARGS")
    route: str | None = _declare(
        None, "Choose each user's upstream (a proxy: or imap: store) from a directory, TYPE:ARGS: "
        "ldap:url=...,base=...,attribute=ATTR (the user's entry holds the URL) or "
        "sql:dsn=...,query=SELECT upstream FROM ... WHERE userid = %(user)s; the store's "
        "upstream= serves users without a route, if given. See docs/gateway.md#routing.",
        "Stores", metavar="TYPE:ARGS", default_text="none (upstream= for everyone)")
    oauth: str | None = _declare(
        None, "Accept OAuth 2.0 bearer tokens (SASL OAUTHBEARER and XOAUTH2, over TLS only), "
        "checked by this token validator, TYPE:ARGS: jwt:jwks_file=FILE,issuer=...,audience=... "
        "or introspect:url=https://...,client_id=...,client_secret_file=...; --help-oauth "
        "lists the types.", "Stores", metavar="TYPE:ARGS", default_text="none (off)")
    auth_cache_ttl: float = _declare(
        60.0, "Seconds a successful login is cached (0 turns the cache off).", "Stores",
        kind="float", metavar="SECONDS", live=True)
    auth_cache_negative_ttl: float = _declare(
        10.0, "Seconds a failed login is cached (0 turns it off).", "Stores", kind="float",
        metavar="SECONDS", live=True)
    tls_cert: str | None = _declare(
        None, "PEM certificate, followed by its chain (certbot's fullchain.pem): enables STLS "
        "and --pop3s. Re-read on SIGHUP.", "TLS", metavar="FILE", live=True)
    tls_key: str | None = _declare(
        None, "PEM private key of --tls-cert, unencrypted (certbot's privkey.pem).", "TLS",
        metavar="FILE", live=True)
    allow_plaintext_auth: bool = _declare(
        False, "UNSAFE: accept passwords in clear (USER/PASS, AUTH PLAIN/LOGIN) without TLS "
        "from non-loopback clients.", "TLS", kind="flag", live=True)
    implementation: str = _declare(
        _SESSION.implementation, "The CAPA IMPLEMENTATION text (empty hides it).", "Sessions",
        metavar="TEXT", live=True)
    greeting: str = _declare(
        _SESSION.greeting, "The text of the +OK greeting.", "Sessions", metavar="TEXT", live=True)
    hostname: str | None = _declare(
        None, "Host name in the APOP and CRAM-MD5 challenges and the LMTP greeting.",
        "Sessions", metavar="NAME", default_text="the machine's FQDN", live=True)
    idle_timeout: float = _declare(
        _SESSION.idle_timeout, "Seconds of silence after which a session is closed, without "
        "applying deletions (RFC 1939: at least 600).", "Sessions", kind="float",
        metavar="SECONDS", minimum=1, live=True)
    login_timeout: float = _declare(
        _SESSION.login_timeout, "Seconds from connect to login after which the connection is "
        "closed, whatever it sends meanwhile (0: off).", "Sessions", kind="float",
        metavar="SECONDS", live=True)
    auth_failure_delay: float = _declare(
        _SESSION.auth_failure_delay, "Seconds before answering a failed login.", "Sessions",
        kind="float", metavar="SECONDS", live=True)
    max_auth_failures: int = _declare(
        _SESSION.max_auth_failures, "Failed logins after which the connection is closed.",
        "Sessions", kind="int", metavar="N", minimum=1, live=True)
    enable_last: bool = _declare(
        _SESSION.enable_last, "Offer the obsolete LAST command (RFC 1460) for old clients "
        "that still send it: the highest message number RETR asked for, or read before the "
        "session (the Maildir S flag); RSET sets it to 0.", "Sessions", kind="flag", live=True)
    max_bad_commands: int = _declare(
        _SESSION.max_bad_commands, "After login, bad commands in a row after which the "
        "connection is closed (before login: 3, as Dovecot).", "Sessions", kind="int",
        metavar="N", minimum=1, live=True)
    languages: tuple[str, ...] = _declare(
        (), "The languages of the RFC 6856 LANG command, as language tags, each with a "
        "catalog (popgate's: en, de, fr; more with --locale-dir). i-default, the English "
        "every session starts in, is always offered; i-default alone turns LANG off. In TOML "
        "a list, languages = [\"de\", \"fr\"].", "Sessions", kind="list", comma_list=True,
        items=_language_tags, metavar="TAG[,TAG...]",
        default_text="every language with a catalog")
    preferred_language: str = _declare(
        "i-default", "The language LANG * selects, one of --languages.", "Sessions",
        metavar="TAG")
    locale_dir: str | None = _declare(
        None, "A directory of more catalogs, DIR/TAG/LC_MESSAGES/popgate.po, read at start-up; "
        "one there wins over popgate's own of the same tag.", "Sessions", metavar="DIR",
        default_text="none")
    login_delay: int = _declare(
        _SESSION.login_delay, "Least seconds between two logins of a user (RFC 2449 "
        "LOGIN-DELAY): CAPA says it, and a login sooner after the user's previous one gets "
        "-ERR [LOGIN-DELAY] once the password is checked. A user store may set it per user "
        "(see User stores). 0: no delay, not advertised.", "Sessions", kind="int",
        metavar="SECONDS", live=True)
    expire: str | None = _declare(
        None, "Days a message is kept on the server once a client retrieved it (RFC 2449 "
        "EXPIRE): CAPA says it, and QUIT removes messages retrieved that long ago; 0 removes "
        "retrieved messages at the end of the session, never keeps them (and is advertised). "
        "A user store may set it per user. In TOML a number or \"never\".", "Sessions",
        metavar="DAYS|never", parse=_expire,
        default_text="none: not advertised, nothing expires", live=True)
    max_connections: int = _declare(
        0, "Connections at once, POP3, POP3S and LMTP together, per process (0: derived from "
        "the file descriptor limit).", "Limits", kind="int", metavar="N", live=True)
    max_connections_per_ip: int = _declare(
        20, "POP3/POP3S connections at once from one address, an IPv6 address counting as "
        "its /64 (0: no limit).", "Limits", kind="int", metavar="N", live=True)
    exempt_networks: tuple[str, ...] = _declare(
        (), "Trusted clients (a webmail, a proxy) with no per-address connection limit and no "
        "login penalty; in TOML a list, exempt_networks = [\"10.0.0.0/8\"].", "Limits",
        kind="list", comma_list=True, items=_networks, metavar="CIDR[,CIDR...]", live=True)
    log_format: str = _declare(
        "text", "How log lines look: text (twistd's lines: time, [namespace#level], the "
        "event's text) or json (one object per line, stable keys).", "Logging",
        metavar="text|json", choices=("text", "json"))
    log_level: str = _declare(
        "info", "The least severe events written: debug (also connections and refusals), "
        "info (logins, sessions, deliveries), warn or error. fail2ban needs info.", "Logging",
        metavar="debug|info|warn|error", choices=("debug", "info", "warn", "error"), live=True)
    workers: int = _declare(
        1, "Processes sharing the listening ports with SO_REUSEPORT, to use every core "
        "(tcp: and tcp6: listeners, also behind haproxy:).", "Processes", kind="int",
        metavar="N", minimum=1)
    admin_socket: str | None = _declare(
        None, "A UNIX socket for popgate who and popgate kick (e.g. /run/popgate/admin.sock), "
        "mode 0600: made before twistd drops privileges, so only root may use it. With "
        "--workers, worker N listens on PATH.N and popgate who asks every one.", "Administration",
        metavar="PATH", default_text="none (off)")
    worker: bool = _declare(
        False, "Internal: run as one of the --workers processes.", "Processes", kind="flag",
        toml=False, internal=True)
    worker_number: int = _declare(
        0, "Internal: which of the --workers processes this is (1 to N-1; 0: the first).",
        "Processes", kind="int", metavar="N", toml=False, internal=True)
    config: str | None = _declare(
        None, "A TOML file with these settings, keys spelled with underscores, under "
        "[popgate]; the command line wins, and a list given on the command line replaces "
        "the file's list.", "Configuration file", metavar="FILE", short="c", toml=False)

    argv: tuple[str, ...] = ()
    run_as: RunAs | None = None


#: Every setting, in declaration order.
SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(f.metadata[_KEY], key=f.name, default=f.default)
    for f in dataclasses.fields(Config) if _KEY in f.metadata)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
#: Listening when no listener is configured.
DEFAULT_POP3 = ("tcp:110",)


def _given(setting: Setting, value: Any) -> bool:
    """Whether a command-line value was given: unset options are None,
    flags false, repeatable options empty."""
    if setting.kind == "flag" or setting.repeatable:
        return bool(value)
    return value is not None


def resolve(command_line: Mapping[str, Any], file_values: Mapping[str, Any] = {},
            **extra: Any) -> Config:
    """
    The L{Config} of command-line values (raw, by key) over the TOML
    file's (checked by L{popgate.config.load}): the command line wins, a
    list given there replaces the file's, unset settings keep their
    defaults.  C{extra} sets L{Config.argv} and L{Config.run_as}.

    @raise usage.UsageError: for a value that does not convert.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = command_line.get(setting.key)
        if _given(setting, raw):
            values[setting.key] = setting.convert(raw)
        elif setting.key in file_values:
            values[setting.key] = setting.convert(file_values[setting.key])
    if not values.get("pop3") and not values.get("pop3s"):
        values["pop3"] = DEFAULT_POP3
    return Config(**values, **extra)


def _sections() -> Iterator[tuple[str, str, list[Setting]]]:
    for title, about in SECTIONS.items():
        yield title, about, [s for s in SETTINGS if s.section == title and not s.internal]


def _cell(text: str) -> str:
    """A table cell: a C{|}, even inside a code span, escaped (GFM's rule)."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The configuration reference, C{docs/configuration.md}."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from popgate/settings.py; do not edit. Regenerate with",
        "     python -m popgate.settings --markdown > docs/configuration.md -->",
        "",
        "Every setting is a `twistd popgate` option and a key of the TOML file given",
        "with `--config` (the option's name with underscores, in a `[popgate]` table",
        "or at the top level). The command line wins over the file; a list option",
        "given on the command line replaces the file's whole list. Unknown keys and",
        "tables are an error, and so is a key outside the `[popgate]` table when",
        "there is one. `etc/popgate.toml.example` is a complete, commented example.",
        "",
        "The *reload* column says what `systemctl reload popgate` (SIGHUP) does with a",
        "new value: *live*, the running server takes it (new sessions get it, open",
        "ones keep theirs); *restart*, it is logged as needing a restart and not",
        "applied. Every reload also re-reads the user files and the TLS certificate;",
        "a new configuration that does not load is not applied at all, and one log",
        "line says why ([Reload](operations.md#reload-sighup)).",
        "",
    ]
    for title, about, settings in _sections():
        lines += [f"## {title}", ""]
        if about:
            lines += [about, ""]
        lines += ["| option | TOML | default | reload | meaning |", "|---|---|---|---|---|"]
        for s in settings:
            option = f"`--{s.option}`" + (f" `{s.metavar}`" if s.metavar else "")
            if s.short:
                option = f"`-{s.short}`, " + option
            if not s.toml:
                toml = "—"
            elif s.kind == "list":
                toml = f'`{s.key} = ["..."]`'
            elif s.kind == "flag":
                toml = f"`{s.key} = true`"
            else:
                toml = f"`{s.key}`"
            default = s.describe_default() or "—"
            reload = "live" if s.live else "restart"
            cells = (option, toml, default, reload, s.help)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        sys.stderr.write("usage: python -m popgate.settings --markdown\n")
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
