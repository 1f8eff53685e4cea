"""
The few HTTPS requests the validators make (a JWKS, RFC 7662
introspection), with Twisted's Agent on the server's reactor: bounded in
time and in size, so a slow or hostile identity provider cannot stall
logins or fill memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from popgate import errors

__all__ = ["MAX_BODY", "HTTPClient", "https_url"]

#: The largest response body read, in octets (a JWKS or an introspection
#: answer is a few kilobytes).
MAX_BODY = 256 * 1024


def https_url(url: str, key: str, error: Any) -> str:
    """C{url} if it is C{https://}; tokens and client secrets never go in clear."""
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise error(f"{key}= must be an https:// URL")
    return url


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_DONE = Failure(ResponseDone())


class _Collect(Protocol):
    """Reads a body of at most C{limit} octets."""

    def __init__(self, limit: int, done: defer.Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(errors.TemporaryFailure("response body too large"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _trust(ca_file: str | None) -> Any:
    """The roots to trust: C{ca_file}'s certificates, or the system's."""
    if not ca_file:
        return ssl.platformTrust()
    with open(ca_file, "rb") as f:
        data = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in b]
    if not blocks:
        raise ValueError(f"{ca_file}: no PEM certificate")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


class HTTPClient:
    """
    HTTPS requests on C{reactor}, each abandoned after C{timeout} seconds.

    @param ca_file: PEM roots to trust instead of the system's (read now,
        at start-up).
    """

    def __init__(self, reactor: Any, timeout: float = 5.0, ca_file: str | None = None,
                 agent: Any = None) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.agent = agent if agent is not None else Agent(
            reactor, contextFactory=BrowserLikePolicyForHTTPS(_trust(ca_file)),
            connectTimeout=timeout)

    def request(self, method: bytes, url: str, headers: dict[bytes, list[bytes]] | None = None,
                body: bytes | None = None) -> defer.Deferred[tuple[int, bytes]]:
        """
        The status code and body; fails with L{errors.TemporaryFailure}
        for a timeout, a connection or TLS failure, or a body too large.
        """
        d = defer.Deferred.fromCoroutine(self._request(method, url, headers or {}, body))
        d.addTimeout(self.timeout, self.reactor)

        def failed(failure: Failure) -> Failure:
            if failure.check(errors.TemporaryFailure):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                return Failure(errors.TemporaryFailure(f"no answer in {self.timeout:g} s"))
            return Failure(errors.TemporaryFailure(failure.getErrorMessage()[:200]))

        return d.addErrback(failed)

    async def _request(self, method: bytes, url: str, headers: dict[bytes, list[bytes]],
                       body: bytes | None) -> tuple[int, bytes]:
        headers = {b"User-Agent": [b"popgate"], **headers}
        response = await self.agent.request(method, url.encode("ascii"), Headers(headers),
                                            _Body(body) if body is not None else None)
        if response.length is not None and isinstance(response.length, int) \
                and response.length > MAX_BODY:
            response.deliverBody(Protocol())  # discarded
            raise errors.TemporaryFailure("response body too large")
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Collect(MAX_BODY, done))
        data = await done
        return response.code, data
