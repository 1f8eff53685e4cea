"""L{popgate.cred.templates}: %u/%n/%d (and SQL's %(user)s) templates, in memory."""

from __future__ import annotations

import pytest

from popgate.cred.templates import SQL, Template, split_user


def test_parts_of_a_user_name() -> None:
    assert split_user("alice") == ("alice", "")
    assert split_user("alice@example.org") == ("alice", "example.org")
    assert split_user("a@b@example.org") == ("a@b", "example.org")  # the last @


def test_expand_escapes_each_value_not_the_template() -> None:
    template = Template("(|(uid=%n)(mail=%u)(o=%d)(cn=100%%))", "filter")
    assert template.names == ("n", "u", "d")
    assert template.expand("bob@example.org") == "(|(uid=bob)(mail=bob@example.org)(o=example.org)(cn=100%))"
    assert template.expand("a(b)@c", lambda v: v.replace("(", "<").replace(")", ">")) == (
        "(|(uid=a<b>)(mail=a<b>@c)(o=c)(cn=100%))"
    )
    assert template.values("bob") == {"n": "bob", "u": "bob", "d": ""}


def test_render_fills_names_and_spells_the_literal_percent() -> None:
    template = Template("SELECT 1 WHERE u = %(user)s AND d = %(domain)s AND x LIKE 'a%%' OR u = %(user)s", "query", SQL)
    assert template.names == ("user", "domain")
    assert template.render(lambda name: f":{name}") == (
        "SELECT 1 WHERE u = :user AND d = :domain AND x LIKE 'a%' OR u = :user"
    )
    assert template.render(lambda name: "?", percent="%%") == "SELECT 1 WHERE u = ? AND d = ? AND x LIKE 'a%%' OR u = ?"


@pytest.mark.parametrize(
    "text, syntax, message",
    [
        ("(uid=%x)", None, "unknown placeholder %x in what (use %u, %n, %d or %%)"),
        ("/var/mail/%", None, "lone % at offset 10 in what (write %% for a literal %)"),
        ("u = %(name)s", SQL, "unknown placeholder %(name)s in what (use %(user)s, %(localpart)s, %(domain)s or %%)"),
        ("x LIKE 'a%'", SQL, "lone % at offset 9 in what"),
        ("u = %u", SQL, "lone % at offset 4 in what"),
    ],
)
def test_mistakes_are_found_when_parsed(text: str, syntax: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Template(text, "what", syntax) if syntax else Template(text, "what")  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_no_placeholder_is_a_fixed_text() -> None:
    template = Template("/srv/mail/shared", "path")
    assert template.names == () and template.expand("anyone") == "/srv/mail/shared"
