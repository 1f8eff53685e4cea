"""Unit tests for popgate.cred.throttle: pure logic on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from popgate.cred.throttle import LoginThrottle


def make(**kw: float) -> tuple[Clock, LoginThrottle]:
    clock = Clock()
    return clock, LoginThrottle(clock, **kw)  # type: ignore[arg-type]


def test_no_penalty_for_unknown_address() -> None:
    _, throttle = make()
    assert throttle.delay_for("192.0.2.1") == 0.0


def test_failures_double_up_to_the_cap() -> None:
    _, throttle = make(base_delay=2.0, max_delay=15.0)
    delays = []
    for _ in range(6):
        throttle.record_failure("192.0.2.1")
        delays.append(throttle.delay_for("192.0.2.1"))
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_success_resets() -> None:
    _, throttle = make()
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    throttle.record_success("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 0.0
    throttle.record_failure("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 2.0


def test_addresses_are_independent() -> None:
    _, throttle = make()
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.delay_for("192.0.2.2") == 0.0
    throttle.record_success("192.0.2.2")
    assert throttle.delay_for("192.0.2.1") == 4.0


def test_entries_expire_after_quiet_period() -> None:
    clock, throttle = make(expire_after=100.0)
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    clock.advance(99)
    assert throttle.delay_for("192.0.2.1") == 4.0
    throttle.record_failure("192.0.2.1")  # refreshes the entry
    clock.advance(99)
    assert throttle.delay_for("192.0.2.1") == 8.0
    clock.advance(1)
    assert throttle.delay_for("192.0.2.1") == 0.0
    assert len(throttle) == 0


def test_expired_entries_are_pruned_on_failure() -> None:
    clock, throttle = make(expire_after=10.0)
    for i in range(50):
        throttle.record_failure(f"192.0.2.{i}")
    clock.advance(10)
    throttle.record_failure("198.51.100.1")
    assert len(throttle) == 1


def test_memory_is_bounded_dropping_the_oldest() -> None:
    clock, throttle = make(max_entries=3)
    for i in range(1, 6):
        throttle.record_failure(f"192.0.2.{i}")
        clock.advance(1)
    assert len(throttle) == 3
    assert throttle.delay_for("192.0.2.1") == 0.0
    assert throttle.delay_for("192.0.2.2") == 0.0
    assert throttle.delay_for("192.0.2.5") == 2.0


def test_refreshing_an_address_protects_it_from_eviction() -> None:
    clock, throttle = make(max_entries=2)
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.2")
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.3")
    assert throttle.delay_for("192.0.2.1") == 4.0
    assert throttle.delay_for("192.0.2.2") == 0.0


def test_ipv6_grouped_by_prefix_and_mapped_ipv4_unified() -> None:
    _, throttle = make()
    throttle.record_failure("2001:db8:1:2::1")
    throttle.record_failure("2001:db8:1:2:ffff::9")
    assert throttle.delay_for("2001:db8:1:2::77") == 4.0
    assert throttle.delay_for("2001:db8:1:3::1") == 0.0
    throttle.record_failure("::ffff:192.0.2.7")
    assert throttle.delay_for("192.0.2.7") == 2.0


def test_non_ip_keys_are_used_verbatim() -> None:
    _, throttle = make()
    throttle.record_failure("/run/popgate.sock")
    assert throttle.delay_for("/run/popgate.sock") == 2.0


def test_zero_base_delay_means_no_penalty() -> None:
    _, throttle = make(base_delay=0.0)
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 0.0


@pytest.mark.parametrize(
    "kw", [{"base_delay": -1.0}, {"max_entries": 0}, {"ipv6_prefix": 129}]
)
def test_bad_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoginThrottle(Clock(), **kw)  # type: ignore[arg-type]
