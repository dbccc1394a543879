"""Retries bounded by the deadline, and a per-service adaptive rate limiter.

``RetryPolicy.run`` makes one request's attempts for either transport. It pauses
with capped exponential backoff and full jitter, drawn so that no pause ends
later than the deadline less the time an attempt needs (``MIN_ATTEMPT``). While
the deadline leaves room, throttling, 5xx, connection errors and timeouts are
retried; other answers never are. Once the outcome of the resolution is decided
(``Deadline.decide``: a variable failed for good, so the start fails closed
anyway), pauses end and nothing more is retried. Jitter comes from the operating
system (``random.SystemRandom``), not from the interpreter's random state, which
every process restored from one SnapStart snapshot shares: a restored fleet does
not retry in lockstep.

``RateLimiter`` is our own small take on botocore's ``adaptive`` retry mode: a
token bucket per service and endpoint, one per process (``limiter()``), off
until the first throttling answer, whose rate drops to 0.7 times the rate this
process was sending at on each throttling answer and climbs back along a cubic
curve (as TCP CUBIC does) on the others. It bounds how hard many parallel
retries of one process press on a throttled API: a retry waits for its token,
but only within its own backoff window, so the limiter moves retries later and
never fails a start that backoff alone would have saved.

Clock, sleep and the random source are injected, so the arithmetic is tested
without waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

from secretboot import _transport as t

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

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

    One per resolution, shared by its requests. ``rand`` returns uniform draws in
    [0, 1), by default the operating system's; ``sleep`` (for tests) replaces the
    pauses, which otherwise end early once the deadline's outcome is decided.
    """

    __slots__ = (
        "_cap",
        "_deadline",
        "_lock",
        "_max_attempts",
        "_min_attempt",
        "_rand",
        "_sleep",
        "retries",
        "waited",
    )

    def __init__(
        self,
        deadline: t.Deadline | None,
        *,
        rand: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        max_attempts: int = t.TOTAL_MAX_ATTEMPTS,
        cap: float = MAX_BACKOFF,
        min_attempt: float = MIN_ATTEMPT,
    ) -> None:
        self._deadline = deadline
        self._rand = rand
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._cap = cap
        self._min_attempt = min_attempt
        self._lock = threading.Lock()
        self.retries = 0  # attempts after a request's first, over every request
        self.waited = 0.0  # the longest time one request spent paused, in seconds

    def room(self) -> float | None:
        """Seconds one may still wait before starting an attempt (``None``: no deadline)."""
        if self._deadline is None:
            return None
        return self._deadline.left() - self._min_attempt

    def may_start(self) -> bool:
        """Whether the deadline leaves room to start an attempt now (``pause`` counts attempts)."""
        return self._deadline is None or self._deadline.left() >= self._min_attempt

    def window(self, attempt: int, base: float) -> float | None:
        """The longest pause after failed attempt number ``attempt``, or ``None`` if no retry fits.

        ``min(cap, base * 2 ** (attempt - 1))``, and never past the deadline less ``min_attempt``.
        """
        ceiling = min(self._cap, base * 2.0 ** (attempt - 1))
        room = self.room()
        if room is None:
            return None if attempt >= self._max_attempts else ceiling
        return min(ceiling, room) if room > 0 else None

    def pause(self, attempt: int, base: float) -> float | None:
        """The pause after failed attempt number ``attempt`` (full jitter within ``window``)."""
        window = self.window(attempt, base)
        return None if window is None else self._draw() * window

    def run(self, operation: str, send: Callable[[], T], limiter: RateLimiter | None = None) -> T:
        """``send()`` until it answers, a ``TransportError`` that is not retried, or no time is left.

        ``send`` makes one attempt; its ``TransportError.backoff`` says whether and how
        to retry. Out of time, the error is a ``Timeout`` saying what the last attempt met;
        once the outcome is decided, the last error, saying it was not retried.
        """
        error: t.TransportError | None = None
        attempt = 0
        pause = waited = 0.0
        try:
            while True:
                if pause > 0:
                    decided, slept = self._wait(pause)
                    waited += slept
                    if decided and error is not None:  # only retries pause: error is set
                        raise not_retried(attempt, error)
                if not self.may_start():
                    raise out_of_time(operation, attempt, error)
                attempt += 1
                if attempt > 1:
                    with self._lock:
                        self.retries += 1
                sent_at = limiter.sent() if limiter is not None else 0.0
                try:
                    answer = send()
                except t.TransportError as exc:
                    error = exc
                else:
                    if limiter is not None:
                        limiter.answered(throttled=False, sent_at=sent_at)
                    return answer
                if limiter is not None:
                    limiter.answered(throttled=error.backoff == THROTTLING_BASE, sent_at=sent_at)
                if error.backoff is None:
                    raise error
                window = self.window(attempt, error.backoff)
                if window is None:
                    if self._deadline is None:
                        raise error  # without a deadline: the attempts are counted, and spent
                    raise out_of_time(operation, attempt, error)  # no room left for another attempt
                if self._deadline is not None and self._deadline.decided:
                    raise not_retried(attempt, error)
                pause = self._draw() * window
                if limiter is not None:  # a token, within the same window
                    pause = limiter.reserve(pause, window)
        finally:
            with self._lock:
                self.waited = max(self.waited, waited)

    def _wait(self, seconds: float) -> tuple[bool, float]:
        """Pause; returns whether the outcome was decided meanwhile, and the time paused."""
        if self._sleep is not None:
            self._sleep(seconds)
            return self._deadline is not None and self._deadline.decided, seconds
        started = time.monotonic()
        if self._deadline is not None:
            decided = self._deadline.wait(seconds)
        else:
            time.sleep(seconds)
            decided = False
        return decided, time.monotonic() - started

    def _draw(self) -> float:
        with self._lock:
            if self._rand is None:
                self._rand = system_random()
            rand = self._rand
        return rand()


