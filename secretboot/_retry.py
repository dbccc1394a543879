"""Retries bounded by the deadline, and a per-service adaptive rate limiter.

``RetryPolicy`` decides whether another attempt may start and how long to pause
before it: capped exponential backoff with full jitter, drawn so that no pause
ends later than the deadline less the time an attempt needs (``MIN_ATTEMPT``).
While the deadline leaves room, throttling, 5xx, connection errors and timeouts
are retried; other answers never are. Jitter comes from the operating system
(``random.SystemRandom``), not from the interpreter's random state, which every
process restored from one SnapStart snapshot shares: a restored fleet does not
retry in lockstep.

``RateLimiter`` is our own small take on botocore's ``adaptive`` retry mode: a
token bucket per service, off until the first throttling answer, whose rate
drops to 0.7 times the rate this process was sending at on each throttling
answer and climbs back along a cubic curve (as TCP CUBIC does) on the others.
It bounds how hard many parallel retries of one process press on a throttled
API. A request that cannot get a token before the deadline is not sent.

Clock, sleep and the random source are injected, so the arithmetic is tested
without waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from secretboot import _transport as t

# botocore's standard retry mode: the error codes it retries.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})

# Backoff bases (seconds): throttling needs the API to recover, a 5xx or a lost
# connection usually does not. The pause before retry n is drawn uniformly from
# [0, min(MAX_BACKOFF, base * 2 ** (n - 1))].
THROTTLING_BASE = 1.0
TRANSIENT_BASE = 0.05
MAX_BACKOFF = 20.0
# The least time an attempt needs (a request to AWS in the same region, on a new
# TLS connection): an attempt is not started, and no pause is drawn, that would
# leave less than this before the deadline.
MIN_ATTEMPT = 0.05


def base_for(code: str, status: int) -> float | None:
    """The backoff base for an AWS error answer, or ``None`` if it is not retried."""
    if code in THROTTLING_CODES:
        return THROTTLING_BASE
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
        return TRANSIENT_BASE
    return None


def system_random() -> Callable[[], float]:
    """Uniform draws in [0, 1) from the operating system (``os.urandom``), never from a cloned state."""
    import random  # only once a retry is due: it costs a few milliseconds on the cold-start path

    return random.SystemRandom().random


class RetryPolicy:
    """When to try again: bounded by the deadline, or without one by ``max_attempts``.

    ``rand`` returns uniform draws in [0, 1); by default the operating system's.
    """

    __slots__ = ("_cap", "_deadline", "_lock", "_max_attempts", "_min_attempt", "_rand")

    def __init__(
        self,
        deadline: t.Deadline | None,
        *,
        rand: Callable[[], float] | None = None,
        max_attempts: int = t.TOTAL_MAX_ATTEMPTS,
        cap: float = MAX_BACKOFF,
        min_attempt: float = MIN_ATTEMPT,
    ) -> None:
        self._deadline = deadline
        self._rand = rand
        self._max_attempts = max_attempts
        self._cap = cap
        self._min_attempt = min_attempt
        self._lock = threading.Lock()

    def room(self) -> float | None:
        """Seconds one may still wait before starting an attempt (``None``: no deadline)."""
        if self._deadline is None:
            return None
        return self._deadline.left() - self._min_attempt

    def may_start(self) -> bool:
        """Whether the deadline leaves room to start an attempt now (``pause`` counts attempts)."""
        return self._deadline is None or self._deadline.left() >= self._min_attempt

    def pause(self, attempt: int, base: float) -> float | None:
        """The pause after failed attempt number ``attempt``, or ``None`` if no retry fits.

        Full jitter: uniform in [0, min(cap, base * 2 ** (attempt - 1))], and never past
        the deadline less ``min_attempt``.
        """
        ceiling = min(self._cap, base * 2.0 ** (attempt - 1))
        room = self.room()
        if room is None:
            if attempt >= self._max_attempts:
                return None
        elif room <= 0:
            return None
        else:
            ceiling = min(ceiling, room)
        return self._draw() * ceiling

    def _draw(self) -> float:
        with self._lock:
            if self._rand is None:
                self._rand = system_random()
            rand = self._rand
        return rand()


class RateLimiter:
    """A token bucket for one service, enabled by the first throttling answer.

    ``sent()`` before each request; ``answered(throttled=...)`` after each answer;
    ``reserve(...)`` before each request once enabled. Thread-safe.
    """

    BETA = 0.7  # the rate after a throttling answer, as a share of the rate being sent at
    SCALE = 0.4  # the cubic curve's steepness (botocore's constant)
    MIN_RATE = 0.5  # requests per second: the floor
    WINDOW = 1.0  # seconds over which the send rate is measured

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self.enabled = False
        self.rate = 0.0  # tokens per second, once enabled
        self._capacity = 1.0
        self._tokens = 0.0
        self._stamp = clock()
        self._peak = 0.0  # the rate sent at when last throttled
        self._recovery = 0.0  # seconds after a throttling answer until the rate is back at the peak
        self._throttled_at = 0.0

    def sent(self) -> float:
        """Count one request being sent, for the measured send rate; returns when, for ``answered``."""
        with self._lock:
            now = self._clock()
            self._sent.append(now)
            self._forget(now)
            return now

    def measured(self) -> float:
        """Requests per second sent over the last ``WINDOW`` seconds."""
        with self._lock:
            self._forget(self._clock())
            return len(self._sent) / self.WINDOW

    def answered(self, *, throttled: bool, sent_at: float | None = None) -> None:
        """Adjust the rate to an answer: down on throttling, back up (cubic) otherwise.

        A throttling answer to a request sent (``sent_at``) before the last cut says
        nothing about the rate since: it cuts nothing (TCP cuts once per round trip,
        too), so one burst of throttled parallel requests is one cut, not one each.
        """
        with self._lock:
            now = self._clock()
            self._forget(now)
            measured = len(self._sent) / self.WINDOW
            if throttled and self.enabled and sent_at is not None and sent_at < self._throttled_at:
                return
            if throttled:
                # The rate allowed, once there is one: the rate measured while requests
                # wait for tokens is lower, and cutting that would spiral down.
                current = self.rate if self.enabled else measured
                self._peak = current
                self._recovery = (current * (1 - self.BETA) / self.SCALE) ** (1 / 3)
                self._throttled_at = now
                new_rate = current * self.BETA
            elif self.enabled:
                since = now - self._throttled_at
                new_rate = self.SCALE * (since - self._recovery) ** 3 + self._peak
            else:
                return
            self._set_rate(new_rate, now, enable=throttled and not self.enabled)

    def reserve(self, not_before: float, latest: float | None) -> float | None:
        """Take a token for a request to be sent ``not_before`` seconds from now.

        Returns the seconds to wait before sending (at least ``not_before``), or ``None``
        without taking anything if the token would come later than ``latest`` seconds.
        """
        with self._lock:
            if not self.enabled:
                return not_before
            now = self._clock()
            self._refill(now)
            wait = max(not_before, (1 - self._tokens) / self.rate if self._tokens < 1 else 0.0)
            if latest is not None and wait > latest:
                return None
            self._tokens -= 1  # below zero: tokens promised to requests already waiting
            return wait

    def _forget(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.WINDOW:
            self._sent.popleft()

    def _refill(self, now: float) -> None:
        if self.enabled:
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _set_rate(self, rate: float, now: float, *, enable: bool) -> None:
        self._refill(now)  # what accrued so far accrued at the old rate
        self.rate = max(rate, self.MIN_RATE)
        self._capacity = max(1.0, self.rate)
        if enable:
            self.enabled = True
            self._tokens = self._capacity  # start full: the retries already back off
        else:
            self._tokens = min(self._tokens, self._capacity)
