"""Unit tests for popgate.cred.cache on a fake clock and a fake checker."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from popgate.cred.cache import CachingChecker
from popgate.cred.userinfo import UserInfo
from popgate.errors import TemporaryFailure
from popgate.interfaces import IUserLookup
from popgate.pop3.apop import APOPCredentials


@implementer(ICredentialsChecker, IUserLookup)
class FakeChecker:
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self) -> None:
        self.users = {b"alice": b"secret"}
        self.calls = 0
        self.down = False

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        self.calls += 1
        if self.down:
            return defer.fail(TemporaryFailure("db down"))
        stored = self.users.get(credentials.username)
        if stored is not None and credentials.checkPassword(stored):
            return defer.succeed(credentials.username.decode())
        return defer.fail(UnauthorizedLogin())

    def lookup_user(self, name: str) -> defer.Deferred[Any]:
        return defer.succeed(UserInfo(name) if name.encode() in self.users else None)


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred did not fire"
    return out[0]


def login(checker: CachingChecker, user: bytes, password: bytes) -> Any:
    return result(checker.requestAvatarId(UsernamePassword(user, password)))


def make(**kw: Any) -> tuple[Clock, FakeChecker, CachingChecker]:
    clock = Clock()
    fake = FakeChecker()
    return clock, fake, CachingChecker(fake, clock=clock, **kw)


def test_positive_cache_hit_within_ttl() -> None:
    clock, fake, cache = make(positive_ttl=60)
    assert login(cache, b"alice", b"secret") == "alice"
    clock.advance(59)
    assert login(cache, b"alice", b"secret") == "alice"
    assert fake.calls == 1
    clock.advance(1)
    assert login(cache, b"alice", b"secret") == "alice"
    assert fake.calls == 2


def test_password_change_takes_effect_after_ttl() -> None:
    clock, fake, cache = make(positive_ttl=60, negative_ttl=0)
    assert login(cache, b"alice", b"secret") == "alice"
    fake.users[b"alice"] = b"new"
    assert login(cache, b"alice", b"secret") == "alice"  # still cached
    assert login(cache, b"alice", b"new") == "alice"  # new password: miss
    clock.advance(60)
    assert login(cache, b"alice", b"secret").check(UnauthorizedLogin)


def test_negative_cache() -> None:
    clock, fake, cache = make(negative_ttl=5)
    assert login(cache, b"alice", b"wrong").check(UnauthorizedLogin)
    assert login(cache, b"alice", b"wrong").check(UnauthorizedLogin)
    assert fake.calls == 1
    # A different password is a different key.
    assert login(cache, b"alice", b"secret") == "alice"
    assert fake.calls == 2
    clock.advance(5)
    assert login(cache, b"alice", b"wrong").check(UnauthorizedLogin)
    assert fake.calls == 3


def test_users_do_not_share_entries() -> None:
    _, fake, cache = make()
    fake.users[b"bob"] = b"secret"
    assert login(cache, b"alice", b"secret") == "alice"
    assert login(cache, b"bob", b"secret") == "bob"
    assert login(cache, b"carol", b"secret").check(UnauthorizedLogin)
    assert fake.calls == 3


def test_temporary_failure_is_never_cached() -> None:
    _, fake, cache = make()
    fake.down = True
    assert login(cache, b"alice", b"secret").check(TemporaryFailure)
    fake.down = False
    assert login(cache, b"alice", b"secret") == "alice"
    assert fake.calls == 2


def test_synchronous_exception_is_not_cached() -> None:
    _, fake, cache = make()

    def broken(credentials: Any) -> Any:
        fake.calls += 1
        raise RuntimeError("bug")

    fake.requestAvatarId = broken  # type: ignore[method-assign]
    assert login(cache, b"alice", b"secret").check(RuntimeError)
    assert login(cache, b"alice", b"secret").check(RuntimeError)
    assert fake.calls == 2


@pytest.mark.parametrize("kw", [{"positive_ttl": 0, "negative_ttl": 0}, {"positive_ttl": 0}])
def test_zero_ttl_disables(kw: dict[str, float]) -> None:
    _, fake, cache = make(**kw)
    login(cache, b"alice", b"secret")
    login(cache, b"alice", b"secret")
    assert fake.calls == 2
    assert len(cache) == 0


def test_zero_negative_ttl_disables_negative_only() -> None:
    _, fake, cache = make(negative_ttl=0)
    login(cache, b"alice", b"wrong")
    login(cache, b"alice", b"wrong")
    assert fake.calls == 2
    login(cache, b"alice", b"secret")
    login(cache, b"alice", b"secret")
    assert fake.calls == 3


def test_bounded_lru() -> None:
    _, fake, cache = make(max_entries=2)
    for name in (b"u1", b"u2", b"u3"):
        fake.users[name] = b"pw"
    login(cache, b"u1", b"pw")
    login(cache, b"u2", b"pw")
    login(cache, b"u1", b"pw")  # hit: u1 becomes most recent
    login(cache, b"u3", b"pw")  # evicts u2
    assert len(cache) == 2
    calls = fake.calls
    login(cache, b"u1", b"pw")
    assert fake.calls == calls
    login(cache, b"u2", b"pw")
    assert fake.calls == calls + 1


def test_plaintext_is_not_stored() -> None:
    _, _, cache = make()
    login(cache, b"alice", b"secret")
    login(cache, b"alice", b"wrong-guess")
    for key, value in cache._entries.items():
        assert b"secret" not in repr((key, value)).encode()
        assert b"wrong-guess" not in repr((key, value)).encode()
        assert len(key[2]) == 32


def test_salt_differs_between_instances() -> None:
    _, _, one = make()
    _, _, two = make()
    creds = UsernamePassword(b"alice", b"secret")
    assert one._key(creds) != two._key(creds)


def test_hashed_credentials_pass_through_uncached() -> None:
    _, fake, cache = make()
    challenge = b"<1.2@example.org>"
    creds = APOPCredentials(challenge, b"alice", hashlib.md5(challenge + b"secret").hexdigest().encode())
    assert result(cache.requestAvatarId(creds)) == "alice"
    assert result(cache.requestAvatarId(creds)) == "alice"
    assert fake.calls == 2
    assert len(cache) == 0


def test_interfaces_and_lookup_forwarded() -> None:
    _, fake, cache = make()
    assert ICredentialsChecker.providedBy(cache)
    assert IUserLookup.providedBy(cache)
    assert cache.credentialInterfaces == fake.credentialInterfaces
    assert result(cache.lookup_user("alice")) == UserInfo("alice")
    assert result(cache.lookup_user("nobody")) is None


def test_no_lookup_when_wrapped_has_none() -> None:
    @implementer(ICredentialsChecker)
    class Plain:
        credentialInterfaces = ()

    assert not IUserLookup.providedBy(CachingChecker(Plain(), clock=Clock()))


@pytest.mark.parametrize("kw", [{"positive_ttl": -1}, {"max_entries": 0}])
def test_bad_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CachingChecker(FakeChecker(), clock=Clock(), **kw)


@implementer(ICredentialsChecker)
class Counting:
    """Counts the logins that reach the wrapped checker."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.credentialInterfaces = wrapped.credentialInterfaces
        self.asked: list[bytes] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        self.asked.append(credentials.username)
        return self.wrapped.requestAvatarId(credentials)


