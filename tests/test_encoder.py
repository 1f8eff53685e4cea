"""
The RETR/TOP encoder: CRLF normalisation, dot-stuffing and the TOP limit,
the same whatever the chunk sizes (RFC 1939 sections 3, 7 and 11).
"""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popgate.pop3.encoder import MessageEncoder, WireEncoder, encode_message
from popgate.wire import wire_size


def retr(message: bytes, *, chunks: int | None = None) -> bytes:
    if chunks:
        return encode_message([message[i:i + chunks] for i in range(0, len(message), chunks)])
    return encode_message([message])


def top(message: bytes, k: int, *, chunks: int | None = None) -> bytes:
    if chunks:
        return encode_message([message[i:i + chunks] for i in range(0, len(message), chunks)], k)
    return encode_message([message], k)


# -- RETR: line ends


@pytest.mark.parametrize("message, wire", [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"\n\n", b"\r\n\r\n.\r\n"),
    (b"a\r\n\nb\n", b"a\r\n\r\nb\r\n.\r\n"),
])
def test_line_ends_become_crlf(message: bytes, wire: bytes) -> None:
    assert retr(message) == wire
    assert retr(message, chunks=1) == wire


def test_bare_cr_is_kept() -> None:
    # Dovecot sends a bare CR as is; only LF is a line end.
    assert retr(b"a\rb\n") == b"a\rb\r\n.\r\n"
    assert retr(b"a\r\r\nb\n") == b"a\r\r\nb\r\n.\r\n"
    assert retr(b"a\r\r\nb\n", chunks=1) == b"a\r\r\nb\r\n.\r\n"


def test_crlf_split_across_chunks_is_not_doubled() -> None:
    assert encode_message([b"a\r", b"\nb\r", b"\n"]) == b"a\r\nb\r\n.\r\n"
    assert encode_message([b"a\r", b"\r", b"\n"]) == b"a\r\r\n.\r\n"


def test_trailing_cr_at_end_of_message() -> None:
    assert retr(b"a\r") == b"a\r\r\n.\r\n"
    assert encode_message([b"a", b"\r"]) == b"a\r\r\n.\r\n"


# -- RETR: dot-stuffing


def test_first_line_starting_with_dot_is_stuffed() -> None:
    assert retr(b".hidden\nb\n") == b"..hidden\r\nb\r\n.\r\n"


def test_lone_dot_line_is_stuffed() -> None:
    assert retr(b"a\n.\nb\n") == b"a\r\n..\r\nb\r\n.\r\n"
    assert retr(b".\n") == b"..\r\n.\r\n"
    assert retr(b".") == b"..\r\n.\r\n"


def test_double_dot_line_gets_a_third() -> None:
    assert retr(b"a\n..\n...x\n") == b"a\r\n...\r\n....x\r\n.\r\n"


def test_dot_after_bare_cr_is_not_a_line_start() -> None:
    assert retr(b"a\r.b\n") == b"a\r.b\r\n.\r\n"


def test_dot_at_chunk_edge_is_stuffed() -> None:
    assert encode_message([b"a\n", b".b\n"]) == b"a\r\n..b\r\n.\r\n"
    assert encode_message([b"a\r", b"\n", b".", b"\n"]) == b"a\r\n..\r\n.\r\n"
    assert encode_message([b"", b".", b""]) == b"..\r\n.\r\n"


def test_dot_lines_in_mixed_line_ends_are_stuffed() -> None:
    """The stuffing searches CRLF-normalised data for CR LF "." (every LF
    there follows a CR): lines after bare LFs, after CRLFs kept from a
    CRLF-stored message, after a CR CR LF, and one right after a chunk's
    held-back CR all get their dot."""
    assert retr(b"a\n.b\r\n.c\r\r\n.d\n") == b"a\r\n..b\r\n..c\r\r\n..d\r\n.\r\n"
    assert encode_message([b"a\r", b"\n.b\n"]) == b"a\r\n..b\r\n.\r\n"
    assert encode_message([b"a\n", b"\n.", b"\n"]) == b"a\r\n\r\n..\r\n.\r\n"


