"""
Reaching an upstream IMAP server and logging in: the endpoint (TCP, TLS
from the first octet, or STARTTLS after the greeting) and certificate
verification as for a POP3 upstream (L{popgate.stores.proxy_connect.tls_options}),
then AUTHENTICATE PLAIN (with SASL-IR when offered), or LOGIN when the
server has no AUTH=PLAIN.  Every failure to get there is an
L{UpstreamUnavailable} (C{[SYS/TEMP]}) except the server's own C{NO} to
the login, which L{login_refusal} maps.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory

from popgate import errors
from popgate.stores.imap_upstream import ImapError, ImapProtocol, command_parts
from popgate.stores.pop3_upstream import UpstreamUnavailable
from popgate.stores.proxy_connect import tls_options
from popgate.stores.proxy_settings import ProxySettings, Upstream

__all__ = ["connect", "log_in", "login_refusal"]


async def connect(reactor: Any, settings: ProxySettings, upstream: Upstream) -> ImapProtocol:
    """
    A connection to C{upstream} that has greeted (and, with STARTTLS, is
    encrypted), its capabilities known.

    @raise UpstreamUnavailable: it cannot be reached, does not greet in
        time, refuses STARTTLS, or its certificate does not verify.
    """
    factory = Factory.forProtocol(
        lambda: ImapProtocol(reactor, settings.command_timeout, settings.greeting_timeout))
    endpoint: Any = HostnameEndpoint(reactor, upstream.host, upstream.port,
                                     timeout=settings.connect_timeout)
    if upstream.tls == "implicit":
        endpoint = wrapClientTLS(tls_options(upstream), endpoint)
    try:
        protocol: ImapProtocol = await endpoint.connect(factory)
    except Exception as e:
        raise UpstreamUnavailable(f"cannot connect to {upstream.url}: {e}") from None
    try:
        await protocol.greeting
        if protocol.preauth:
            raise UpstreamUnavailable("it greets with PREAUTH: no login as the user possible")
        if not protocol.capabilities:
            await protocol.command(b"CAPABILITY")
        if upstream.tls == "starttls":
            if b"STARTTLS" not in protocol.capabilities:
                raise UpstreamUnavailable("it does not offer STARTTLS")
            await protocol.command(b"STARTTLS")
            protocol.start_tls(tls_options(upstream))
            protocol.capabilities = set()  # those before TLS are void (RFC 3501 6.2.1)
            await protocol.command(b"CAPABILITY")
    except ImapError as e:
        protocol.abort()
        raise UpstreamUnavailable(f"{upstream.url} refused: {e}") from None
    except UpstreamUnavailable as e:
        protocol.abort()
        raise UpstreamUnavailable(f"{upstream.url}: {e}") from None
    return protocol


def login_refusal(error: ImapError, user: bytes) -> Exception:
    """What the server's C{NO} to the login means for popgate's client
    (RFC 5530 codes): C{[UNAVAILABLE]} is C{[SYS/TEMP]}, C{[INUSE]} is
    C{[IN-USE]}, anything else C{[AUTH]}."""
    name = user.decode("utf-8", "replace")
    if error.code in (b"UNAVAILABLE", b"SERVERBUG", b"LIMIT"):
        return errors.TemporaryFailure(f"upstream refused {name} for now: {error}")
    if error.code == b"INUSE":
        return errors.MaildropInUse(f"upstream: {error}")
    return UnauthorizedLogin(f"upstream refused {name}: {error}")


def login_command(capabilities: set[bytes], user: bytes, password: bytes,
                  authzid: bytes = b"", separator: bytes = b"*") -> tuple[list[bytes], str]:
    """
    The login command's parts and kind: AUTHENTICATE PLAIN (C{authzid} the
    user a master user acts for), or LOGIN (C{user*master} for a master
    user) on a server without AUTH=PLAIN.

    @raise UpstreamUnavailable: the server offers neither.
    """
    if b"AUTH=PLAIN" in capabilities:
        token = base64.b64encode(authzid + b"\0" + user + b"\0" + password)
        if b"SASL-IR" in capabilities:
            return [b"AUTHENTICATE PLAIN " + token], "auth"
        return [b"AUTHENTICATE PLAIN", token], "auth"
    if b"LOGINDISABLED" in capabilities:
        raise UpstreamUnavailable("it offers neither AUTH=PLAIN nor LOGIN")
    if authzid:
        user = authzid + separator + user
    return command_parts(b"LOGIN", user, password), "simple"


async def log_in(reactor: Any, settings: ProxySettings, upstream: Upstream,
                 user: bytes, password: bytes, authzid: bytes = b"") -> ImapProtocol:
    """
    Connect and log in as C{user} (or as master user C{user} for
    C{authzid}); the connection is then authenticated, its capabilities
    those after login.

    @raise UnauthorizedLogin: refused credentials (or ones PLAIN cannot
        carry: a NUL in them).
    @raise errors.MaildropInUse: the server says C{[INUSE]}.
    @raise UpstreamUnavailable: see L{connect}.
    """
    if not user or any(b"\0" in value for value in (user, password, authzid)):
        raise UnauthorizedLogin("a user name or password that cannot be sent upstream")
    protocol = await connect(reactor, settings, upstream)
    try:
        parts, kind = login_command(protocol.capabilities, user, password, authzid,
                                    settings.master_separator.encode())
        reply = await protocol.command(parts, kind=kind)
        if b"[CAPABILITY " not in reply.text.upper():
            await protocol.command(b"CAPABILITY")
    except ImapError as e:
        protocol.abort()
        raise login_refusal(e, authzid or user) from None
    except (UpstreamUnavailable, defer.CancelledError):
        protocol.abort()
        raise
    return protocol
