"""The per-address limit of failed logins, on its own clock (through the real broker, the
refill of one attempt takes seconds: tests/security/test_login.py shows the block itself)."""

from __future__ import annotations

from conveyor.broker.testing import FailureLimiter


def test_an_address_is_blocked_after_its_burst_and_regains_one_attempt_per_refill() -> None:
    limiter = FailureLimiter(burst=3, refill=10.0)
    assert [limiter.failed("a", 0.0) for _ in range(3)] == [False, False, True]
    assert limiter.blocked("a", 9.9)
    assert not limiter.blocked("a", 10.0)
    assert not limiter.blocked("b", 0.0), "another address is not blocked"


def test_knocking_while_blocked_does_not_make_the_wait_longer() -> None:
    # A worker with a stale secret retries every few seconds for hours: the address must be
    # free again a burst's refill after it stops, not after a debt that grew all along.
    limiter = FailureLimiter(burst=10, refill=6.0)
    for attempt in range(1000):
        limiter.failed("a", attempt * 1.5)
    last = 999 * 1.5
    assert not limiter.blocked("a", last + 10 * 6.0)


def test_it_forgets_the_oldest_addresses_past_its_bound() -> None:
    limiter = FailureLimiter(burst=1, refill=60.0, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limiter) == 100
    assert limiter.blocked("10.0.3.231", 0.0), "the newest is remembered"
