"""The refresh policy: the max-age timer, backoff, the stale bound, per-name pacing, hooks.

Pure machinery, driven by ``_lifecycle`` through the callables it is given (what to run,
what to do when values go stale, how to describe a failure) and imported only when a
refresh is asked for (``max_age``, ``on_refresh``, ``refresh_now``). Nothing here
imports another secretboot module: the clock, the sleep and the random source are
injected, so the timing is deterministic under test::

    refresher = Refresher(run, max_age=300, max_stale=None, on_stale=..., describe=...,
                          logger=logger, clock=fake_clock, sleep=fake_sleep, random=lambda: 0.5)
    refresher.step()  # does what is due now; returns the seconds until the next wake
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import logging

# Backoff after a failed refresh: full jitter over min(max_age, BACKOFF_BASE * 2**(n-1)).
BACKOFF_BASE = 1.0
# A refresh is due at a random point in the last JITTER share of max_age, so processes
# booted together (gunicorn workers forked from one master) do not refresh in lockstep.
JITTER = 0.1


def system_random() -> float:
    """A uniform float in [0, 1) from the OS: never cloned by ``fork``, no ``random`` import."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def backoff(failures: int, cap: float, random: Callable[[], float], base: float = BACKOFF_BASE) -> float:
    """Seconds before retry number ``failures`` (1, 2, ...): full jitter, capped at ``cap``."""
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 62))
    return random() * ceiling


def due_names(
    names: Iterable[str], attempted: Mapping[str, float], now: float, interval: float
) -> tuple[frozenset[str], frozenset[str]]:
    """(names that may be asked again now, names asked less than ``interval`` seconds ago)."""
    due: set[str] = set()
    skipped: set[str] = set()
    for name in names:
        last = attempted.get(name)
        (skipped if last is not None and now - last < interval else due).add(name)
    return frozenset(due), frozenset(skipped)


class Hooks:
    """The ``on_refresh`` callbacks. Registration and calls are thread-safe; the list is
    copied on write, so a callback may register or unregister others while being called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: tuple[_Entry, ...] = ()

    def add(self, callback: Callable[..., object]) -> Callable[[], None]:
        if not callable(callback):
            raise TypeError("on_refresh() takes a callable")
        # A token per registration: the same function registered twice is called twice,
        # and each unregister removes its own registration once.
        entry = _Entry(callback)
        with self._lock:
            self._callbacks = (*self._callbacks, entry)

        def unregister() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not entry)

        return unregister

    def __len__(self) -> int:
        return len(self._callbacks)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork

    def fire(self, keyring: object, changed: frozenset[str], logger: logging.Logger) -> None:
        """Call every callback with ``(keyring, changed)``. A callback that raises is logged by
        its exception's type only (the message may hold a value); the others still run."""
        for entry in self._callbacks:
            try:
                entry.callback(keyring, changed)
            except Exception as exc:
                kind = type(exc).__name__
                del exc  # nothing of it travels further
                logger.warning(
                    "an on_refresh callback (%s) raised %s; the refresh and the other callbacks went on",
                    _name(entry.callback),
                    kind,
                )


class _Entry:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[..., object]) -> None:
        self.callback = callback


def _name(callback: Callable[..., object]) -> str:
    module = getattr(callback, "__module__", None) or "?"
    return f"{module}.{getattr(callback, '__qualname__', type(callback).__qualname__)}"


