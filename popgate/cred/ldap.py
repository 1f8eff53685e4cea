"""
An LDAP user store: search for the user, then bind as the entry found.

Why search-then-bind and not ldaptor's C{LDAPBindingChecker}: that checker
puts the raw user name into the filter (LDAP injection) and renders bytes
as C{b'alice'} on Python 3.  Here every user-supplied value is escaped per
RFC 4515 before it reaches the filter.

Failures are split on purpose: a wrong password, an unknown user or an
ambiguous search is L{UnauthorizedLogin} (C{-ERR [AUTH]}); a directory that
is down, slow, refuses the service bind or answers oddly is
L{TemporaryFailure} (C{-ERR [SYS/TEMP]}), so clients retry instead of
telling users their password is wrong.

One service connection (bound as C{binddn}, or anonymous) carries all
searches and is reopened when it drops; each user bind uses its own
short-lived connection, so the service connection is never re-bound as a
user.

The name a login or a recipient gets (and so its mailbox) is the
directory's spelling, not the client's: the C{user_attribute} value, or
else the value of the attribute the filter matched C{%n}/C{%u} against
(C{uid=%n}: the entry's C{uid}).  Directories match C{uid} and C{mail}
case-insensitively, so C{BOB@Example.ORG} finds C{uid=bob} and is named
C{bob@example.org}, as is a recipient C{Bob@Example.org}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldaptor import ldapfilter
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from popgate.cred.names import normalize_user
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.errors import TemporaryFailure
from popgate.interfaces import IUserLookup

__all__ = [
    "DEFAULT_FILTER",
    "LDAPChecker",
    "LDAPSettings",
    "escape_filter_value",
    "expand_filter",
    "make_checker",
    "parse_args",
]

DEFAULT_FILTER = "(&(objectClass=inetOrgPerson)(uid=%n))"
DEFAULT_TIMEOUT = 5.0

_T = TypeVar("_T")

# Result codes that mean "these credentials are wrong", as opposed to "the
# directory could not answer": only these become UnauthorizedLogin.
_REJECTED = (ldaperrors.LDAPInvalidCredentials, ldaperrors.LDAPInappropriateAuthentication)


# -- filters ---------------------------------------------------------------

_FILTER_SPECIALS = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}


def escape_filter_value(value: str) -> str:
    """
    Escape C{value} for an RFC 4515 filter assertion, so a user name such as
    C{*)(uid=*} matches only itself.  Non-ASCII text stays as UTF-8, which
    RFC 4515 allows and ldaptor's filter parser reads correctly.
    """
    return "".join(_FILTER_SPECIALS.get(c, c) for c in value)


_PLACEHOLDER = re.compile(r"%(.)", re.DOTALL)


def _split_user(user: str) -> tuple[str, str]:
    local, at, domain = user.rpartition("@")
    return (local, domain) if at else (user, "")


def expand_filter(template: str, user: str) -> str:
    """
    Fill C{%u} (full user), C{%n} (local part), C{%d} (domain) and C{%%} in
    C{template}, each value escaped with L{escape_filter_value}.

    @raise ValueError: on an unknown placeholder.
    """
    local, domain = _split_user(user)
    values = {"u": user, "n": local, "d": domain}

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        if key not in values:
            raise ValueError(f"unknown placeholder %{key} in filter")
        return escape_filter_value(values[key])

    return _PLACEHOLDER.sub(fill, template)


# An equality assertion on exactly the user name or its local part:
# (uid=%n), (mail=%u), (mail=%n@%d).  The entry's value there is the name's
# stored spelling.
_NAME_ASSERTION = re.compile(r"\(([A-Za-z][A-Za-z0-9-]*)=(%u|%n|%n@%d)\)")


def name_attributes(template: str) -> list[tuple[str, bool]]:
    """
    The attributes a filter compares with the whole user name (C{True}) or
    its local part (C{False}), in filter order: where the directory's
    spelling of the name is found.
    """
    return [(m.group(1), m.group(2) != "%n") for m in _NAME_ASSERTION.finditer(template)]


def _parse_filter(text: str) -> Any:
    try:
        return ldapfilter.parseFilter(text)
    except (ldapfilter.InvalidLDAPFilter, ValueError) as e:
        raise ValueError(f"invalid LDAP filter {text!r}") from e


# -- settings --------------------------------------------------------------

_KEYS = (
    "url",
    "base",
    "filter",
    "binddn",
    "bindpw",
    "bindpw_file",
    "starttls",
    "cafile",
    "timeout",
    "connect_timeout",
    "mail_attribute",
    "user_attribute",
)
# A key starts the string or follows a comma; anything else (the commas
# inside DNs and filters) is part of the value.
_KEY_AT = re.compile(r"(?:^|,)(%s)=" % "|".join(_KEYS))
_YES = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


@dataclass(frozen=True)
class LDAPSettings:
    """Everything an L{LDAPChecker} needs, parsed and checked."""

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

    def __repr__(self) -> str:
        # Keep the service password out of logs and tracebacks.
        return f"LDAPSettings(host={self.host!r}, port={self.port}, base={self.base!r}, binddn={self.binddn!r})"


def _split_args(argstring: str) -> dict[str, str]:
    matches = list(_KEY_AT.finditer(argstring))
    if not matches or matches[0].start() != 0:
        head = argstring.split("=", 1)[0] if argstring else ""
        raise ValueError(f"ldap: expected key=value pairs starting with a known key, got {head!r}")
    found: dict[str, str] = {}
    for match, following in zip(matches, matches[1:] + [None]):
        key = match.group(1)
        end = following.start() if following is not None else len(argstring)
        if key in found:
            raise ValueError(f"ldap: {key}= given twice")
        found[key] = argstring[match.end() : end]
    return found


def _seconds(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"ldap: {key}= must be a number of seconds, got {text!r}") from None
    if not 0 < value < 3600:
        raise ValueError(f"ldap: {key}= must be between 0 and 3600 seconds")
    return value


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as e:
        raise ValueError(f"ldap: cannot read bindpw_file {path!r}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"ldap: bindpw_file {path!r} is empty")
    return secret


def _parse_url(url: str) -> tuple[bool, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"ldap: bad url {url!r}") from None
    if parts.scheme not in ("ldap", "ldaps"):
        raise ValueError(f"ldap: url must start with ldap:// or ldaps://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"ldap: url {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"ldap: url {url!r} must be scheme://host[:port]/ only (give base= separately)")
    ldaps = parts.scheme == "ldaps"
    return ldaps, parts.hostname, port or (636 if ldaps else 389)


def parse_args(argstring: str) -> LDAPSettings:
    """
    Parse C{url=...,base=...[,filter=...][,binddn=...,bindpw=...|bindpw_file=...]
    [,starttls=yes][,cafile=...][,timeout=5][,connect_timeout=5]
    [,mail_attribute=...][,user_attribute=...]}.

    Only the known keys split the string, so DNs and filters keep their
    commas; a value cannot itself contain C{,KEY=} for a known key (put such
    a password in C{bindpw_file}).

    @raise ValueError: with a one-line reason.
    """
    args = _split_args(argstring.strip())
    for required in ("url", "base"):
        if not args.get(required):
            raise ValueError(f"ldap: {required}= is required")
    ldaps, host, port = _parse_url(args["url"])
    starttls_text = args.get("starttls", "no").lower()
    if starttls_text not in _YES:
        raise ValueError(f"ldap: starttls= must be yes or no, got {starttls_text!r}")
    starttls = _YES[starttls_text]
    if starttls and ldaps:
        raise ValueError("ldap: starttls=yes makes no sense with ldaps://")
    if "bindpw" in args and "bindpw_file" in args:
        raise ValueError("ldap: give bindpw= or bindpw_file=, not both")
    binddn = args.get("binddn") or None
    bindpw = _read_secret(args["bindpw_file"]) if "bindpw_file" in args else args.get("bindpw", "")
    if binddn and not bindpw:
        # A DN with an empty password is an unauthenticated bind: it
        # "succeeds" without proving anything.
        raise ValueError("ldap: binddn= needs bindpw= or bindpw_file=")
    if bindpw and not binddn:
        raise ValueError("ldap: bindpw= given without binddn=")
    template = args.get("filter") or DEFAULT_FILTER
    _parse_filter(expand_filter(template, "user@example.org"))
    timeout = _seconds("timeout", args["timeout"]) if "timeout" in args else DEFAULT_TIMEOUT
    connect_timeout = _seconds("connect_timeout", args["connect_timeout"]) if "connect_timeout" in args else timeout
    cafile = args.get("cafile") or None
    if cafile is not None:
        _load_trust_root(cafile)
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
        mail_attribute=args.get("mail_attribute") or None,
        user_attribute=args.get("user_attribute") or None,
    )


def _load_trust_root(cafile: str) -> Any:
    from twisted.internet import ssl

    try:
        with open(cafile, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"ldap: cannot read cafile {cafile!r}: {e.strerror}") from None
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise ValueError(f"ldap: cafile {cafile!r} holds a certificate that cannot be read") from None
    if not certificates:
        raise ValueError(f"ldap: cafile {cafile!r} holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)


# -- the checker -------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: dict[str, list[str]]

    def first(self, name: str | None) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str | None) -> list[str]:
        if name is None:
            return []
        for key, values in self.attributes.items():
            if key.lower() == name.lower() and values:
                return values
        return []


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _check_result(response: Any, expected: type) -> None:
    if not isinstance(response, expected):
        raise ldaperrors.LDAPProtocolError(f"unexpected response {type(response).__name__}")
    if response.resultCode != ldaperrors.Success.resultCode:
        raise ldaperrors.get(response.resultCode, response.errorMessage)


class _ConnectionGone(Exception):
    """The service connection died under a request: worth one retry."""


@implementer(ICredentialsChecker, IUserLookup)
class LDAPChecker:
    """
    Checks user names and passwords against an LDAP directory, and answers
    whether a user exists (for delivery).
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, settings: LDAPSettings, reactor: Any = None) -> None:
        self.settings = settings
        self._given_reactor = reactor
        self._service: LDAPClient | None = None
        self._service_lock = DeferredLock()
        self._name_attributes = name_attributes(settings.filter)
        wanted = [settings.user_attribute, settings.mail_attribute, *(a for a, _ in self._name_attributes)]
        fetch: dict[str, str] = {}
        for attribute in wanted:
            if attribute:
                fetch.setdefault(attribute.lower(), attribute)
        self._fetch_attributes = list(fetch.values()) or ["1.1"]
        self._tls: Any = None

    @property
    def _reactor(self) -> Any:
        if self._given_reactor is None:
            from twisted.internet import reactor

            self._given_reactor = reactor
        return self._given_reactor

    # -- the Twisted edge --

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        """
        @return: a L{Deferred} firing with the user name (C{str}), failing
            with L{UnauthorizedLogin} or L{TemporaryFailure}.
        """
        return Deferred.fromCoroutine(self._authenticate(credentials.username, credentials.password))

    def lookup_user(self, name: str | bytes) -> Deferred[UserInfo | None]:
        """
        @return: a L{Deferred} firing with a L{UserInfo}, C{None} when no
            entry matches, or failing with L{TemporaryFailure} when the
            directory cannot answer or several entries match.
        """
        return Deferred.fromCoroutine(self._lookup(name))

    def close(self) -> None:
        """Drop the service connection (it is reopened on the next request)."""
        client, self._service = self._service, None
        if client is not None and client.connected:
            client.transport.loseConnection()

    # -- the work --

    async def _authenticate(self, username: bytes | str, password: bytes | str) -> str:
        try:
            user = username.decode("utf-8") if isinstance(username, bytes) else username
        except UnicodeDecodeError:
            raise UnauthorizedLogin("user name is not UTF-8") from None
        secret = password.encode("utf-8") if isinstance(password, str) else password
        if not user:
            raise UnauthorizedLogin("empty user name")
        user = normalize_user(user)
        if not secret:
            # An empty password makes a simple bind unauthenticated, which
            # many servers accept: never send one.
            raise UnauthorizedLogin("empty password")
        entry = await self._find(user)
        if entry is None:
            self.log.info("LDAP login refused for {user!r}: no single entry", user=user)
            raise UnauthorizedLogin("no such user")
        await self._bind_as_user(user, entry.dn, secret)
        return AvatarId(self._canonical(entry, user), entry.first(self.settings.mail_attribute))

    async def _lookup(self, name: str | bytes) -> UserInfo | None:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if not name:
            return None
        name = normalize_user(name)
        entry = await self._find(name, ambiguous_is_error=True)
        if entry is None:
            return None
        return UserInfo(
            name=self._canonical(entry, name),
            mail_location=entry.first(self.settings.mail_attribute),
        )

    def _canonical(self, entry: _Entry, user: str) -> str:
        """
        The directory's spelling of C{user}: the C{user_attribute} value,
        else the value that matched C{%u}/C{%n} in the filter (when several
        values, the one equal to C{user} ignoring case), else C{user}; its
        domain lower-cased.  Login and delivery both name the user so.
        """
        stored = entry.first(self.settings.user_attribute)
        if stored:
            return normalize_user(stored)
        local, at, domain = user.rpartition("@")
        if not at:
            local = user
        for attribute, whole in self._name_attributes:
            typed = (user if whole else local).casefold()
            for value in entry.values(attribute):
                if value.casefold() == typed:
                    return normalize_user(value if whole or not at else f"{value}@{domain}")
        return user

    async def _find(self, user: str, ambiguous_is_error: bool = False) -> _Entry | None:
        """The one entry the filter finds for C{user}, or C{None}."""
        search_filter = _parse_filter(expand_filter(self.settings.filter, user))
        try:
            try:
                entries = await self._search_on_service(search_filter)
            except _ConnectionGone:
                entries = await self._search_on_service(search_filter)
        except _ConnectionGone as e:
            raise self._temporary("search", e.__cause__ or e) from None
        if len(entries) > 1:
            self.log.warn("LDAP filter matched several entries for {user!r}", user=user)
            if ambiguous_is_error:
                raise TemporaryFailure("LDAP filter matched several entries")
            return None
        return entries[0] if entries else None

    async def _search_on_service(self, search_filter: Any) -> list[_Entry]:
        reused = self._service is not None and bool(self._service.connected)
        client = await self._service_client()
        try:
            return await self._search(client, search_filter)
        except Exception as e:
            lost = isinstance(e, (error.ConnectionClosed, LDAPClientConnectionLostException))
            if lost or not isinstance(e, ldaperrors.LDAPException):
                # Lost, timed out or confused: this connection is done for.
                self._drop(client)
            if lost and reused:
                raise _ConnectionGone() from e
            raise self._temporary("search", e) from None

    async def _service_client(self) -> LDAPClient:
        async with self._service_lock:
            client = self._service
            if client is not None and client.connected:
                return client
            self._service = None
            try:
                client = await self._connect()
            except Exception as e:
                raise self._temporary("connect", e) from None
            if self.settings.binddn:
                try:
                    await self._bind(client, self.settings.binddn, self.settings.bindpw.encode("utf-8"))
                except Exception as e:
                    self._drop(client)
                    raise self._temporary("service bind", e) from None
            self._service = client
            return client

    async def _bind_as_user(self, user: str, dn: str, secret: bytes) -> None:
        try:
            client = await self._connect()
        except Exception as e:
            raise self._temporary("connect", e) from None
        try:
            await self._bind(client, dn, secret)
        except _REJECTED:
            self.log.info("LDAP login refused for {user!r}: wrong password", user=user)
            raise UnauthorizedLogin("wrong password") from None
        except Exception as e:
            raise self._temporary("user bind", e) from None
        finally:
            self._drop(client, unbind=True)

    # -- LDAP operations with timeouts --

    async def _timed(self, d: Deferred[_T]) -> _T:
        return await d.addTimeout(self.settings.timeout, self._reactor)

    async def _connect(self) -> LDAPClient:
        settings = self.settings
        endpoint: Any = HostnameEndpoint(
            self._reactor, settings.host, settings.port, timeout=settings.connect_timeout
        )
        if settings.ldaps:
            endpoint = wrapClientTLS(self._tls_options(), endpoint)
        d = connectProtocol(endpoint, LDAPClient())
        client: LDAPClient = await d.addTimeout(settings.connect_timeout, self._reactor)
        if settings.starttls:
            try:
                response = await self._timed(client.send(pureldap.LDAPStartTLSRequest()))
                _check_result(response, pureldap.LDAPExtendedResponse)
                # Writes after this go through TLS only, so nothing (the
                # password included) leaves in clear if the handshake fails.
                client.transport.startTLS(self._tls_options())
            except Exception:
                self._drop(client)
                raise
        return client

    def _tls_options(self) -> Any:
        if self._tls is None:
            from twisted.internet import ssl

            trust = _load_trust_root(self.settings.cafile) if self.settings.cafile else None
            self._tls = ssl.optionsForClientTLS(self.settings.host, trustRoot=trust)
        return self._tls

    async def _bind(self, client: LDAPClient, dn: str, secret: bytes) -> None:
        request = pureldap.LDAPBindRequest(dn=dn, auth=secret)
        response = await self._timed(client.send(request))
        _check_result(response, pureldap.LDAPBindResponse)

    async def _search(self, client: LDAPClient, search_filter: Any) -> list[_Entry]:
        entries: list[_Entry] = []
        done: Deferred[list[_Entry]] = Deferred()

        def on_message(msg: Any) -> bool:
            if isinstance(msg, pureldap.LDAPSearchResultEntry):
                attributes = {_text(k): [_text(v) for v in vs] for k, vs in msg.attributes}
                entries.append(_Entry(_text(msg.objectName), attributes))
                return False
            if isinstance(msg, pureldap.LDAPSearchResultReference):
                return False
            if not isinstance(msg, pureldap.LDAPSearchResultDone):
                done.errback(ldaperrors.LDAPProtocolError(f"unexpected {type(msg).__name__}"))
            elif msg.resultCode in (ldaperrors.Success.resultCode, ldaperrors.LDAPSizeLimitExceeded.resultCode):
                done.callback(entries)
            else:
                done.errback(ldaperrors.get(msg.resultCode, msg.errorMessage))
            return True

        request = pureldap.LDAPSearchRequest(
            baseObject=self.settings.base,
            scope=pureldap.LDAP_SCOPE_wholeSubtree,
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases,
            sizeLimit=2,  # two are enough to know the answer is ambiguous
            timeLimit=max(1, int(self.settings.timeout)),
            typesOnly=0,
            filter=search_filter,
            attributes=self._fetch_attributes,
        )
        # This Deferred only fails (connection lost); results come to on_message.
        sent = client.send_multiResponse(request, on_message)
        sent.addErrback(lambda f: None if done.called else done.errback(f))
        return await self._timed(done)

    # -- helpers --

    def _drop(self, client: LDAPClient, unbind: bool = False) -> None:
        if self._service is client:
            self._service = None
        if not client.connected:
            return
        if unbind:
            client.unbind()
        else:
            client.transport.abortConnection()

    def _temporary(self, step: str, reason: BaseException) -> TemporaryFailure:
        """Log why (never a password: only the error) and say "try later"."""
        if isinstance(reason, TemporaryFailure):
            return reason
        self.log.warn(
            "LDAP {step} failed at {host}:{port}: {reason}",
            step=step,
            host=self.settings.host,
            port=self.settings.port,
            reason=f"{type(reason).__name__}: {reason}",
        )
        return TemporaryFailure(f"LDAP {step} failed: {type(reason).__name__}")


def make_checker(argstring: str, reactor: Any = None) -> LDAPChecker:
    """The C{ldap:} strcred factory: see L{parse_args}."""
    return LDAPChecker(parse_args(argstring), reactor=reactor)

