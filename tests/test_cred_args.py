"""
L{popgate.cred.args}: the C{key=value[,key=value]} strings of the ldap: and
sql: user stores, in memory.
"""

from __future__ import annotations

import pytest

from popgate.cred.args import ArgSpec

SPEC = ArgSpec(
    "demo",
    ("url", "base", "bindpw", "bindpw_file", "timeout", "connect_timeout", "tls"),
    free_text=("base", "bindpw"),
    required=("url",),
)


def test_only_known_keys_split() -> None:
    args = SPEC.parse("url=ldap://h/,base=ou=people,dc=example,dc=org,bindpw=a,b=c,timeout=2")
    assert dict(args) == {
        "url": "ldap://h/",
        "base": "ou=people,dc=example,dc=org",
        "bindpw": "a,b=c",
        "timeout": "2",
    }


def test_longer_keys_are_not_read_as_shorter_ones() -> None:
    args = SPEC.parse("url=u,bindpw_file=/run/pw,connect_timeout=1,timeout=2")
    assert (args["bindpw_file"], args["connect_timeout"], args["timeout"]) == ("/run/pw", "1", "2")
    assert "bindpw" not in args


def test_whitespace_around_keys_and_values_is_ignored() -> None:
    assert dict(SPEC.parse("  url = u ,\tbase = dc=x , tls=yes ")) == {"url": "u", "base": "dc=x", "tls": "yes"}


@pytest.mark.parametrize(
    "argstring, message",
    [
        ("", "demo: url= is required"),
        ("base=dc=x", "demo: url= is required"),
        ("url=", "demo: url= is required"),
        ("host=h,url=u", "demo: unknown key host= (expected one of url=, base="),
        ("url=u,timeout=1,retries=3", "demo: unknown key retries="),
        ("url=u,bogus = 1", "demo: unknown key bogus="),
        ("url=u,url=v", "demo: url= given twice"),
        ("just-a-value", "demo: expected key=value pairs, one of url="),
    ],
)
def test_errors_are_one_line_naming_the_key(argstring: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SPEC.parse(argstring)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_free_text_keeps_what_looks_like_a_key() -> None:
    """In a DN or a password, ',word=' is text: that is why those are free text."""
    assert SPEC.parse("url=u,base=dc=x,bogus=1")["base"] == "dc=x,bogus=1"


def test_conversions() -> None:
    args = SPEC.parse("url=u,timeout=2.5,tls=On")
    assert args.number("timeout", float, 5.0) == 2.5
    assert args.number("connect_timeout", float, 5.0) == 5.0
    assert args.yes_no("tls") is True
    assert args.yes_no("other") is False
    assert args.text("base") is None and args.text("url") == "u"
    with pytest.raises(ValueError, match=r"^demo: timeout= must be a number of seconds, got 'soon'$"):
        SPEC.parse("url=u,timeout=soon").number("timeout", float, 5.0, unit="seconds")
    with pytest.raises(ValueError, match=r"^demo: timeout= must be a number, got '1.5'$"):
        SPEC.parse("url=u,timeout=1.5").number("timeout", int, 1)
    with pytest.raises(ValueError, match=r"^demo: tls= must be yes or no, got 'maybe'$"):
        SPEC.parse("url=u,tls=maybe").yes_no("tls")
