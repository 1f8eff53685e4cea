"""L{popgate.cred.text}: user names and stored values, decoded one way, in memory."""

from __future__ import annotations

import pytest
from twisted.logger import Logger, capturedLogs, formatEvent

from popgate.cred.text import NotText, StoredText, stored_text, user_name


@pytest.mark.parametrize(
    "raw, name",
    [
        (b"Bob@Example.ORG", "Bob@example.org"),
        ("Bob@Example.ORG", "Bob@example.org"),
        ("jos\u00e9", "jos\u00e9"),
        ("jos\u00e9".encode(), "jos\u00e9"),
        (b"\xff\xfebob", None),  # not UTF-8: names nobody
        (b"", None),
        ("", None),
    ],
)
def test_user_name(raw: bytes | str, name: str | None) -> None:
    assert user_name(raw) == name


def test_stored_text() -> None:
    assert stored_text(None) is None
    assert stored_text("x") == "x"
    assert stored_text(b"caf\xc3\xa9") == stored_text(bytearray(b"caf\xc3\xa9")) == "caf\u00e9"
    assert stored_text(memoryview(b"x")) == "x"
    with pytest.raises(NotText, match="not UTF-8"):
        stored_text(b"\xff")
    with pytest.raises(NotText, match="int"):
        stored_text(42)


def test_an_unreadable_value_is_logged_once_per_place_and_treated_as_absent() -> None:
    stored = StoredText(Logger(), "demo")
    with capturedLogs() as events:
        assert stored.decode(b"ok", "the password", "alice") == "ok"
        for _ in range(3):  # a client polling every minute
            assert stored.decode(b"\xff", "the password", "bob") is None
        assert stored.decode(b"\xff", "the mail location", "bob") is None
        assert stored.decode(7, "the password", "carol") is None
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 3
    assert errors[0].startswith("demo: configuration error: the password of 'bob' is not UTF-8")
    assert "the mail location of 'bob'" in errors[1] and "carol" in errors[2]


def test_what_is_remembered_is_bounded() -> None:
    stored = StoredText(Logger(), "demo", limit=2)
    with capturedLogs() as events:
        for user in ("a", "b", "c", "a"):
            stored.decode(b"\xff", "the password", user)
    # 'a' was forgotten when 'c' came: reported again, memory stayed small.
    assert len(events) == 4 and len(stored._reported) <= 2
