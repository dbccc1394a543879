"""The refresh lifecycle's contract, without AWS: an injected clock, sleep and random source.

``_refresh`` alone (timer, backoff, stale bound, pacing, hooks), then ``_lifecycle`` over a
fake resolver (``secretboot._resolve.resolve`` replaced): what a refresh swaps in, when
readers wait (never on a resolution), what reset and a SnapStart drop do to one in flight.
"""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import secretboot
from secretboot import _lifecycle, _snapstart
from secretboot._errors import BootstrapError, Failure
from secretboot._keyring import Keyring, StaleError
from secretboot._outcome import Outcome
from secretboot._reference import Reference
from secretboot._refresh import Hooks, Refresher, backoff, due_names

ROOT = Path(__file__).resolve().parent.parent
CANARY = "CANARY-7f3a9c-refresh-value"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refresher(
    clock: Clock,
    results: list[frozenset[str] | BaseException],
    *,
    max_age: float = 60.0,
    max_stale: float | None = None,
    random: float = 0.0,
    logger: logging.Logger | None = None,
) -> tuple[Refresher, list[str]]:
    events: list[str] = []

    def run(_: Refresher) -> frozenset[str] | BaseException:
        events.append(f"run@{clock.now:g}")
        return results.pop(0)

    def on_stale(_: Refresher) -> None:
        events.append(f"stale@{clock.now:g}")

    refresher = Refresher(
        run,
        max_age=max_age,
        max_stale=max_stale,
        on_stale=on_stale,
        describe=lambda error: (
            ", ".join(f"{f.variable} ({f.reason})" for f in error.failures)
            if isinstance(error, BootstrapError)
            else type(error).__name__
        ),
        logger=logger or logging.getLogger("secretboot"),
        clock=clock,
        random=lambda: random,
    )
    return refresher, events


def _denied(*names: str) -> BootstrapError:
    return BootstrapError(Failure(n, "ssm", f"/app/{n.lower()}", "AccessDenied", "denied") for n in names)


# -- timing ---------------------------------------------------------------------------------


def test_nothing_runs_before_max_age_and_one_refresh_runs_at_it() -> None:
    clock = Clock()
    refresher, events = _refresher(clock, [frozenset({"A"})])
    assert refresher.step() == 60.0 and events == []
    clock.now += 59.9
    assert refresher.step() == pytest.approx(0.1) and events == []
    clock.now += 0.1
    assert refresher.step() == 60.0  # the next one a whole max_age after this success
    assert events == ["run@1060"]


def test_jitter_refreshes_within_the_last_tenth_of_max_age_never_later() -> None:
    for draw, expected in ((0.0, 100.0), (0.5, 95.0), (0.999, 90.01)):
        refresher, _ = _refresher(Clock(), [], max_age=100.0, random=draw)
        assert refresher.due - refresher.last_success == pytest.approx(expected)


def test_a_success_elsewhere_moves_the_timer() -> None:
    clock = Clock()
    refresher, events = _refresher(clock, [])
    clock.now += 50
    refresher.succeeded()  # bootstrap(refresh=True), refresh_now() of every name, a restore
    clock.now += 15
    assert refresher.step() == pytest.approx(45.0) and events == []


# -- failures, backoff, stale bound -----------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "cap", "expected"),
    [(1, 60, 1.0), (2, 60, 2.0), (3, 60, 4.0), (6, 60, 32.0), (7, 60, 60.0), (50, 60, 60.0), (3, 3, 3.0)],
)
def test_backoff_doubles_from_1_s_capped_at_max_age(failures: int, cap: float, expected: float) -> None:
    assert backoff(failures, cap, lambda: 1.0) == expected
    assert backoff(failures, cap, lambda: 0.25) == expected / 4  # full jitter: uniform below the ceiling