def out_of_time(operation: str, attempts: int, last: t.TransportError | None) -> t.TransportError:
    """The deadline ran out: say what for, how many attempts were made and what the last one met."""
    if last is None:
        reason = ""
    elif last.reason == t.TIMEOUT:
        reason = "; the last one got no answer in time"
    elif last.reason == t.CONNECTION_ERROR and last.detail:  # names the host:port it could not reach
        reason = f"; the last one met {last.reason} ({last.detail})"
    else:
        reason = f"; the last one met {last.reason}"
    return t.TransportError(
        t.TIMEOUT, f"SECRETBOOT_TIMEOUT ran out for {operation} after {attempts} attempt(s){reason}"
    )


def not_retried(attempts: int, last: t.TransportError) -> t.TransportError:
    """``last``, noting that retries stopped because the start had already failed."""
    note = f"not retried after {attempts} attempt(s): another variable had already failed the start"
    return t.TransportError(last.reason, f"{last.detail}; {note}" if last.detail else note)


class RateLimiter:
    """A token bucket for one service, enabled by the first throttling answer.

    ``sent()`` before each request; ``answered(throttled=...)`` after each answer;
    ``reserve(...)`` before each request once enabled. Thread-safe.
    """

    BETA = 0.7  # the rate after a throttling answer, as a share of the rate being sent at
    SCALE = 0.4  # the cubic curve's steepness (botocore's constant)
    MIN_RATE = 0.5  # requests per second: the floor
    WINDOW = 1.0  # seconds over which the send rate is measured
    # Seconds without a throttling answer after which the limiter is off again: a
    # process lives for hours, and a refresh should not be paced by an episode long past.
    QUIET = 60.0

    def __init__(self, service: str = "", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
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

    def reserve(self, not_before: float, latest: float) -> float:
        """Take a token for a retry due ``not_before`` seconds from now, waiting at most ``latest``.

        Returns the seconds to wait before sending: until the token comes, but no sooner
        than ``not_before`` and no later than ``latest`` (the top of the retry's backoff
        window). A retry is never refused: the limiter moves it later within the window
        that backoff alone allows, so it cannot fail a start that backoff would have saved.
        """
        with self._lock:
            now = self._clock()
            if self.enabled and now - self._throttled_at > self.QUIET:
                self.enabled = False
            if not self.enabled:
                return not_before
            self._refill(now)
            for_token = (1 - self._tokens) / self.rate if self._tokens < 1 else 0.0
            self._tokens -= 1  # below zero: tokens promised to requests already waiting
            return max(not_before, min(for_token, latest))

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


# One limiter per service and endpoint for the whole process: the quota it paces
# is the account's, whatever resolution (a start, a refresh) the requests serve.
_limiters: dict[tuple[str, str], RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter(service: str, endpoint: str) -> RateLimiter:
    """This process's rate limiter for ``service`` at ``endpoint``."""
    with _limiters_lock:
        found = _limiters.get((service, endpoint))
        if found is None:
            found = _limiters[service, endpoint] = RateLimiter(service)
        return found


def forget_limiters() -> None:
    """Start every limiter afresh: in a forked child, or after a SnapStart restore.

    A restored instance must not be paced by throttling its snapshot's process met.
    """
    global _limiters_lock
    _limiters_lock = threading.Lock()  # a fork can copy it held by another thread
    _limiters.clear()


os.register_at_fork(after_in_child=forget_limiters)
