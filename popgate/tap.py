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
        ["hostname", None, None, "Host name used in the APOP timestamp."],
        ["idle-timeout", None, None, "Seconds before an idle session is closed "
                                     "(default 600, the RFC 1939 minimum).",
         _number(float, "idle-timeout", 1)],
        ["auth-failure-delay", None, None, "Seconds before answering a failed login (default 1).",
         _number(float, "auth-failure-delay")],
        ["max-auth-failures", None, None, "Failed logins before disconnecting (default 3).",
         _number(int, "max-auth-failures", 1)],
        ["max-bad-commands", None, None, "Bad commands before disconnecting (default 20).",
         _number(int, "max-bad-commands", 1)],
        ["auth-cache-ttl", None, None, "Seconds a successful login is cached (default 60; 0 "
                                       "turns the cache off).", _number(float, "auth-cache-ttl")],
        ["auth-cache-negative-ttl", None, None, "Seconds a failed login is cached (default 10; "
                                                "0 turns it off).",
         _number(float, "auth-cache-negative-ttl")],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["pop3"] = []
        self._auth_given = False

    def opt_pop3(self, endpoint: str) -> None:
        """A plaintext POP3 listener, as a Twisted endpoint string
        (repeatable; default tcp:110)."""
        self["pop3"].append(endpoint)

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
            elif key == "pop3":
                if not self["pop3"]:
                    self["pop3"] = list(value)
            elif option in self and self[option] is None:
                self[option] = value
            elif option not in self:
                self[option] = value
        if not self["pop3"]:
            self["pop3"] = ["tcp:110"]
        if not self["store"]:
            raise usage.UsageError("no mail store: give --store TYPE:ARGS (see --help-stores)")
        if not self.get("credCheckers"):
            raise usage.UsageError("no user store: give --auth TYPE:ARGS (see --help-auth)")
        from popgate.stores.registry import make_store

        try:
            self["store_object"] = make_store(self["store"])
        except ValueError as e:
            raise usage.UsageError(f"--store: {e}")


def makeService(options: Options, reactor: Any = None) -> Any:
    """Build the L{MultiService} of every listener the options ask for."""
    from popgate.service import build_service

    return build_service(options, reactor)
