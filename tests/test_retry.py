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


def test_a_retry_waits_for_its_token_but_never_past_its_backoff_window() -> None:
    clock = Clock()
    limiter = _retry.RateLimiter(clock=clock)
    limiter.sent()
    limiter.answered(throttled=True)  # 1 request in the window: 0.7/s, a bucket of one token
    assert limiter.rate == pytest.approx(0.7)
    assert limiter.reserve(0.0, 10.0) == 0.0  # the bucket starts full
    assert limiter.reserve(0.0, 10.0) == pytest.approx(1 / 0.7)
    # The next token comes in 2/0.7 s, past a 2 s window: the retry goes at the window's end.
    assert limiter.reserve(0.0, 2.0) == 2.0
    assert limiter.reserve(0.0, 10.0) == pytest.approx(3 / 0.7)  # the one before took a token
    # A backoff pause longer than the token's wait is the wait.
    clock.sleep(10)
    assert limiter.reserve(5.0, 10.0) == 5.0


# --- RetryPolicy.run: one request's attempts ---------------------------------------------------


class Script:
    """``send`` for ``RetryPolicy.run``: raises the scripted errors in turn, then answers."""

    def __init__(self, *errors: t.TransportError, then: object = "answer") -> None:
        self.errors = list(errors)
        self.then = then
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.then


def throttled() -> t.TransportError:
    return t.TransportError(t.THROTTLED, "Rate exceeded", backoff=_retry.THROTTLING_BASE)


def unavailable() -> t.TransportError:
    return t.TransportError(t.SERVICE_ERROR, "ServiceUnavailable", backoff=_retry.TRANSIENT_BASE)


def test_run_retries_what_may_be_retried_and_counts_it() -> None:
    clock = Clock()
    policy = _retry.RetryPolicy(t.Deadline(5, clock=clock), rand=lambda: 0.5, sleep=clock.sleep)
    send = Script(throttled(), unavailable(), throttled())

    assert policy.run("Decrypt", send) == "answer"

    assert send.calls == 4
    assert policy.retries == 3
    # 0.5 x 1 s, 0.5 x 0.05 s x 2, 0.5 x 1 s x 4: one request's pauses, summed.
    assert policy.waited == pytest.approx(0.5 + 0.05 + 2.0)
    assert clock.now == pytest.approx(policy.waited)


def test_run_does_not_retry_an_answer_that_would_repeat() -> None:
    clock = Clock()
    policy = _retry.RetryPolicy(t.Deadline(5, clock=clock), rand=lambda: 0.5, sleep=clock.sleep)
    denied = t.TransportError(t.ACCESS_DENIED, "not authorized")
    send = Script(denied)

    with pytest.raises(t.TransportError) as info:
        policy.run("Decrypt", send)

    assert info.value is denied
    assert (send.calls, policy.retries, clock.now) == (1, 0, 0.0)


def test_once_the_outcome_is_decided_nothing_more_is_retried_and_the_reason_is_kept() -> None:
    clock = Clock()
    deadline = t.Deadline(5, clock=clock)
    policy = _retry.RetryPolicy(deadline, rand=lambda: 0.5, sleep=clock.sleep)
    send = Script(throttled(), throttled(), throttled())
    first = policy.run("Decrypt", Script(throttled()))  # retried while nothing is decided
    assert first == "answer"

    deadline.decide()
    with pytest.raises(t.TransportError) as info:
        policy.run("Decrypt", send)

    assert send.calls == 1
    assert info.value.reason == t.THROTTLED  # its own reason, not the failure that decided it
    assert info.value.detail == (
        "Rate exceeded; not retried after 1 attempt(s): another variable had already failed the start"
    )


def test_a_pause_ends_as_soon_as_the_outcome_is_decided() -> None:
    """Real waiting: a 20 s pause (attempt 5 of a throttled request) ends within moments."""
    import threading
    import time

    deadline = t.Deadline(30)
    # Throttling pauses are drawn from [0, 1], [0, 2], [0, 4], [0, 8] s: the first three
    # tiny, the fourth the whole 8 s.
    draws = iter([0.001, 0.001, 0.001, 1.0])
    policy = _retry.RetryPolicy(deadline, rand=lambda: next(draws))
    send = Script(throttled(), throttled(), throttled(), throttled(), throttled())
    errors: list[t.TransportError] = []

    def run() -> None:
        try:
            policy.run("GetParameters", send)
        except t.TransportError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    while send.calls < 4:
        time.sleep(0.005)
    time.sleep(0.05)  # the fourth pause (8 s) has begun
    started = time.monotonic()
    deadline.decide()
    worker.join(timeout=5)

    assert not worker.is_alive()
    assert time.monotonic() - started < 1.0
    assert send.calls == 4
    assert errors[0].reason == t.THROTTLED and "not retried after 4 attempt(s)" in errors[0].detail