def test_dot_inside_a_line_is_not_stuffed() -> None:
    assert retr(b"a.b\n a.\n") == b"a.b\r\n a.\r\n.\r\n"


# -- RETR: odd messages


def test_no_final_newline_gets_one_before_the_terminator() -> None:
    assert retr(b"a\nb") == b"a\r\nb\r\n.\r\n"
    assert retr(b"a\nb", chunks=1) == b"a\r\nb\r\n.\r\n"


def test_empty_message() -> None:
    assert retr(b"") == b".\r\n"
    assert encode_message([]) == b".\r\n"
    assert encode_message([b"", b""]) == b".\r\n"


def test_eight_bit_and_nul_bytes_pass_through() -> None:
    message = b"Subject: \xe9t\xe9\n\nbody\x00with nul\xff\n"
    assert retr(message) == b"Subject: \xe9t\xe9\r\n\r\nbody\x00with nul\xff\r\n.\r\n"


def test_large_message_in_many_chunks() -> None:
    message = b"".join(b"line %d\n.dot %d\n" % (i, i) for i in range(5000))
    assert retr(message, chunks=777) == retr(message)
    assert retr(message, chunks=777).count(b"\r\n..dot ") == 5000


def test_encode_after_finish_of_top_is_ignored() -> None:
    encoder = MessageEncoder(0)
    assert encoder.encode(b"H: v\n\nbody\n") == b"H: v\r\n\r\n"
    assert encoder.done
    assert encoder.encode(b"more\n") == b""
    assert encoder.finish() == b".\r\n"


# -- TOP

MESSAGE = b"From: a\nSubject: s\n\nline 1\nline 2\n.line 3\n"


def test_top_zero_sends_headers_and_blank_line() -> None:
    assert top(MESSAGE, 0) == b"From: a\r\nSubject: s\r\n\r\n.\r\n"


def test_top_one() -> None:
    assert top(MESSAGE, 1) == b"From: a\r\nSubject: s\r\n\r\nline 1\r\n.\r\n"


def test_top_body_lines_are_dot_stuffed() -> None:
    assert top(MESSAGE, 3).endswith(b"line 2\r\n..line 3\r\n.\r\n")


def test_top_more_lines_than_the_body_sends_everything() -> None:
    assert top(MESSAGE, 50) == retr(MESSAGE)
    assert top(MESSAGE, 10 ** 18) == retr(MESSAGE)


def test_top_without_blank_line_sends_the_whole_message() -> None:
    message = b"From: a\nSubject: no body"
    assert top(message, 0) == retr(message)
    assert top(message, 3) == retr(message)


def test_top_of_a_message_starting_with_a_blank_line() -> None:
    message = b"\nbody 1\nbody 2\n"
    assert top(message, 0) == b"\r\n.\r\n"
    assert top(message, 1) == b"\r\nbody 1\r\n.\r\n"
    assert top(message, 1, chunks=1) == b"\r\nbody 1\r\n.\r\n"


def test_top_with_crlf_storage() -> None:
    message = MESSAGE.replace(b"\n", b"\r\n")
    assert top(message, 1) == top(MESSAGE, 1)


def test_top_last_body_line_without_newline() -> None:
    assert top(b"H: v\n\nonly", 1) == b"H: v\r\n\r\nonly\r\n.\r\n"
    assert top(b"H: v\n\nonly", 0) == b"H: v\r\n\r\n.\r\n"


def test_top_blank_line_split_exactly_at_chunk_edges() -> None:
    expected = top(MESSAGE, 1)
    edge = MESSAGE.index(b"\n\n")
    for cut in range(edge - 2, edge + 4):
        assert encode_message([MESSAGE[:cut], MESSAGE[cut:]], 1) == expected, cut
    crlf = MESSAGE.replace(b"\n", b"\r\n")
    edge = crlf.index(b"\r\n\r\n")
    for cut in range(edge - 1, edge + 6):
        assert encode_message([crlf[:cut], crlf[cut:]], 1) == expected, cut
        # ... and with every byte its own chunk around the edge.
        chunks = [crlf[:edge - 1]] + [crlf[i:i + 1] for i in range(edge - 1, edge + 6)] + [crlf[edge + 6:]]
        assert encode_message(chunks, 1) == expected


