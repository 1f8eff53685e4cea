"""
The server's options as the admin commands take them: C{--config FILE}
or any C{twistd popgate} option, parsed by L{popgate.tap.Options} as
twistd parses them, so a command line that starts the server also
configures C{check-config} and C{auth}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python import usage
from twisted.scripts._twistd_unix import ServerOptions  # what twistd uses on POSIX

from popgate import tap

__all__ = ["parse_as_twistd", "parse_server_options", "split_twistd_options"]

#: twistd's own options check-config understands: who the server runs as.
TWISTD_OPTIONS = ("--uid", "--gid")


class _WithArguments(tap.Options):
    """The server's options, then C{names} (the last ones optional)."""

    def __init__(self, names: Sequence[str], required: int) -> None:
        super().__init__()
        self.names = list(names)
        self.required = required
        self.arguments: list[str] = []

    def parseArgs(self, *args: str) -> None:
        if not self.required <= len(args) <= len(self.names):
            wanted = " ".join(n if i < self.required else f"[{n}]"
                              for i, n in enumerate(self.names)) or "no arguments"
            raise usage.UsageError(f"expected {wanted} after the server options, got "
                                   f"{len(args)} argument{'s' if len(args) != 1 else ''}")
        self.arguments = list(args)


def parse_server_options(args: Sequence[str], names: Sequence[str] = (),
                         required: int = 0) -> tuple[tap.Options, list[str]]:
    """
    Parse C{[server options] NAMES...}; options come first.

    @return: the parsed options (C{.config}) and the arguments.
    @raise usage.UsageError: in one line.
    """
    options = _WithArguments(names, required)
    options.parseOptions(list(args))
    return options, options.arguments


def split_twistd_options(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """C{--uid U --gid G rest} -> (twistd's options, the rest)."""
    args = list(args)
    twistd: list[str] = []
    while args and args[0].split("=", 1)[0] in TWISTD_OPTIONS:
        option = args.pop(0)
        if "=" in option:
            twistd.append(option)
        elif args:
            twistd += [option, args.pop(0)]
        else:
            raise usage.UsageError(f"{option} needs a value")
    return twistd, args


def parse_as_twistd(args: Sequence[str]) -> Any:
    """
    Parse C{[--uid USER] [--gid GROUP] [popgate options]} with twistd's
    own C{ServerOptions}, as C{twistd --uid USER popgate ...} would: the
    C{--uid} user is then the one start-up checks the files as.

    @return: popgate's parsed options (their C{parent} is twistd's).
    @raise usage.UsageError: in one line.
    """
    twistd, rest = split_twistd_options(args)
    server = ServerOptions()
    try:
        server.parseOptions([*twistd, "popgate", *rest])
    except tap.OptionsExit as e:
        raise usage.UsageError(e.error) from None
    return server.subOptions
