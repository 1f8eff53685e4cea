"""
Reaching an upstream POP3 server and logging in: the endpoint (TCP,
TLS from the first octet, or STLS after the greeting), certificate
verification (on, always: the CA file's roots or the system's, and the
expected name), and USER/PASS.  Every failure to get there is an
L{UpstreamUnavailable} (C{[SYS/TEMP]}) except the upstream's own C{-ERR}
to the login, which the caller maps (L{login_refusal}).
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from popgate import errors
from popgate.stores.pop3_upstream import UpstreamError, UpstreamProtocol, UpstreamUnavailable
from popgate.stores.proxy_settings import ProxySettings, Upstream

__all__ = ["connect", "log_in", "login_refusal", "tls_options"]

log = Logger()

#: Octets that would end or split a command line: never sent upstream.
_UNSAFE = (b"\r", b"\n", b"\0")


def tls_options(upstream: Upstream) -> Any:
    """The client TLS options for C{upstream}: its certificate must chain
    to the CA file's roots (or the system's) and name C{server_name}."""
    if upstream.ca_file:
        with open(upstream.ca_file, "rb") as f:
            pem = f.read()
        roots = [ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
                 for block in pem.split(b"-----END CERTIFICATE-----")[:-1]]
        trust = ssl.trustRootFromCertificates(roots)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(upstream.server_name, trustRoot=trust)


async def connect(reactor: Any, settings: ProxySettings, upstream: Upstream) -> UpstreamProtocol:
    """
    A connection to C{upstream} that has greeted (and, with STLS, is
    encrypted).

    @raise UpstreamUnavailable: it cannot be reached, does not greet in
        time, refuses STLS, or its certificate does not verify.
    """
    factory = Factory.forProtocol(
        lambda: UpstreamProtocol(reactor, settings.command_timeout, settings.greeting_timeout))
    endpoint: Any = HostnameEndpoint(reactor, upstream.host, upstream.port,
                                     timeout=settings.connect_timeout)
    if upstream.tls == "implicit":
        endpoint = wrapClientTLS(tls_options(upstream), endpoint)
    try:
        protocol: UpstreamProtocol = await endpoint.connect(factory)
    except Exception as e:
        raise UpstreamUnavailable(f"cannot connect to {upstream.url}: {e}") from None
    try:
        await protocol.greeting
        if upstream.tls == "starttls":
            await protocol.simple(b"STLS")
            assert protocol.transport is not None
            protocol.transport.startTLS(tls_options(upstream))
    except UpstreamError as e:
        protocol.abort()
        raise UpstreamUnavailable(f"{upstream.url} refused: {e}") from None
    except UpstreamUnavailable as e:
        raise UpstreamUnavailable(f"{upstream.url}: {e}") from None
    return protocol


def login_refusal(error: UpstreamError, user: bytes) -> Exception:
    """What the upstream's C{-ERR} to USER/PASS means for popgate's client:
    C{[IN-USE]} and C{[SYS/TEMP]} as the upstream says, else C{[AUTH]}."""
    name = user.decode("utf-8", "replace")
    if error.code == b"IN-USE":
        return errors.MaildropInUse(f"upstream: {error}")
    if error.code in (b"SYS/TEMP", b"SYS", b"LOGIN-DELAY"):
        return errors.TemporaryFailure(f"upstream refused {name} for now: {error}")
    if error.code == b"SYS/PERM":
        return errors.PermanentFailure(f"upstream: {error}")
    return UnauthorizedLogin(f"upstream refused {name}: {error}")


async def log_in(reactor: Any, settings: ProxySettings, upstream: Upstream,
                 user: bytes, password: bytes) -> UpstreamProtocol:
    """
    Connect and log in as C{user}; the connection is then in TRANSACTION.

    @raise UnauthorizedLogin: refused credentials (or ones that cannot be
        sent: a CR, LF or NUL in them).
    @raise errors.MaildropInUse: the upstream says C{[IN-USE]}.
    @raise UpstreamUnavailable: see L{connect}.
    """
    if not user or any(c in user or c in password for c in _UNSAFE):
        raise UnauthorizedLogin("a user name or password that cannot be sent upstream")
    protocol = await connect(reactor, settings, upstream)
    try:
        await protocol.simple(b"USER " + user)
        await protocol.simple(b"PASS " + password)
    except UpstreamError as e:
        protocol.abort()
        raise login_refusal(e, user) from None
    except defer.CancelledError:
        protocol.abort()
        raise
    return protocol
