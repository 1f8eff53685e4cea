"""
The POP3S listeners' TLS layer: Twisted's L{TLSMemoryBIOProtocol} with a
write path for big writes (a RETR streams 256 KiB chunks).

Twisted's copies each write into its small-write buffer, hands it to
OpenSSL 16 KiB at a time, and reads the encrypted records back out of the
memory BIO 32 KiB at a time, each step a Python call and a copy.  Here a
write of at least one full record goes to OpenSSL in one C{SSL_write}
(the memory BIO takes every record of it) and comes back in as few reads
as its size needs; smaller writes are gathered as before, and those made
while a read of the client's is handled (the replies to its commands, the
greeting at connect) leave together when it returns, instead of at the
reactor's next turn (one C{callLater} and one turn less per reply).
Bytes, records and their order on the wire are the same: 16 KiB records,
AEAD, as the context says.  L{start_tls} puts the same layer under STLS.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError
from twisted.internet._newtls import _BypassTLS
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
    _AggregateSmallWrites,
)
from twisted.python.failure import Failure
from zope.interface import directlyProvides

#: The smallest write sent on its own: one full TLS record's payload.
DIRECT_WRITE = 16 * 1024
#: How much one read of the memory BIO asks for at least.
_BIO_READ = 32 * 1024


class _ReadGather(_AggregateSmallWrites):
    """Twisted's small-write aggregator, except that while C{reading} it
    only gathers: the read's end flushes (L{PopgateTLSProtocol})."""

    reading = False

    def write(self, data: bytes) -> None:
        if not self.reading:
            super().write(data)
            return
        self._buffer.append(data + b"")  # a copy, as Twisted's: bytearrays change
        self._bufferLeft -= len(data)
        if self._bufferLeft < 0:
            self.flush()


class PopgateTLSProtocol(BufferingTLSTransport):
    """L{BufferingTLSTransport} with big writes passed straight through and
    the replies to a read sent when it returns."""

    _aggregator: Any

    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: Any,
                 _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._aggregator = _ReadGather(self._aggregator._write, factory._clock)
        self.write = self._gathered_write  # type: ignore[method-assign]

    def makeConnection(self, transport: Any) -> None:
        self._gathering(super().makeConnection, transport)  # the greeting

    def dataReceived(self, data: bytes) -> None:
        self._gathering(super().dataReceived, data)

    def _gathering(self, handle: Any, argument: Any) -> None:
        gather = self._aggregator
        if gather.reading:  # re-entered: the outer call flushes
            handle(argument)
            return
        gather.reading = True
        try:
            handle(argument)
        finally:
            gather.reading = False
            if self._aggregator is gather:  # (a lost connection has none)
                gather.flush()

    def _gathered_write(self, data: bytes) -> None:
        if type(data) is bytes and len(data) >= DIRECT_WRITE:
            aggregator = self._aggregator
            aggregator.flush()  # what was gathered goes first
            TLSMemoryBIOProtocol.write(self, data)
        else:
            self._aggregator.write(data)

    def _write(self, bytes: bytes) -> None:  # Twisted names the argument so
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        done = 0
        while done < len(bytes):
            try:
                done += self._tlsConnection.send(view[done:])
            except WantReadError:
                self._bufferedWrite(bytes[done:])
                break
            except Error:
                self._flush_records(done)
                # As Twisted's: the application's connectionLost gets the error.
                self._tlsShutdownFinished(Failure())
                return
        self._flush_records(done)

    def _flush_records(self, payload: int) -> None:
        # Records add 22 bytes (TLS 1.3) to 29 (1.2) per 16 KiB: 1/256 is plenty.
        self._flush(payload + (payload >> 8) + 1024)

    def _flushSendBIO(self) -> None:
        self._flush(_BIO_READ)

    def _flush(self, hint: int) -> None:
        """Everything in the send BIO to the transport."""
        size = max(hint, _BIO_READ)
        transport = self.transport
        assert transport is not None  # connected: the BIO has something to send
        while True:
            try:
                out = self._tlsConnection.bio_read(size)
            except WantReadError:  # nothing (more) there
                return
            transport.write(out)
            if len(out) < size:
                return


class PopgateTLSFactory(TLSMemoryBIOFactory):
    """A L{TLSMemoryBIOFactory} making L{PopgateTLSProtocol}s."""

    protocol = PopgateTLSProtocol


def start_tls(transport: Any, context_factory: Any, normal: bool, bypass: type) -> None:
    """
    STLS: Twisted's C{twisted.internet._newtls.startTLS}, with
    L{PopgateTLSProtocol} as the TLS layer; C{bypass} is the class whose
    methods send the encrypted octets (L{popgate.eager_writes}).
    """
    client = transport._tlsClientDefault if normal else not transport._tlsClientDefault
    # A producer is registered again above the TLS layer, as Twisted's.
    producer, streaming = transport.producer, transport.streamingProducer
    if producer is not None:
        transport.unregisterProducer()
    factory = PopgateTLSFactory(context_factory, client, None,  # type: ignore[arg-type]
                                clock=transport.reactor)  # (no wrapped factory, as Twisted's)
    protocol = factory.protocol(factory, transport.protocol, False)
    transport.protocol = protocol
    transport.getHandle = protocol.getHandle
    transport.getPeerCertificate = protocol.getPeerCertificate
    directlyProvides(transport, ISSLTransport)
    transport.TLS = True
    protocol.makeConnection(_BypassTLS(bypass, transport))
    if producer is not None:
        transport.registerProducer(producer, streaming)