def test_a_failure_streak_retries_with_backoff_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    clock = Clock()
    denied = _denied("DB_PASSWORD", "API_TOKEN")
    refresher, events = _refresher(clock, [denied, denied, denied, frozenset({"DB_PASSWORD"})], random=1.0)
    clock.now += 60
    waits = []
    for _ in range(4):
        waits.append(refresher.step())
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, pytest.approx(54.0)]  # 60 * (1 - 0.1 * 1.0) after the success
    assert events == ["run@1060", "run@1061", "run@1063", "run@1067"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "API_TOKEN (AccessDenied), DB_PASSWORD (AccessDenied)" in warnings[0].getMessage()
    assert "SECRETBOOT_MAX_STALE is off" in warnings[0].getMessage()
    assert "refreshed after 3 failed attempts" in caplog.text
    # A new streak warns again.
    refresher._run = lambda _: denied
    clock.now = refresher.due
    refresher.step()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_without_max_stale_stale_values_are_served_forever() -> None:
    clock = Clock()
    refresher, events = _refresher(clock, [_denied("A")] * 200, random=1.0)
    for _ in range(200):
        clock.now += refresher.step()
    assert clock.now > 1000 + 60 * 150
    assert not [e for e in events if e.startswith("stale")] and not refresher.stale


def test_past_max_age_plus_max_stale_reads_fail_once_and_a_success_serves_again() -> None:
    clock = Clock()
    results: list[frozenset[str] | BaseException] = [_denied("A")] * 50 + [frozenset({"A"})]
    refresher, events = _refresher(clock, results, max_age=60, max_stale=30, random=1.0)
    assert refresher.stale_at == 1090
    while True:
        wait = refresher.step()
        if refresher.stale:
            break
        clock.now += wait
        assert clock.now <= 1090  # woken at the bound itself, never after it
    assert clock.now == 1090 and refresher.past_stale()
    assert [e for e in events if e.startswith("stale")] == ["stale@1090"]
    while results:
        clock.now += refresher.step()
    last_run = max(float(e.split("@")[1]) for e in events if e.startswith("run"))
    assert not refresher.stale and refresher.last_success == last_run
    assert refresher.stale_at == last_run + 90 and not refresher.past_stale()
    assert [e for e in events if e.startswith("stale")] == ["stale@1090"]  # once per streak


def test_a_bug_in_a_refresh_is_a_failure_named_by_its_type_only(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    def run(_: Refresher) -> frozenset[str]:
        raise ValueError(CANARY)

    refresher = Refresher(
        run,
        max_age=60,
        max_stale=None,
        on_stale=lambda _: None,
        describe=str,
        logger=logging.getLogger("secretboot"),
        clock=clock,
        random=lambda: 0.5,
    )
    clock.now += 60
    assert refresher.step() == 0.5 and refresher.failures == 1
    assert "ValueError" in caplog.text and CANARY not in caplog.text


def test_the_thread_sleeps_what_step_says_and_stops() -> None:
    clock = Clock()
    slept: list[float] = []
    ran = threading.Event()

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 3:
            ran.set()
            refresher.stop()

    refresher = Refresher(
        lambda _: frozenset(),
        max_age=10,
        max_stale=None,
        on_stale=lambda _: None,
        describe=str,
        logger=logging.getLogger("secretboot"),
        clock=clock,
        sleep=sleep,
        random=lambda: 0.0,
    )
    refresher.start()
    assert ran.wait(5)
    assert refresher.thread is not None and refresher.thread.name == "secretboot-refresh"
    refresher.thread.join(5)
    assert not refresher.thread.is_alive() and slept == [10.0, 10.0, 10.0]


# -- pacing ---------------------------------------------------------------------------------


def test_due_names_skips_what_was_asked_within_the_interval() -> None:
    attempted = {"A": 100.0, "B": 95.0}
    assert due_names(["A", "B", "C"], attempted, 105.0, 10.0) == ({"B", "C"}, {"A"})
    assert due_names(["A", "B"], attempted, 104.0, 10.0) == (frozenset(), {"A", "B"})
    assert due_names(["A", "B"], attempted, 110.0, 10.0)[0] == frozenset({"A", "B"})  # at the interval: due
    assert due_names(["A"], attempted, 100.0, 0.0)[0] == frozenset({"A"})  # 0 turns pacing off


# -- hooks ----------------------------------------------------------------------------------


def test_hooks_run_in_order_a_failing_one_is_logged_by_type_and_unregister_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks()
    calls: list[tuple[str, frozenset[str]]] = []

    def bad(keyring: object, changed: frozenset[str]) -> None:
        raise RuntimeError(CANARY)

    first = hooks.add(lambda k, c: calls.append(("first", c)))
    hooks.add(bad)
    hooks.add(lambda k, c: calls.append(("last", c)))
    hooks.fire(object(), frozenset({"A"}), logging.getLogger("secretboot"))
    assert calls == [("first", {"A"}), ("last", {"A"})]
    assert "RuntimeError" in caplog.text and "bad" in caplog.text and CANARY not in caplog.text
    first()
    first()  # twice: no error, nothing else removed
    hooks.fire(object(), frozenset(), logging.getLogger("secretboot"))
    assert calls[-1] == ("last", frozenset()) and len(calls) == 3 and len(hooks) == 2
    with pytest.raises(TypeError):
        hooks.add("not callable")  # type: ignore[arg-type]


# -- the lifecycle over a fake resolver --------------------------------------------------------


class FakeAws:
    """Stands in for ``_resolve.resolve``: values by parameter name, failures on demand."""

    def __init__(self) -> None:
        self.values = {"/app/a": "a1", "/app/b": "b1"}
        self.deny: set[str] = set()
        self.calls: list[frozenset[str]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def resolve(self, refs: Mapping[str, Reference], settings: Any, **_: Any) -> Outcome:
        self.calls.append(frozenset(refs))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        outcome = Outcome()
        for name, ref in refs.items():
            if name in self.deny:
                outcome.failures.append(Failure(name, ref.kind, ref.target, "AccessDenied", "denied"))
            else:
                outcome.values[name] = self.values[ref.target]
                outcome.calls["ssm"] += 1
        return outcome


ENV = {"A": "ssm:/app/a", "B": "ssm:/app/b", "PLAIN": "x"}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    from secretboot import _resolve

    fake = FakeAws()
    monkeypatch.setattr(_resolve, "resolve", fake.resolve)
    yield fake
    if fake.gate is not None:
        fake.gate.set()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_lifecycle, "_clock", fake)
    return fake


@pytest.fixture
def no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer is driven by hand (``_state.refresher.step()``)."""
    monkeypatch.setattr(Refresher, "start", lambda self: None)


def _refresher_of_state() -> Refresher:
    refresher = _lifecycle._state.refresher
    assert refresher is not None
    return refresher


def test_max_age_off_starts_no_timer(aws: FakeAws) -> None:
    secretboot.bootstrap(environ=ENV)
    assert _lifecycle._state.refresher is None
    assert not [t for t in threading.enumerate() if t.name == "secretboot-refresh"]


def test_a_refresh_by_age_swaps_into_the_same_keyring_and_calls_hooks(
    aws: FakeAws, clock: Clock, no_thread: None
) -> None:
    keyring = secretboot.bootstrap(environ=ENV, max_age=60)
    seen: list[tuple[Keyring, frozenset[str], str]] = []
    unregister = secretboot.on_refresh(lambda k, c: seen.append((k, c, threading.current_thread().name)))
    try:
        aws.values["/app/b"] = "b2"
        clock.now += 60
        _refresher_of_state().step()
        assert dict(keyring) == {"A": "a1", "B": "b2"}
        assert seen == [(keyring, frozenset({"B"}), threading.current_thread().name)]
        assert aws.calls == [frozenset({"A", "B"})] * 2  # one batch each time
        clock.now += 60
        _refresher_of_state().step()
        assert seen[-1][1] == frozenset()  # called after every refresh, names may be empty
    finally:
        unregister()


def test_readers_never_wait_for_a_refresh_in_flight(aws: FakeAws, clock: Clock, no_thread: None) -> None:
    keyring = secretboot.bootstrap(environ=ENV, max_age=60)
    aws.gate = threading.Event()
    aws.entered.clear()
    aws.values["/app/a"] = "a2"
    clock.now += 60
    worker = threading.Thread(target=_refresher_of_state().step)
    worker.start()
    try:
        assert aws.entered.wait(5)  # the refresh is inside its resolution now
        reader: list[str | None] = []
        t = threading.Thread(target=lambda: reader.append(secretboot.getenv("A")))
        t.start()
        t.join(2)
        assert reader == ["a1"], "getenv() waited for the refresh's resolution"
        assert secretboot.bootstrap() is keyring and keyring["A"] == "a1"
    finally:
        aws.gate.set()
        worker.join(5)
    assert keyring["A"] == "a2"


def test_no_half_updated_reads_under_a_reader_thread(aws: FakeAws, clock: Clock, no_thread: None) -> None:
    keyring = secretboot.bootstrap(environ=ENV, max_age=60)
    stop = threading.Event()
    mixed: list[dict[str, str]] = []

    def read() -> None:
        while not stop.is_set():
            snapshot = dict(keyring.items())
            if snapshot["A"][1:] != snapshot["B"][1:]:
                mixed.append(snapshot)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(2, 200):
            aws.values = {"/app/a": f"a{n}", "/app/b": f"b{n}"}
            clock.now += 60
            _refresher_of_state().step()
    finally:
        stop.set()
        reader.join(5)
    assert keyring["A"] == "a199" and not mixed


def test_a_failed_refresh_keeps_the_values_and_max_stale_fails_reads_closed(
    aws: FakeAws,
    clock: Clock,
    no_thread: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SECRETBOOT_MAX_STALE", "30")
    keyring = secretboot.bootstrap(environ={**ENV, "SECRETBOOT_MAX_STALE": "30"}, max_age=60)
    aws.deny = {"B"}
    aws.values["/app/a"] = CANARY
    clock.now += 60
    refresher = _refresher_of_state()
    refresher.step()
    assert dict(keyring) == {"A": "a1", "B": "b1"}  # nothing applied, not even A
    assert secretboot.getenv("B") == "b1"
    clock.now = 1000 + 60 + 30
    with pytest.raises(StaleError, match=r"^B is stale") as raised:
        secretboot.getenv("B")  # the read itself sees the bound, before the thread wakes
    assert raised.value.__traceback__ is not None and CANARY not in str(raised.value)
    with pytest.raises(StaleError):
        keyring["A"]
    with pytest.raises(StaleError):
        keyring.get("A", "fallback")  # never a default for a stale value
    assert secretboot.getenv("PLAIN") == "x"
    assert "no longer served" in caplog.text and CANARY not in caplog.text
    aws.deny = set()
    clock.now = refresher.due
    refresher.step()
    assert keyring["A"] == CANARY and secretboot.getenv("B") == "b1"


def test_refresh_now_paces_each_name_and_returns_what_changed(aws: FakeAws, clock: Clock) -> None:
    keyring = secretboot.bootstrap(environ=ENV)
    aws.values["/app/a"] = "a2"
    assert secretboot.refresh_now(["A"]) == frozenset()  # resolved at boot, less than 10 s ago
    assert len(aws.calls) == 1
    clock.now += 10
    assert secretboot.refresh_now(["A", "PLAIN", "UNKNOWN"]) == {"A"}
    assert aws.calls[-1] == {"A"} and keyring["A"] == "a2"
    for _ in range(100):  # a flood of failed logins
        assert secretboot.refresh_now(["A"]) == frozenset()
    assert len(aws.calls) == 2
    aws.values["/app/b"] = "b2"
    assert secretboot.refresh_now() == {"B"}  # A was asked 0 s ago: only B
    assert aws.calls[-1] == {"B"}
    with pytest.raises(TypeError):
        secretboot.refresh_now("A")


def test_refresh_now_failure_changes_nothing_and_counts_as_asked(aws: FakeAws, clock: Clock) -> None:
    keyring = secretboot.bootstrap(environ=ENV)
    clock.now += 10
    aws.deny = {"A"}
    aws.values["/app/b"] = "b2"
    with pytest.raises(BootstrapError) as raised:
        secretboot.refresh_now()
    assert raised.value.variables == ("A",) and dict(keyring) == {"A": "a1", "B": "b1"}
    assert secretboot.refresh_now() == frozenset() and len(aws.calls) == 2  # paced, failed or not


def test_refresh_now_before_bootstrap() -> None:
    with pytest.raises(secretboot.SecretbootError, match="before bootstrap"):
        secretboot.refresh_now()


def test_a_refresh_in_flight_at_reset_is_not_applied(aws: FakeAws, clock: Clock, no_thread: None) -> None:
    secretboot.bootstrap(environ=ENV, max_age=60)
    refresher = _refresher_of_state()
    aws.gate = threading.Event()
    aws.entered.clear()
    clock.now += 60
    worker = threading.Thread(target=refresher.step)
    worker.start()
    assert aws.entered.wait(5)
    secretboot.reset()  # does not wait for the resolution
    aws.gate.set()
    worker.join(5)
    assert _lifecycle._state.keyring is None and _lifecycle._state.refresher is None


def test_a_snapstart_drop_stops_the_timer_and_a_restore_reports_every_name(
    aws: FakeAws, clock: Clock, no_thread: None
) -> None:
    keyring = secretboot.bootstrap(environ=ENV, max_age=60)
    seen: list[frozenset[str]] = []
    unregister = secretboot.on_refresh(lambda k, c: seen.append(c))
    try:
        _snapstart.before_snapshot()
        assert len(keyring) == 0 and _lifecycle._state.refresher is None
        _snapstart.after_restore()
        assert dict(keyring) == {"A": "a1", "B": "b1"} and seen == [{"A", "B"}]
        assert _lifecycle._state.refresher is not None  # armed again with the boot's max_age
    finally:
        unregister()


def test_bad_max_age_settings_fail_before_any_request(aws: FakeAws) -> None:
    for bad in (0, 0.5, float("nan"), float("inf"), True, "60"):
        with pytest.raises(secretboot.ConfigurationError, match="max_age"):
            secretboot.bootstrap(environ=ENV, max_age=bad)  # type: ignore[arg-type]
    for name, value in (("SECRETBOOT_MAX_AGE", "soon"), ("SECRETBOOT_MAX_STALE", "-1")):
        with pytest.raises(secretboot.ConfigurationError, match=name):
            secretboot.bootstrap(environ={**ENV, name: value})
    assert aws.calls == []


def _imports(module: str) -> set[str]:
    """The secretboot modules ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse((ROOT / "secretboot" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("secretboot"):
            if node.module == "secretboot":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.removeprefix("secretboot."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("secretboot.") for a in node.names if a.name.startswith("secretboot")
            )
    return found


def test_the_lifecycle_modules_import_downward_only() -> None:
    # _bootstrap -> _lifecycle -> _snapstart, _refresh: no circle, nothing imported upward.
    assert not _imports("_refresh")  # driven through callables, imports no secretboot module
    assert not _imports("_snapstart") & {"_bootstrap", "_lifecycle", "_refresh"}
    assert "_bootstrap" not in _imports("_lifecycle")
    assert not _imports("_keyring") & {"_bootstrap", "_lifecycle", "_refresh", "_snapstart"}
    # Reading the environment is pure: the checks use it without the stateful modules.
    assert not _imports("_environment") & {"_bootstrap", "_lifecycle", "_refresh", "_snapstart", "_keyring"}
    assert "_bootstrap" not in _imports("_check") and "_bootstrap" not in _imports("contrib/django/checks")


def test_a_plain_cold_start_loads_no_refresh_code_and_starts_no_thread() -> None:
    code = (
        "import sys, threading, secretboot; secretboot.bootstrap(environ={'PLAIN': 'x'});"
        "print(threading.active_count(), 'secretboot._refresh' in sys.modules, 'random' in sys.modules)"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["1", "False", "False"]