def test_top_header_line_with_only_a_bare_cr_is_not_the_blank_line() -> None:
    message = b"H: v\n\r\nX: w\n\nbody\n"
    # "\r\n" stored is a blank line: the header block ends there.
    assert top(message, 0) == b"H: v\r\n\r\n.\r\n"
    message = b"H: v\n\r\rX: w\n\nbody\n"
    assert top(message, 0) == b"H: v\r\n\r\rX: w\r\n\r\n.\r\n"


# -- properties

ALPHABET = [b"a", b".", b"\r", b"\n", b"\x00", b"\xff"]
messages = st.lists(st.sampled_from(ALPHABET), max_size=60).map(b"".join)


def normalise(message: bytes) -> bytes:
    """Reference: every LF without a CR before it becomes CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", message)


def stuff(data: bytes) -> bytes:
    return re.sub(rb"(\A|\n)\.", rb"\1..", data)


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


def reference_top(message: bytes, k: int) -> bytes:
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", normalise(message))
    if b"\r\n" in lines:
        end = lines.index(b"\r\n") + 1 + k
        lines = lines[:end]
    return b"".join(lines)


def frame(data: bytes) -> bytes:
    if data and not data.endswith(b"\n"):
        data += b"\r\n"
    return stuff(data) + b".\r\n"


def chunked(message: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(message) + 1) for c in cuts})
    edges = [0, *points, len(message)]
    return [message[a:b] for a, b in pairwise(edges)]


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(0, 100), max_size=12))
def test_retr_is_independent_of_chunking(message: bytes, cuts: list[int]) -> None:
    whole = encode_message([message])
    assert encode_message(chunked(message, cuts)) == whole
    assert whole == frame(normalise(message))


@settings(max_examples=400, deadline=None)
@given(messages)
def test_retr_unstuffed_is_the_normalised_message_of_wire_size(message: bytes) -> None:
    wire = encode_message([message])
    body = unstuff(wire)
    normalised = normalise(message)
    assert len(normalised) == wire_size(message)
    # A message not ending in LF gets the CRLF that ends the reply's last
    # line (as Dovecot does); the size LIST reports does not count it.
    if message and not message.endswith(b"\n"):
        assert body == normalised + b"\r\n"
    else:
        assert body == normalised
    # Only the terminator is a lone "." line.
    assert wire.split(b"\r\n").index(b".") == len(wire.split(b"\r\n")) - 2


@settings(max_examples=400, deadline=None)
@given(messages, st.integers(0, 6), st.lists(st.integers(0, 100), max_size=12))
def test_top_is_independent_of_chunking(message: bytes, k: int, cuts: list[int]) -> None:
    whole = encode_message([message], k)
    assert encode_message(chunked(message, cuts), k) == whole
    assert whole == frame(reference_top(message, k))


@settings(max_examples=200, deadline=None)
@given(messages)
def test_top_with_many_lines_equals_retr(message: bytes) -> None:
    assert encode_message([message], 10 ** 18) == encode_message([message])


# -- a source already in wire form (a proxied RETR or TOP)


@pytest.mark.parametrize("chunks, sent", [
    ([b"..\r\n", b"a\r\n"], b"..\r\na\r\n.\r\n"),  # passed on as they are: no second stuffing
    ([], b".\r\n"),  # an empty message
    ([b"a\nb\r\n"], b"a\nb\r\n.\r\n"),  # a bare LF is the source's business
    ([b"x\r", b"\n"], b"x\r\n.\r\n"),
    ([b"x\r\n", b"\r"], b"x\r\n\r\r\n.\r\n"),  # no final CRLF: one is added before the "."
    ([b"x"], b"x\r\n.\r\n"),
    ([b"ab", b"c", b"\r", b"\n"], b"abc\r\n.\r\n"),
])
def test_wire_encoder_passes_chunks_on_and_ends_the_reply(chunks: list[bytes], sent: bytes) -> None:
    encoder = WireEncoder()
    out = [encoder.encode(chunk) for chunk in chunks]
    assert all(got is chunk for got, chunk in zip(out, chunks, strict=True))
    assert not encoder.done
    assert b"".join(out) + encoder.finish() == sent