class Refresher:
    """Refreshes every ``max_age`` seconds on its own daemon thread ("secretboot-refresh").

    ``run()`` resolves everything again and swaps it in; it returns the changed names or the
    error. After a failure the keyring stays as it was: one WARNING per failure streak (from
    ``describe(error)``: names and reasons), retries with capped exponential backoff and full
    jitter. With ``max_stale``, once no refresh has succeeded for ``max_age + max_stale``
    seconds, ``on_stale()`` is called once per streak (reads then fail closed); the next
    success serves again. ``succeeded()`` tells it about a full resolution made elsewhere
    (``bootstrap(refresh=True)``, ``refresh_now()`` of every name, a SnapStart restore).
    """

    def __init__(
        self,
        run: Callable[[Refresher], frozenset[str] | BaseException],
        *,
        max_age: float,
        max_stale: float | None,
        on_stale: Callable[[Refresher], None],
        describe: Callable[[BaseException], str],
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        random: Callable[[], float] = system_random,
    ) -> None:
        self.max_age = max_age
        self.max_stale = max_stale
        self._run = run
        self._on_stale = on_stale
        self._describe = describe
        self._logger = logger
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.stopped = False
        self.failures = 0  # in the current streak
        self.stale = False
        self.last_success = clock()
        self.due = self._schedule(self.last_success)

    # -- what the timer decides ---------------------------------------------------------

    def _schedule(self, since: float) -> float:
        return since + self.max_age * (1.0 - JITTER * self._random())

    @property
    def stale_at(self) -> float | None:
        """When reads fail closed if no refresh succeeds first (``None``: never)."""
        if self.max_stale is None:
            return None
        return self.last_success + self.max_age + self.max_stale

    def past_stale(self, now: float | None = None) -> bool:
        stale_at = self.stale_at
        return stale_at is not None and (self._clock() if now is None else now) >= stale_at

    def succeeded(self, now: float | None = None) -> None:
        """A full resolution succeeded (here or elsewhere): the values are fresh again."""
        now = self._clock() if now is None else now
        with self._lock:
            failures, self.failures = self.failures, 0
            self.stale = False
            self.last_success = now
            self.due = self._schedule(now)
        if failures:
            self._logger.info("refreshed after %s", _many(failures, "failed attempt", "failed attempts"))
        self._wake.set()

    def step(self) -> float:
        """Refresh if due; mark stale if past the bound; return the seconds until the next wake."""
        if self.stopped:
            return 0.0
        now = self._clock()
        if now >= self.due:
            result = self._attempt()
            now = self._clock()
            if isinstance(result, BaseException):
                self._failed(result, now)
            else:
                self.succeeded(now)
        self._check_stale(now)
        with self._lock:
            wake = self.due
            stale_at = self.stale_at
            if stale_at is not None and not self.stale:
                wake = min(wake, stale_at)
        return max(0.0, wake - now)

    def _attempt(self) -> frozenset[str] | BaseException:
        try:
            return self._run(self)
        except Exception as exc:  # a bug: the thread lives on, the exception goes no further
            return _Bug(type(exc).__name__)

    def _failed(self, error: BaseException, now: float) -> None:
        with self._lock:
            self.failures += 1
            first = self.failures == 1
            delay = backoff(self.failures, self.max_age, self._random)
            self.due = now + delay
            age = now - self.last_success
        if first:
            stale_at = self.stale_at
            bound = (
                f"reads fail in {max(0.0, stale_at - now):.0f} s (SECRETBOOT_MAX_STALE)"
                if stale_at is not None
                else "served until a refresh succeeds (SECRETBOOT_MAX_STALE is off)"
            )
            problem = str(error) if isinstance(error, _Bug) else self._describe(error)
            self._logger.warning(
                "could not refresh %s; keeping the values resolved %.0f s ago, %s; retrying with backoff",
                problem,
                age,
                bound,
            )

    def _check_stale(self, now: float) -> None:
        with self._lock:
            if self.stale or not self.past_stale(now):
                return
            self.stale = True
        self._on_stale(self)

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread (once; again after ``stop()`` only through a new Refresher)."""
        with self._lock:
            if self._thread is not None or self.stopped:
                return
            self._thread = threading.Thread(target=self._loop, name="secretboot-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread at its next wake (a refresh in flight finishes; its result is the
        caller's to ignore)."""
        self.stopped = True
        self._wake.set()

    def _loop(self) -> None:
        while not self.stopped:
            delay = self.step()
            if self.stopped:
                return
            if self._sleep is not None:
                self._sleep(delay)
            else:
                self._wake.wait(delay)
                self._wake.clear()

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's thread is gone and its lock may be held. Fresh ones,
        and a new thread at once (a gunicorn worker keeps refreshing from its first moment)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if not self.stopped:
            self.start()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


class _Bug(Exception):
    """A refresh that crashed inside secretboot: only the exception's type is kept."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"everything (an unexpected {kind} inside secretboot: a bug, please report it)")


def changed_names(old: Mapping[str, str], new: Mapping[str, str]) -> frozenset[str]:
    """Names added, removed, or whose value differs (compared, never shown)."""
    return frozenset(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))


def _many(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"
