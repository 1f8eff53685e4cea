"""
Mail location templates: %u %n %d %% expansion, and user names that must
never name a directory outside the mail root.
"""

from __future__ import annotations

import pytest

from popgate.cred.names import normalize_domain, normalize_user
from popgate.cred.userinfo import AvatarId
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


@pytest.mark.parametrize("template, user, path", [
    ("/var/mail/%d/%n", "Bob@Example.ORG", "/var/mail/example.org/Bob"),
    ("/var/mail/%d/%n", "bob@example.org", "/var/mail/example.org/bob"),
    ("/var/mail/%u", "Bob@Example.ORG", "/var/mail/Bob@example.org"),
    ("/var/mail/%n", "Bob@Example.ORG", "/var/mail/Bob"),
    ("/var/mail/%u", "Bob", "/var/mail/Bob"),
    # The last @ separates: only what follows it is the domain.
    ("/var/mail/%d/%n", "A@B@Example.ORG", "/var/mail/example.org/A@B"),
    ("/var/mail/%d/%n", "x@B\u00dcCHER.Example", "/var/mail/b\u00fccher.example/x"),
    ("/var/mail/%d/%n", "x@XN--BCHER-KVA.Example", "/var/mail/xn--bcher-kva.example/x"),
])
def test_the_domain_is_case_insensitive(template: str, user: str, path: str) -> None:
    assert expand(template, user) == path


def test_mixed_case_domains_get_one_mailbox() -> None:
    paths = {expand("/m/%d/%n", f"bob@{d}") for d in ("example.org", "Example.org", "EXAMPLE.ORG")}
    assert paths == {"/m/example.org/bob"}
    assert expand("/m/%d/%n", "Bob@example.org") != expand("/m/%d/%n", "bob@example.org")


@pytest.mark.parametrize("template, user", [
    ("/var/mail/%d/%n", "alice@EX/AMPLE"),
    ("/var/mail/%d/%n", "alice@.EXAMPLE.com"),
    ("/var/mail/%d/%n", "ALICE@"),
])
def test_lower_casing_does_not_let_a_bad_domain_through(template: str, user: str) -> None:
    with pytest.raises(InvalidUserName):
        expand(template, user)


def test_normalize_user_and_domain() -> None:
    assert normalize_domain("Example.ORG") == "example.org"
    # A U-label: Unicode lower case, composed (NFC), as one spelling.
    assert normalize_domain("BU\u0308CHER.example") == "b\u00fccher.example"
    assert normalize_user("Bob@Example.ORG") == "Bob@example.org"
    assert normalize_user("Bob") == "Bob"
    assert normalize_user("Bob@") == "Bob@"
    same = "bob@example.org"
    assert normalize_user(same) is same
    # An avatar id keeps the mail location the user store gave with it.
    avatar = normalize_user(AvatarId("Bob@Example.ORG", "/srv/mail/bob"))
    assert isinstance(avatar, AvatarId)
    assert (avatar, avatar.mail_location) == ("Bob@example.org", "/srv/mail/bob")
