"""
C{twistd popgate}: command-line options and the service they build.
"""

from __future__ import annotations

from typing import Any

from twisted.cred import strcred
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.python import usage

from popgate import config


def _number(kind: type, name: str, minimum: float = 0) -> Any:
    def convert(text: Any) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"--{name} must be a number, not {text!r}")
        if value < minimum:
            raise ValueError(f"--{name} must be at least {minimum}")
        return value

    return convert


def _networks(value: Any) -> list[str]:
    """C{CIDR[,CIDR...]} (or a TOML list of them) as a list of networks."""
    from popgate.limits import parse_networks

    try:
        return [str(n) for n in parse_networks([value] if isinstance(value, str) else value)]
    except ValueError as e:
        raise ValueError(f"--exempt-networks: {e}")


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    Every option has a twin in the TOML file given with C{--config};
    the command line wins.
    """

    synopsis = "[options]"
    longdesc = (
        "popgate serves mail over POP3 (RFC 1939, STLS, SASL) from Maildir, "
        "mbox or SQL stores, checking users against htpasswd files, LDAP or "
        "SQL. ENDPOINT is a Twisted server endpoint string such as "
        "tcp:1110:interface=127.0.0.1."
    )
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file."],
        ["store", None, None, "Mail store, TYPE:ARGS (e.g. maildir:/var/mail/%d/%n); "
                              "--help-stores lists the types."],
        ["implementation", None, None, "CAPA IMPLEMENTATION text (empty to hide)."],
        ["greeting", None, None, "Text of the greeting line."],
        ["hostname", None, None, "Host name used in the APOP and CRAM-MD5 challenges."],
        ["tls-cert", None, None, "PEM certificate, followed by its chain (certbot's "
                                 "fullchain.pem): enables STLS and --pop3s. Re-read on SIGHUP."],
        ["tls-key", None, None, "PEM private key of --tls-cert (certbot's privkey.pem)."],
        ["idle-timeout", None, None, "Seconds before an idle session is closed "
                                     "(default 600, the RFC 1939 minimum).",
         _number(float, "idle-timeout", 1)],
        ["login-timeout", None, None, "Seconds from connect to login after which the "
                                      "connection is closed, activity or not (default 180; "
                                      "0: off).", _number(float, "login-timeout")],
        ["auth-failure-delay", None, None, "Seconds before answering a failed login (default 1).",
         _number(float, "auth-failure-delay")],
        ["max-auth-failures", None, None, "Failed logins before disconnecting (default 3).",
         _number(int, "max-auth-failures", 1)],
        ["max-bad-commands", None, None, "Bad commands in a row after login before "
                                         "disconnecting (default 20).",
         _number(int, "max-bad-commands", 1)],
        ["auth-cache-ttl", None, None, "Seconds a successful login is cached (default 60; 0 "
                                       "turns the cache off).", _number(float, "auth-cache-ttl")],
        ["auth-cache-negative-ttl", None, None, "Seconds a failed login is cached (default 10; "
                                                "0 turns it off).",
         _number(float, "auth-cache-negative-ttl")],
        ["workers", None, None, "Processes sharing the listening ports with SO_REUSEPORT, to "
                                "use every core (default 1; tcp: endpoints only).",
         _number(int, "workers", 1)],
        ["max-connections", None, None, "Connections at once, all listeners together (default "
                                        "0: derived from the file descriptor limit).",
         _number(int, "max-connections")],
        ["max-connections-per-ip", None, None, "POP3/POP3S connections at once from one "
                                               "address, IPv6 per /64 (default 20; 0: none).",
         _number(int, "max-connections-per-ip")],
        ["exempt-networks", None, None, "CIDR[,CIDR...]: trusted clients (a webmail, a proxy) "
                                        "with no per-address connection limit and no login "
                                        "penalty (default none).", _networks],
    ]

    optFlags: list[list[Any]] = [
        ["allow-plaintext-auth", None, "UNSAFE: accept passwords in clear (USER/PASS, AUTH "
                                       "PLAIN/LOGIN) without TLS from non-loopback clients."],
        ["worker", None, "Internal: run as one of the --workers processes."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["pop3"] = []
        self["pop3s"] = []
        self["lmtp"] = []
        self._auth_given = False
        self.raw_args: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        # Kept so --workers can start the other processes with the same
        # command line.
        self.raw_args = list(options) if options is not None else []
        super().parseOptions(options)

    def opt_lmtp(self, endpoint: str) -> None:
        """An LMTP delivery listener for the SMTP server, as a Twisted
        endpoint string (repeatable), e.g. tcp:2424:interface=127.0.0.1."""
        self["lmtp"].append(endpoint)

    def opt_pop3(self, endpoint: str) -> None:
        """A POP3 listener, Twisted endpoint string (repeatable; default tcp:110; STLS with --tls-cert)."""
        self["pop3"].append(endpoint)

    def opt_pop3s(self, endpoint: str) -> None:
        """A POP3S (implicit TLS) listener, e.g. tcp:995 (repeatable; needs --tls-cert/--tls-key)."""
        self["pop3s"].append(endpoint)

    def opt_auth(self, description: str) -> None:
        """A user store, TYPE:ARGS (repeatable; --help-auth lists the types)."""
        self._auth_given = True
        self._add_checker(description)

    def _add_checker(self, description: str) -> None:
        try:
            self.addChecker(strcred.makeChecker(description))
        except strcred.UnsupportedInterfaces as e:
            raise usage.UsageError(f"--auth {description}: not usable for POP3: {e.args[0]}")
        except strcred.InvalidAuthType as e:
            raise usage.UsageError(f"--auth: unknown user store type {e.args[0]!r} "
                                   "(see --help-auth)")
        except (ValueError, OSError) as e:
            raise usage.UsageError(f"--auth {description.split(':', 1)[0]}: {e}")

    def opt_help_stores(self) -> None:
        """List the mail store types (--store)."""
        from popgate.stores.registry import describe_store_factories

        print(describe_store_factories())
        raise SystemExit(0)

    def postOptions(self) -> None:
        file_values = config.load(self["config"]) if self["config"] else {}
        for key, value in file_values.items():
            option = key.replace("_", "-")
            if key == "auth":
                if not self._auth_given:
                    for description in value:
                        self._add_checker(description)
            elif key in ("pop3", "pop3s", "lmtp"):
                if not self[key]:
                    self[key] = list(value)
            elif key == "allow_plaintext_auth":
                if not self[option]:
                    self[option] = value
            elif option in self and self[option] is None:
                self[option] = value
            elif option not in self:
                self[option] = value
        if not self["pop3"] and not self["pop3s"]:
            self["pop3"] = ["tcp:110"]
        try:
            self["exempt-networks"] = _networks(self["exempt-networks"] or [])
            for name in ("max-connections", "max-connections-per-ip"):
                _number(int, name)(0 if self[name] is None else self[name])
        except ValueError as e:
            raise usage.UsageError(str(e))
        self["tls_object"] = self._load_tls()
        if not self["store"]:
            raise usage.UsageError("no mail store: give --store TYPE:ARGS (see --help-stores)")
        if not self.get("credCheckers"):
            raise usage.UsageError("no user store: give --auth TYPE:ARGS (see --help-auth)")
        from popgate.stores.registry import make_store

        try:
            self["store_object"] = make_store(self["store"])
        except ValueError as e:
            raise usage.UsageError(f"--store: {e}")
        from popgate.delivery.service import check_lmtp_options

        check_lmtp_options(self)
        if self["workers"] is None:
            self["workers"] = 1
        if self["workers"] > 1 or self["worker"]:
            from popgate.workers import parse_tcp_endpoint

            for endpoint in self["pop3"] + self["pop3s"] + self["lmtp"]:
                parse_tcp_endpoint(endpoint)
        from popgate.startup_checks import check

        check(self)  # last: every path is known; as the --uid user

    def _load_tls(self) -> Any:
        """The L{popgate.tls.ServerTLS} the options ask for, or None."""
        cert, key = self["tls-cert"], self["tls-key"]
        if bool(cert) != bool(key):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if not cert:
            if self["pop3s"]:
                raise usage.UsageError("--pop3s needs --tls-cert and --tls-key")
            return None
        from popgate.tls import ServerTLS, TLSConfigError

        try:
            return ServerTLS(cert, key)
        except TLSConfigError as e:
            raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None


def makeService(options: Options, reactor: Any = None) -> Any:
    """Build the L{MultiService} of every listener the options ask for."""
    from popgate.service import build_service

    return build_service(options, reactor)
