"""
The conversation with the directory: one service connection for searches,
a short-lived connection per user bind, every operation under a timeout.

One service connection (bound as C{binddn}, or anonymous) carries all
searches and is reopened when it drops; a search that finds it dead is
retried once on a new one, so a directory restart costs no failed login.
Each user bind uses its own connection, so the service connection is never
re-bound as a user.  Anything that goes wrong here but a rejected password
is L{TemporaryFailure}, logged with its reason (never a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from twisted.internet import error, ssl
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.defer import TimeoutError as defer_TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.logger import Logger

from popgate.cred.ldap_settings import LDAPSettings, load_trust_root
from popgate.cred.text import StoredText
from popgate.errors import TemporaryFailure

__all__ = ["Directory", "Entry"]

_T = TypeVar("_T")

# Result codes that mean "these credentials are wrong", as opposed to "the
# directory could not answer".
_REJECTED = (ldaperrors.LDAPInvalidCredentials, ldaperrors.LDAPInappropriateAuthentication)


@dataclass(frozen=True)
class Entry:
    """A search result: its DN and the attributes asked for, as text."""

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


def _check_result(response: Any, expected: Any) -> None:
    if not isinstance(response, expected):
        raise ldaperrors.LDAPProtocolError(f"unexpected response {type(response).__name__}")
    if response.resultCode != ldaperrors.Success.resultCode:
        raise ldaperrors.get(response.resultCode, response.errorMessage)


def _shown(raw: object) -> str:
    """A value that is not text, readable enough to find in the directory."""
    return bytes(raw).decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else repr(raw)


class _ConnectionGone(Exception):
    """The service connection died under a request: worth one retry."""


class Directory:
    """
    One LDAP directory, as L{LDAPSettings} describe it.

    @param attributes: the attributes each search asks for.
    """

    log = Logger()

    def __init__(self, settings: LDAPSettings, attributes: list[str], reactor: Any) -> None:
        self.settings = settings
        self._attributes = attributes or ["1.1"]  # 1.1: no attributes, just DNs
        self._reactor = reactor
        self._service: LDAPClient | None = None
        self._service_lock = DeferredLock()
        self._tls: Any = None
        self._stored = StoredText(self.log, "LDAP")

    @property
    def service(self) -> LDAPClient | None:
        """The service connection, when one is open."""
        return self._service

    async def search(self, search_filter: Any) -> list[Entry]:
        """
        Up to two entries under C{base} that match C{search_filter} (two
        are enough to know the answer is ambiguous).
        """
        try:
            try:
                return await self._search_on_service(search_filter)
            except _ConnectionGone:
                return await self._search_on_service(search_filter)
        except _ConnectionGone as e:
            raise self._temporary("search", e.__cause__ or e) from None

    async def bind_as_user(self, dn: str, secret: bytes) -> bool:
        """Whether the directory accepts C{secret} for C{dn}."""
        try:
            client = await self._connect()
        except Exception as e:
            raise self._temporary("connect", e) from None
        try:
            await self._bind(client, dn, secret)
        except _REJECTED:
            return False
        except Exception as e:
            raise self._temporary("user bind", e) from None
        finally:
            self._drop(client, unbind=True)
        return True

    async def probe(self) -> str:
        """
        Connect, bind as C{binddn} (when given) and read the C{base} entry,
        on a connection of its own, logging nothing: what C{popgate
        check-config} and start-up ask.

        @raise TemporaryFailure: saying which step failed, in one line.
        """
        settings = self.settings
        where = f"{settings.host}:{settings.port}"
        try:
            client = await self._connect()
        except Exception as e:
            raise TemporaryFailure(f"cannot connect to {where}: {self._reason(e)}") from None
        try:
            if settings.binddn:
                try:
                    await self._bind(client, settings.binddn, settings.bindpw.encode("utf-8"))
                except Exception as e:
                    raise TemporaryFailure(f"{where}: bind as {settings.binddn} failed: "
                                           f"{self._reason(e)}") from None
            try:
                found = await self._search(client, pureldap.LDAPFilter_present("objectClass"),
                                           scope=pureldap.LDAP_SCOPE_baseObject)
            except ldaperrors.LDAPNoSuchObject:
                found = []
            except Exception as e:
                raise TemporaryFailure(f"{where}: reading base {settings.base} failed: "
                                       f"{self._reason(e)}") from None
            if not found:
                who = settings.binddn or "an anonymous bind"
                raise TemporaryFailure(f"{where}: base {settings.base} does not exist "
                                       f"(or {who} may not read it)")
        finally:
            self._drop(client, unbind=True)
        return f"{where}, base {settings.base}"

    def _reason(self, error: BaseException) -> str:
        if isinstance(error, (defer_TimeoutError, CancelledError)):
            return f"no answer within {self.settings.timeout:g}s"
        return f"{type(error).__name__}: {str(error).strip() or 'no reason given'}"

    # -- the service connection --

    async def _search_on_service(self, search_filter: Any) -> list[Entry]:
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
                    await self._bind(client, self.settings.binddn,
                                     self.settings.bindpw.encode("utf-8"))
                except Exception as e:
                    self._drop(client)
                    raise self._temporary("service bind", e) from None
            self._service = client
            return client

    # -- LDAP operations with timeouts --

    async def _timed(self, d: Deferred[_T]) -> _T:
        return await d.addTimeout(self.settings.timeout, self._reactor)

    async def _connect(self) -> LDAPClient:
        settings = self.settings
        endpoint: Any = HostnameEndpoint(self._reactor, settings.host, settings.port,
                                         timeout=settings.connect_timeout)
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
            trust = load_trust_root(self.settings.cafile) if self.settings.cafile else None
            self._tls = ssl.optionsForClientTLS(self.settings.host, trustRoot=trust)
        return self._tls

    async def _bind(self, client: LDAPClient, dn: str, secret: bytes) -> None:
        request = pureldap.LDAPBindRequest(dn=dn, auth=secret)
        response = await self._timed(client.send(request))
        _check_result(response, pureldap.LDAPBindResponse)

    async def _search(self, client: LDAPClient, search_filter: Any,
                      scope: Any = pureldap.LDAP_SCOPE_wholeSubtree) -> list[Entry]:
        entries: list[Entry] = []
        done: Deferred[list[Entry]] = Deferred()

        def on_message(msg: Any) -> bool:
            if isinstance(msg, pureldap.LDAPSearchResultEntry):
                entry = self._entry(msg)
                if entry is not None:
                    entries.append(entry)
                return False
            if isinstance(msg, pureldap.LDAPSearchResultReference):
                return False
            if not isinstance(msg, pureldap.LDAPSearchResultDone):
                done.errback(ldaperrors.LDAPProtocolError(f"unexpected {type(msg).__name__}"))
            elif msg.resultCode in (ldaperrors.Success.resultCode,
                                    ldaperrors.LDAPSizeLimitExceeded.resultCode):
                done.callback(entries)
            else:
                done.errback(ldaperrors.get(msg.resultCode, msg.errorMessage))
            return True

        request = pureldap.LDAPSearchRequest(
            baseObject=self.settings.base,
            scope=scope,
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases,
            sizeLimit=2,
            timeLimit=max(1, int(self.settings.timeout)),
            typesOnly=0,
            filter=search_filter,
            attributes=self._attributes,
        )
        # This Deferred only fails (connection lost); results come to on_message.
        sent = client.send_multiResponse(request, on_message)
        sent.addErrback(lambda f: None if done.called else done.errback(f))
        return await self._timed(done)

    def _entry(self, msg: Any) -> Entry | None:
        """The entry as text; a DN that is not UTF-8 leaves it out, a value drops that value."""
        dn = self._stored.decode(msg.objectName, "the DN", _shown(msg.objectName))
        if dn is None:
            return None
        attributes: dict[str, list[str]] = {}
        for raw_name, raw_values in msg.attributes:
            name = self._stored.decode(raw_name, "an attribute name", dn)
            if name is not None:
                decoded = (self._stored.decode(value, f"attribute {name}", dn)
                           for value in raw_values)
                attributes[name] = [value for value in decoded if value is not None]
        return Entry(dn, attributes)

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
