"""L{popgate.cred.timing}: unknown users cost what known ones do, in memory."""

from __future__ import annotations

import pytest
from passlib import hash as passlib_hash
from twisted.cred.error import UnauthorizedLogin

from popgate.cred.schemes import DUMMY_HASH, hash_password
from popgate.cred.timing import TimingEqualiser
from tests.test_schemes import InlineReactor, result_of

BCRYPT = hash_password("pw", "BLF-CRYPT", rounds=4)
SSHA = "{SSHA}" + passlib_hash.ldap_salted_sha1.hash("pw")[6:]


def refuse(equaliser: TimingEqualiser, password: bytes | str = b"pw") -> None:
    with pytest.raises(UnauthorizedLogin):
        result_of(equaliser.refuse(password))


def test_starts_as_bcrypt_in_the_thread_pool() -> None:
    reactor = InlineReactor()
    equaliser = TimingEqualiser(reactor)
    assert equaliser.stand_in == DUMMY_HASH
    refuse(equaliser, "pw")
    assert reactor.pool.calls == ["dummy_verify"]


def test_a_learnt_hash_is_checked_the_way_a_real_one_is() -> None:
    reactor = InlineReactor()
    equaliser = TimingEqualiser(reactor)
    equaliser.learn(BCRYPT)
    refuse(equaliser, b"pw")  # even the right password is refused
    assert reactor.pool.args == [(b"pw", BCRYPT)]
    equaliser.learn(SSHA)
    refuse(equaliser)
    assert equaliser.stand_in == SSHA and len(reactor.pool.calls) == 1  # cheap: inline, as a real SSHA check


def test_clear_text_is_never_kept() -> None:
    equaliser = TimingEqualiser(InlineReactor(), default_scheme="PLAIN")
    equaliser.learn("{PLAIN}secret")
    assert equaliser.stand_in.startswith("{PLAIN}") and "secret" not in equaliser.stand_in
    equaliser.learn("bare-secret")  # clear text under the default scheme
    assert "bare-secret" not in equaliser.stand_in
    refuse(equaliser)


@pytest.mark.parametrize(
    "values, expected",
    [
        (["{PLAIN}a", "", SSHA, BCRYPT], SSHA),  # the first hash
        (["", "{PLAIN}a"], "{PLAIN}"),  # clear text only: a clear-text stand-in
        ([], DUMMY_HASH),
    ],
    # Fixed ids: SSHA is salted afresh at each collection, and pytest-xdist's
    # workers must collect the same names.
    ids=["first-hash", "clear-text-only", "none"],
)
def test_learn_sample(values: list[str], expected: str) -> None:
    equaliser = TimingEqualiser(InlineReactor())
    equaliser.learn(BCRYPT)
    equaliser.learn_sample(values)
    assert equaliser.stand_in.startswith(expected) and "{PLAIN}a" != equaliser.stand_in


def test_an_uncheckable_stand_in_still_refuses() -> None:
    equaliser = TimingEqualiser(InlineReactor())
    equaliser.learn_sample(["{NO-SUCH-SCHEME}x"])
    refuse(equaliser)
