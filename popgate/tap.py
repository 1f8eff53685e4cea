"""
C{twistd popgate}: the command line, parsed into a L{Config}, and the
server L{popgate.build.build_server} makes of it.

The options are generated from L{popgate.settings}; every one but
C{--config} (and the internal C{--worker}) has a twin in the TOML file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

from twisted.cred import strcred
from twisted.python import usage

from popgate import config as config_file
from popgate import settings
from popgate.backends import CREDENTIALS
from popgate.build import Server, build_server
from popgate.cred import catalog
from popgate.logs import twistd_log
from popgate.oauth.registry import describe_validators
from popgate.reload import install as install_reload
from popgate.settings import Config, Setting
from popgate.startup_checks import run_as
from popgate.stores.registry import describe_store_factories, store_checks_users
from popgate.workers.reuseport import check_shareable


def _collector(setting: Setting) -> Any:
    """The C{opt_} method of a repeatable setting."""

    def collect(self: Options, value: str) -> None:
        self[setting.option].append(value)

    collect.__doc__ = setting.help_line()
    return collect


class OptionsExit(SystemExit):
    """
    A bad command line under twistd: one line (the error, and where to
    look) as the exit message, instead of twistd's usage then the error.

    @ivar error: the error alone.
    """

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


def check_server(config: Config) -> None:
    """
    What a server needs beyond values that convert: the parts that go
    together, and listeners the C{--workers} processes can share.

    @raise usage.UsageError: naming the options.
    """
    if bool(config.tls_cert) != bool(config.tls_key):
        raise usage.UsageError("--tls-cert and --tls-key go together")
    if config.pop3s and not config.tls_cert:
        raise usage.UsageError("--pop3s needs --tls-cert and --tls-key")
    if not config.store:
        raise usage.UsageError("no mail store: give --store TYPE:ARGS (see --help-stores)")
    if not config.auth and not store_checks_users(config.store):
        raise usage.UsageError("no user store: give --auth TYPE:ARGS (see --help-auth)")
    if config.workers > 1 or config.worker:
        for endpoint in config.pop3 + config.pop3s + config.lmtp:
            check_shareable(endpoint)


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    Parses, and checks values; builds nothing.  The result is
    L{Options.config}.  C{--help-auth} and C{--help-auth-type} come from
    L{strcred.AuthOptionMixin}; C{--auth} only collects descriptions.
    """

    synopsis = "[options]"
    longdesc = (
        "popgate serves mail over POP3 (RFC 1939, STLS, SASL) from Maildir, "
        "mbox or SQL stores, checking users against htpasswd files, LDAP or "
        "SQL. ENDPOINT is a Twisted server endpoint string such as "
        "tcp:1110:interface=127.0.0.1. Every option is described in "
        "docs/configuration.md."
    )
    supportedInterfaces = CREDENTIALS

    optParameters: list[list[Any]] = [
        [s.option, s.short, None, s.help_line()] for s in settings.SETTINGS
        if s.kind != "flag" and not s.repeatable]
    optFlags: list[list[Any]] = [
        [s.option, s.short, s.help_line()] for s in settings.SETTINGS if s.kind == "flag"]

    def __init__(self) -> None:
        super().__init__()
        for setting in settings.SETTINGS:
            if setting.repeatable:
                self[setting.option] = []
        self.raw_args: list[str] = []
        self.config = Config()

    def parseOptions(self, options: Any = None) -> None:
        # Kept so --workers can start the other processes with the same
        # command line.
        self.raw_args = list(options) if options is not None else []
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            # Under twistd, which would print its whole usage (80 lines)
            # above the one line that matters.
            pointer = "" if "(see " in str(e) else " (see twistd popgate --help)"
            raise OptionsExit(f"popgate: {e}{pointer}", str(e)) from None

    def opt_help_stores(self) -> None:
        """List the mail store types (--store)."""
        print(describe_store_factories())
        raise SystemExit(0)

    def opt_help_oauth(self) -> None:
        """List the OAuth token validator types (--oauth)."""
        print(describe_validators())
        raise SystemExit(0)

    def opt_help_auth(self) -> None:
        """List the user store types (--auth)."""
        self.authOutput.write(catalog.describe_all(CREDENTIALS))
        raise SystemExit(0)

    def opt_help_auth_type(self, auth_type: str) -> None:
        """Explain one user store type and each key it takes."""
        try:
            self.authOutput.write(catalog.describe_type(auth_type, CREDENTIALS))
        except catalog.UnknownStore as e:
            raise usage.UsageError(f"--help-auth-type: {e}") from None
        raise SystemExit(0)

    def postOptions(self) -> None:
        file_values = config_file.load(self["config"]) if self["config"] else {}
        command_line = {s.key: self[s.option] for s in settings.SETTINGS}
        self.config = settings.resolve(command_line, file_values,
                                       argv=tuple(self.raw_args), run_as=run_as(self))
        check_server(self.config)


for _setting in settings.SETTINGS:
    if _setting.repeatable:
        setattr(Options, f"opt_{_setting.key}", _collector(_setting))


def start_failed(twistd_config: Any, why: str) -> None:
    """
    What twistd does for a start-up that fails with an exception, for the
    C{SystemExit} that keeps a listener's failure to one log line: remove
    the pid file this process wrote, and tell a daemonizing twistd's first
    process that start-up failed, and why (it prints C{why} on its
    standard error and exits 1; it holds the status pipe's other end, so
    it would wait for ever).  Without daemonizing (C{-n}) there is no pipe.
    """
    pidfile = twistd_config.get("pidfile")
    if pidfile:
        try:
            with open(pidfile, "rb") as f:
                ours = f.read().strip() == b"%d" % os.getpid()
            if ours:
                os.unlink(pidfile)
        except OSError:
            pass
    pipe = twistd_config.get("statusPipe")
    if pipe is None:
        return
    twistd_config["statusPipe"] = None
    try:
        os.write(pipe, b"1 " + why.encode("utf-8", "replace")[:98])
    finally:
        os.close(pipe)


def parse_config(argv: Sequence[str]) -> Config:
    """
    The L{Config} of a popgate command line, parsed as twistd parses it
    (a reload parses start-up's again: L{popgate.reload}).

    @raise usage.UsageError: in one line.
    """
    options = Options()
    options.parseOptions(list(argv))
    return options.config


def makeService(options: Options, reactor: Any = None) -> Server:
    """
    The server the options describe.  twistd passes no reactor: this entry
    point takes the global one, once, and hands it down.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        server = build_server(options.config, reactor)
        server.exit_on_listen_failure = True  # one line, not twistd's traceback
        if options.parent is not None:
            server.report_start_failure = partial(start_failed, options.parent)
        install_reload(server, parse_config, reactor)
        if options.parent is not None:  # run by twistd: its log, our format
            server.log_observer = twistd_log(options.parent, options.config.log_format,
                                             options.config.log_level, reactor)
            if server.pool is not None and server.log_observer is not None:
                # The workers' lines go where this process's go.
                server.pool.log_sink = server.log_observer.sink
        return server
    except usage.UsageError as e:
        # twistd shows a traceback for whatever makeService raises; a
        # configuration that cannot be built is one line, as a bad option.
        raise SystemExit(f"popgate: {e}") from None