def test_case_variants_neither_bypass_nor_poison_the_cache(tmp_path: Any) -> None:
    """
    A case-sensitive store (htpasswd) with two users that differ only in
    the case of the local part, and the same password: a domain case
    variant is the same user and hits the entry; a local-part variant is
    always asked of the store and gets its own answer.
    """
    from popgate.cred.htpasswd import HtpasswdChecker
    from tests.test_schemes import InlineReactor

    sha1 = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="  # "password"
    path = tmp_path / "users"
    path.write_text(f"Bob@example.org:{sha1}\nbob@example.org:{sha1}\n")
    store = Counting(HtpasswdChecker(str(path), InlineReactor()))
    cache = CachingChecker(store, clock=Clock(), negative_ttl=10)

    assert login(cache, b"Bob@Example.ORG", b"password") == "Bob@example.org"
    assert login(cache, b"Bob@example.org", b"password") == "Bob@example.org"
    assert login(cache, b"Bob@EXAMPLE.org", b"password") == "Bob@example.org"
    assert store.asked == [b"Bob@Example.ORG"]
    # Not Bob's entry: the store says who bob is.
    assert login(cache, b"bob@example.org", b"password") == "bob@example.org"
    assert login(cache, b"BOB@example.org", b"password").check(UnauthorizedLogin)
    assert store.asked[1:] == [b"bob@example.org", b"BOB@example.org"]
    # BOB's cached refusal refuses only BOB (and its domain variants).
    assert login(cache, b"BOB@Example.org", b"password").check(UnauthorizedLogin)
    assert login(cache, b"Bob@example.org", b"password") == "Bob@example.org"
    assert login(cache, b"bob@EXAMPLE.ORG", b"password") == "bob@example.org"
    assert len(store.asked) == 3


def test_undecodable_names_keep_their_own_key() -> None:
    from popgate.cred.cache import _name_key

    assert _name_key(b"Bob@Example.ORG") == _name_key("Bob@example.org") == "Bob@example.org"
    # No store can find such a name; it never shares a text name's entry.
    assert _name_key(b"\xffBob@Example.ORG") == b"\xffBob@Example.ORG"