def test_the_limiter_spreads_retries_within_their_windows_and_the_wait_is_counted() -> None:
    clock = Clock()
    deadline = t.Deadline(5, clock=clock)
    limiter = _retry.RateLimiter("kms", clock=clock)
    limiter.sent()
    limiter.answered(throttled=True)  # 0.7 requests a second, one token in the bucket
    limiter.reserve(0.0, 1.0)  # someone else took it
    policy = _retry.RetryPolicy(deadline, rand=lambda: 0.0, sleep=clock.sleep)  # no jitter at all
    send = Script(throttled(), throttled())

    assert policy.run("Decrypt", send, limiter) == "answer"

    # Without the limiter both retries would go at once (zero jitter). With it, the first waits
    # its whole 1 s window (its token is 1/0.7 s away) and the second its token, within 2 s.
    assert send.calls == 3
    assert policy.waited == pytest.approx(clock.now)
    assert 1.0 < clock.now <= 1.0 + 2.0


# --- the process's limiters ----------------------------------------------------------------------


def test_one_limiter_per_service_and_endpoint_for_the_whole_process() -> None:
    a = _retry.limiter("kms", "https://kms.eu-west-1.amazonaws.com")
    assert _retry.limiter("kms", "https://kms.eu-west-1.amazonaws.com") is a
    assert _retry.limiter("ssm", "https://kms.eu-west-1.amazonaws.com") is not a
    assert _retry.limiter("kms", "https://kms.us-east-1.amazonaws.com") is not a
    _retry.forget_limiters()
    assert _retry.limiter("kms", "https://kms.eu-west-1.amazonaws.com") is not a


def test_a_limiter_is_off_again_after_a_quiet_minute() -> None:
    clock = Clock()
    limiter = _retry.RateLimiter("ssm", clock=clock)
    for _ in range(5):
        limiter.sent()
    limiter.answered(throttled=True)
    for _ in range(10):
        limiter.reserve(0.0, 9.0)
    assert limiter.reserve(0.0, 9.0) > 0  # tokens owed: a retry would wait
    clock.sleep(_retry.RateLimiter.QUIET + 1)
    assert limiter.reserve(0.0, 9.0) == 0.0
    assert not limiter.enabled


def test_a_forked_child_starts_with_no_limit_learnt() -> None:
    import os

    limiter = _retry.limiter("ssm", "http://127.0.0.1:1")
    limiter.sent()
    limiter.answered(throttled=True)
    assert limiter.enabled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running anything of pytest's
        fresh = _retry.limiter("ssm", "http://127.0.0.1:1")
        os.write(write, b"fresh" if fresh is not limiter and not fresh.enabled else b"stale")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"fresh"
    assert _retry.limiter("ssm", "http://127.0.0.1:1") is limiter  # the parent keeps its own


# --- SnapStart: copies of one snapshot draw different jitter -------------------------------------

# Restored copies share the snapshot's memory, the random module's state included, and no
# at-fork hook runs (os.fork() would reseed ``random`` in the child, which hides the hazard).
# So each copy here is a new process given one saved state, as a restore gives it, and draws
# its pauses; the interpreter's own generator shows they share a state (so the test could
# fail), the policy's draws differ.
_RESTORED = """
import json, random, sys
from secretboot import _retry, _transport as t

version, internal, gauss = json.loads(sys.stdin.read())
random.setstate((version, tuple(internal), gauss))
policy = _retry.RetryPolicy(t.Deadline(600))
print(json.dumps({
    "policy": [policy.pause(n, 1.0) for n in range(1, 6)],
    "interpreter": [random.random() for _ in range(5)],
}))
"""


def test_copies_restored_from_one_snapshot_draw_different_jitter() -> None:
    import json
    import random
    import subprocess
    import sys

    snapshot = json.dumps(random.Random(7).getstate())

    def restored() -> dict[str, list[float]]:
        done = subprocess.run(
            [sys.executable, "-c", _RESTORED],
            input=snapshot,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        draws: dict[str, list[float]] = json.loads(done.stdout)
        return draws

    first, second = restored(), restored()

    assert first["interpreter"] == second["interpreter"]  # the copies share the interpreter's state
    assert first["policy"] != second["policy"]  # yet back off at different moments
    for copy in (first, second):
        assert all(0 <= pause <= 2 ** (n - 1) for n, pause in enumerate(copy["policy"], 1))
