"""
The mail store and the user stores a configuration names: what the
server (L{popgate.build}) and C{popgate deliver} both build, kept apart
so delivery does not import the POP3 server.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.python import usage

from popgate.cred import catalog
from popgate.routes.source import make_route_source
from popgate.settings import Config
from popgate.stores.registry import make_store

#: The credentials POP3 logins present.
CREDENTIALS = (IUsernamePassword, IUsernameHashedPassword)


def build_store(config: Config, reactor: Any) -> Any:
    """
    The mail store of C{--store}, on C{reactor} (its thread pool, its
    clock), choosing upstreams from C{--route} when given.

    @raise usage.UsageError: no store, or one that cannot be built.
    """
    if not config.store:
        raise usage.UsageError("no mail store: give --store TYPE:ARGS (see --help-stores)")
    route = None
    if config.route:
        try:
            route = make_route_source(config.route, reactor)
        except (ValueError, OSError) as e:
            raise usage.UsageError(f"--route: {e}") from None
    try:
        return make_store(config.store, reactor, route=route)
    except (ValueError, OSError) as e:
        raise usage.UsageError(f"--store: {e}") from None


def build_checker(description: str) -> ICredentialsChecker:
    """
    The user store of one C{--auth TYPE:ARGS}.

    @raise usage.UsageError: naming the option and the problem.
    """
    try:
        checker = catalog.make_checker(description, CREDENTIALS)
    except catalog.UnknownStore as e:
        raise usage.UsageError(f"--auth: {e}") from None
    except (ValueError, OSError) as e:
        raise usage.UsageError(f"--auth {description.split(':', 1)[0]}: {e}") from None
    if not set(checker.credentialInterfaces) & set(CREDENTIALS):
        raise usage.UsageError(f"--auth {description}: not usable for POP3: "
                               f"{checker.credentialInterfaces}")
    return checker


def build_checkers(config: Config) -> list[ICredentialsChecker]:
    """The user stores of every C{--auth}, in order."""
    return [build_checker(description) for description in config.auth]
