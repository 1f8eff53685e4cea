"""
The wire rules (popgate.wire): the size every store reports is the size of
what the encoder sends, whatever the chunk edges, and what delivery stores
is served back as it was received.
"""

from __future__ import annotations

import io
import re
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from popgate import wire
from popgate.pop3.encoder import encode_message
from popgate.wire import WireSizer, to_crlf, to_stored, wire_size

ALPHABET = [b"a", b".", b"\r", b"\n", b"\r\n", b"\x00", b"\xff"]
biased = st.lists(st.sampled_from(ALPHABET), max_size=80).map(b"".join)
messages = st.one_of(biased, st.binary(max_size=200))
cuts = st.lists(st.integers(0, 300), max_size=12)


def chunked(message: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted({p % (len(message) + 1) for p in points}), len(message)]
    return [message[a:b] for a, b in pairwise(edges)]


def unstuffed_body(reply: bytes, message: bytes) -> bytes:
    """The octets LIST counts: the RETR reply without its dot-stuffing,
    its terminator, and the CRLF it adds to a last line that has none."""
    assert reply.endswith(b".\r\n")
    body = reply[:-3]
    if body.startswith(b".."):
        body = body[1:]
    body = body.replace(b"\r\n..", b"\r\n.")
    if message and not message.endswith(b"\n"):
        assert body.endswith(b"\r\n")
        body = body[:-2]
    return body


def sized(chunks: list[bytes]) -> int:
    sizer = WireSizer()
    for chunk in chunks:
        sizer.add(chunk)
    return sizer.size


def test_examples() -> None:
    assert wire_size(b"a\nb\n") == 6
    assert wire_size(b"a\r\nb\r\n") == 6
    assert wire_size(b"a\rb") == 3  # a bare CR is not a line end
    assert wire_size(b"a\r\r\n") == 4
    assert sized([b"a\r", b"\n"]) == 3  # one CRLF, split
    assert sized([b"a\r", b"", b"\n"]) == 3
    assert sized([b"\r", b"\r", b"\n"]) == 3
    assert to_crlf(b"a\rb\nc\r\n") == b"a\rb\r\nc\r\n"


@settings(max_examples=500, deadline=None)
@given(messages, cuts)
def test_sizer_is_the_size_the_encoder_sends(message: bytes, points: list[int]) -> None:
    chunks = chunked(message, points)
    body = unstuffed_body(encode_message(chunks), message)
    assert sized(chunks) == wire_size(message) == len(body) == len(to_crlf(message))
    assert body == to_crlf(message)


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(1, 7))
def test_measure_reads_a_stream(message: bytes, chunk: int) -> None:
    original = wire._READ_CHUNK
    wire._READ_CHUNK = chunk
    try:
        assert wire.measure(io.BytesIO(message).read) == wire_size(message)
    finally:
        wire._READ_CHUNK = original


@settings(max_examples=300, deadline=None)
@given(biased)
def test_a_delivered_message_is_served_as_received(message: bytes) -> None:
    # What LMTP receives: every line ends with CRLF (a bare LF cannot be
    # sent back as it came, so it is not part of the promise).
    received = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    stored = to_stored(received)
    assert to_crlf(stored) == received
    assert wire_size(stored) == len(received)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_to_crlf_is_the_reference_conversion(data: bytes) -> None:
    """Every LF not after a CR becomes CRLF, whichever shortcut to_crlf
    takes (LF only, already CRLF, mixed)."""
    reference = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    assert to_crlf(data) == reference
    assert to_crlf(reference) == reference  # already CRLF: unchanged
