"""The retry policy and the rate limiter, with an injected clock and random source (no I/O)."""

from __future__ import annotations

import pytest

from secretboot import _retry
from secretboot import _transport as t


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999999])
@pytest.mark.parametrize("seconds", [0.5, 2.0, 5.0, 9.0])
def test_no_attempt_starts_that_cannot_finish_and_no_pause_crosses_the_deadline(
    draw: float, seconds: float
) -> None:
    clock = Clock()
    deadline = t.Deadline(seconds, clock=clock)
    policy = _retry.RetryPolicy(deadline, rand=lambda: draw)
    starts: list[float] = []
    attempt = 0
    while policy.may_start():
        starts.append(clock.now)
        attempt += 1
        clock.sleep(_retry.MIN_ATTEMPT)  # each attempt takes what the policy allows for
        pause = policy.pause(attempt, _retry.THROTTLING_BASE)
        if pause is None:
            break
        clock.sleep(pause)
        assert clock.now <= seconds - _retry.MIN_ATTEMPT + 1e-9
        if attempt > 500:
            break
    assert starts and all(start + _retry.MIN_ATTEMPT <= seconds + 1e-9 for start in starts)
    assert clock.now <= seconds + 1e-9
    assert attempt > 3 or seconds <= 2  # the deadline, not a count, ended it


def test_full_jitter_stays_within_zero_and_the_capped_exponential() -> None:
    draws = iter([0.0, 0.5, 0.999, 0.25, 0.75, 1.0 - 1e-12, 0.5])
    policy = _retry.RetryPolicy(t.Deadline(1e6), rand=lambda: next(draws))
    pauses = [policy.pause(n, 1.0) for n in range(1, 8)]
    ceilings = [min(_retry.MAX_BACKOFF, 2.0 ** (n - 1)) for n in range(1, 8)]
    assert pauses == pytest.approx([0.0, 1.0, 0.999 * 4, 2.0, 12.0, 20.0, 10.0])
    for pause, ceiling in zip(pauses, ceilings, strict=True):
        assert pause is not None and 0 <= pause <= ceiling


def test_the_default_source_is_the_operating_systems_and_differs_between_instances() -> None:
    one = _retry.RetryPolicy(t.Deadline(1e6))
    two = _retry.RetryPolicy(t.Deadline(1e6))
    first = [one.pause(5, 1.0) for _ in range(8)]
    second = [two.pause(5, 1.0) for _ in range(8)]
    assert first != second
    assert all(p is not None and 0 <= p <= 16 for p in first + second)
    import random

    # Not the interpreter's shared state: seeding it (as a cloned snapshot would share it) changes nothing.
    random.seed(7)
    a = _retry.system_random()()
    random.seed(7)
    b = _retry.system_random()()
    assert a != b


def test_without_a_deadline_attempts_are_counted() -> None:
    policy = _retry.RetryPolicy(None, rand=lambda: 1.0)
    assert policy.may_start()
    assert [policy.pause(n, 0.05) for n in (1, 2, 3)] == [0.05, 0.1, None]


@pytest.mark.parametrize(
    ("code", "status", "base"),
    [
        ("ThrottlingException", 400, _retry.THROTTLING_BASE),
        ("ServiceUnavailable", 503, _retry.TRANSIENT_BASE),
        ("RequestTimeoutException", 400, _retry.TRANSIENT_BASE),
        ("AccessDeniedException", 400, None),
        ("InvalidCiphertextException", 400, None),
        ("ParameterNotFound", 400, None),
        ("403", 403, None),
    ],
)
def test_only_throttling_and_transient_are_retried(code: str, status: int, base: float | None) -> None:
    assert _retry.base_for(code, status) == base


def test_limiter_is_off_until_throttled() -> None:
    clock = Clock()
    limiter = _retry.RateLimiter(clock=clock)
    for _ in range(50):
        limiter.sent()
        limiter.answered(throttled=False)
        assert limiter.reserve(0.0, 0.0) == 0.0
    assert not limiter.enabled


def test_limiter_rate_drops_over_a_throttling_episode_and_recovers_after() -> None:
    clock = Clock()
    limiter = _retry.RateLimiter(clock=clock)
    for _ in range(10):  # 10 requests a second
        limiter.sent()
        clock.sleep(0.1)
    limiter.answered(throttled=True)
    assert limiter.enabled
    assert limiter.rate == pytest.approx(0.7 * 10)
    rates = [limiter.rate]
    for _ in range(4):  # throttled again and again: each answer to a request sent after the cut
        sent_at = limiter.sent()
        clock.sleep(0.2)
        limiter.answered(throttled=True, sent_at=sent_at)
        rates.append(limiter.rate)
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0]
    assert rates[-1] >= _retry.RateLimiter.MIN_RATE
    # An answer to a request sent before the last cut cuts nothing.
    limiter.answered(throttled=True, sent_at=clock.now - 1.0)
    assert limiter.rate == rates[-1]
    # Successes: back up along the cubic, past the rate of the last cut within seconds.
    low = limiter.rate
    recovered = []
    for _ in range(40):
        clock.sleep(0.25)
        sent_at = limiter.sent()
        limiter.answered(throttled=False, sent_at=sent_at)
        recovered.append(limiter.rate)
    assert recovered == sorted(recovered)
    assert recovered[-1] > low / 0.7


def test_acquire_waits_for_a_token_and_gives_up_at_the_deadline() -> None:
    clock = Clock()
    limiter = _retry.RateLimiter(clock=clock)
    limiter.sent()
    limiter.answered(throttled=True)  # 1 request in the window: 0.7/s, a bucket of one token
    assert limiter.rate == pytest.approx(0.7)
    assert limiter.reserve(0.0, 10.0) == 0.0  # the bucket starts full
    wait = limiter.reserve(0.0, 10.0)
    assert wait == pytest.approx(1 / 0.7)
    # A third would need two tokens' time: not within 2 s; refused without taking one.
    assert limiter.reserve(0.0, 2.0) is None
    assert limiter.reserve(0.0, 3.0) == pytest.approx(2 / 0.7)
    # A backoff pause longer than the token's wait is the wait.
    clock.sleep(100)
    assert limiter.reserve(5.0, 10.0) == 5.0
