"""
Mail location templates: %u %n %d %% expansion, and user names that must
never name a directory outside the mail root.
"""

from __future__ import annotations

import pytest

from popgate.errors import InvalidUserName, PermanentFailure
from popgate.stores.mailpath import check_component, check_template, expand, split_user


@pytest.mark.parametrize("template, user, path", [
    ("/var/mail/%u", "alice", "/var/mail/alice"),
    ("/var/mail/%u", "alice@example.com", "/var/mail/alice@example.com"),
    ("/var/mail/%d/%n", "alice@example.com", "/var/mail/example.com/alice"),
    ("/var/mail/%n/Maildir", "alice", "/var/mail/alice/Maildir"),
    ("/var/mail/%n", "alice@example.com", "/var/mail/alice"),
    ("/srv/100%%/%n", "bob", "/srv/100%/bob"),
    ("/srv/%%n/%n", "bob", "/srv/%n/bob"),
    ("/srv/%n.%d", "bob@ex.org", "/srv/bob.ex.org"),
    ("/srv/%u", "caf\u00e9", "/srv/caf\u00e9"),
    ("/srv/%u", "a b", "/srv/a b"),
    ("/srv/%u", "x..y", "/srv/x..y"),
    ("/srv/%u", "@", "/srv/@"),
    ("/srv/static", "whoever", "/srv/static"),
    # Values are not expanded again.
    ("/srv/%u", "%n", "/srv/%n"),
    ("/srv/%d/%n", "%d@%n", "/srv/%n/%d"),
])
def test_expand(template: str, user: str, path: str) -> None:
    assert expand(template, user) == path


def test_split_user() -> None:
    assert split_user("alice") == ("alice", "")
    assert split_user("alice@example.com") == ("alice", "example.com")
    assert split_user("@example.com") == ("", "example.com")
    assert split_user("alice@") == ("alice", "")
    # A domain has no "@": the last one separates.
    assert split_user("a@b@example.com") == ("a@b", "example.com")


@pytest.mark.parametrize("template, user", [
    ("/var/mail/%u", "../x"),
    ("/var/mail/%u", ".."),
    ("/var/mail/%u", "."),
    ("/var/mail/%u", "a/b"),
    ("/var/mail/%u", "/etc"),
    ("/var/mail/%u", "a\\b"),
    ("/var/mail/%u", ""),
    ("/var/mail/%u", ".hidden"),
    ("/var/mail/%u", "x\x00y"),
    ("/var/mail/%u", "x\ny"),
    ("/var/mail/%u", "x\x7fy"),
    ("/var/mail/%u", "x" * 256),
    ("/var/mail/%n", "@example.com"),
    ("/var/mail/%n", "../x@example.com"),
    ("/var/mail/%d/%n", "alice"),
    ("/var/mail/%d/%n", "alice@"),
    ("/var/mail/%d/%n", "@"),
    ("/var/mail/%d/%n", "alice@.."),
    ("/var/mail/%d/%n", "alice@../etc"),
    ("/var/mail/%d/%n", "alice@.example.com"),
    ("/var/mail/%d/%n", "alice@ex/ample"),
    ("/var/mail/%d/%n", ".alice@example.com"),
    ("/var/mail/%d/%n", "..@example.com"),
])
def test_refused_user_names(template: str, user: str) -> None:
    with pytest.raises(InvalidUserName):
        expand(template, user)


def test_invalid_user_name_is_a_permanent_failure() -> None:
    # The protocol answers it with [SYS/PERM]; the name is never a path.
    assert issubclass(InvalidUserName, PermanentFailure)


def test_dot_dot_in_the_template_itself_is_refused() -> None:
    with pytest.raises(InvalidUserName):
        expand("/var/mail/../%u", "alice")


def test_component_length_limit() -> None:
    assert check_component("x" * 255, "user name") == "x" * 255
    with pytest.raises(InvalidUserName):
        check_component("\u00e9" * 128, "user name")  # 256 octets in UTF-8


@pytest.mark.parametrize("template", ["/var/mail/%u", "/var/mail/%d/%n", "/m/%%", "/static"])
def test_check_template_accepts(template: str) -> None:
    assert check_template(template) == template


@pytest.mark.parametrize("template", ["", "/var/mail/%x", "/var/mail/%U", "/var/mail/%N/%d"])
def test_check_template_refuses(template: str) -> None:
    with pytest.raises(ValueError):
        check_template(template)


def test_unknown_placeholder_at_expansion() -> None:
    with pytest.raises(ValueError):
        expand("/var/mail/%x", "alice")
