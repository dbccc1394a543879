"""Reliability: throttling, 5xx, resets, black holes and the SECRETBOOT_TIMEOUT deadline; concurrency.

Faults come from ``tests.awsproxy.AwsProxy`` in front of moto. Integration tests run on both
transports (the ``aws_env`` fixture); the backoff schedule is checked on the fast transport with
injected randomness and a recording ``sleep``. Time bounds are measured, with margins for a
machine of two busy cores; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import secretboot
from secretboot import BootstrapError, ConfigurationError, _fast, _retry
from secretboot import _transport as t
from secretboot._settings import Settings
from tests.awsproxy import (
    AwsProxy,
    Fault,
    ProxyRequest,
    ProxyResponse,
    black_hole,
    reset,
    server_error,
    throttle,
)
from tests.localaws import CREDENTIALS, REGION
from tests.test_bootstrap import encrypt, failure_texts, put

FAST_ONLY = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)

DECRYPT = "TrentService.Decrypt"
GET_PARAMETERS = "AmazonSSM.GetParameters"

INFO_LINE = re.compile(
    r"resolved (?P<secrets>\d+) secrets? \(.*\) with (?P<calls>\d+) API calls? \(.*\) "
    r"and (?P<retries>\d+) retr(?:y|ies)(?: \(one request paused (?P<paused>\d+) ms at most\))? "
    r"via (?P<transport>\w+) in \d+ ms"
)
OUT_OF_TIME = re.compile(
    r"SECRETBOOT_TIMEOUT ran out for (?P<operation>Decrypt|GetParameters)(?P<waiting> waiting for .+)? "
    r"after (?P<attempts>\d+) attempt\(s\); the last one met (?P<reason>\w+)"
)
WARNING_LINE = re.compile(
    r"could not resolve (?P<variables>.+) after (?P<calls>\d+) API calls? "
    r"and (?P<retries>\d+) retr(?:y|ies)(?: \(one request paused (?P<paused>\d+) ms at most\))? in \d+ ms"
)


# --- helpers -------------------------------------------------------------------------------


class AtMost(AwsProxy):
    """Faults any one request (the same body: every attempt of one call) at most ``most`` times.

    With attempts to spare, every call then gets through however a random ``rate`` falls on
    the requests, and every fault costs exactly one retry.
    """

    def __init__(self, upstream: str, *, most: int = 2, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self._most = most
        self._faulted: Counter[bytes] = Counter()
        self._faulted_lock = threading.Lock()

    def apply_faults(self, request: ProxyRequest) -> ProxyResponse | None:
        with self._faulted_lock:
            if self._faulted[request.body] >= self._most:
                return None
        answer = super().apply_faults(request)
        if answer is not None:
            with self._faulted_lock:
                self._faulted[request.body] += 1
        return answer


class InFlightProxy(AwsProxy):
    """Counts the requests being handled at once (``peak``): from arrival to the answer."""

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self._gauge = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        with self._gauge:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            return super().handle(request)
        finally:
            with self._gauge:
                self.in_flight -= 1


@pytest.fixture
def proxy(aws_env: dict[str, str]) -> Iterator[AtMost]:
    running = AtMost(aws_env["AWS_ENDPOINT_URL"])
    with running:
        yield running


def references(ssm: Any, *, n_kms: int, n_ssm: int) -> dict[str, str]:
    """Variable -> expected plaintext for ``n_kms`` KMS values and ``n_ssm`` SSM parameters.

    Puts the SSM parameters; ``environment`` encrypts the KMS values and builds the references.
    """
    expected: dict[str, str] = {}
    for i in range(n_kms):
        expected[f"KMS_{i:02d}"] = f"kms-plaintext-{i}"
    for i in range(n_ssm):
        name = f"/reliability/p{i:02d}"
        put(ssm, name, f"ssm-plaintext-{i}")
        expected[f"SSM_{i:02d}"] = f"ssm-plaintext-{i}"
    return expected


def environment(
    aws_env: dict[str, str], kms: Any, key_id: str, expected: dict[str, str], endpoint: str, **extra: str
) -> dict[str, str]:
    env = {**aws_env, "AWS_ENDPOINT_URL": endpoint, **extra}
    for variable, plaintext in expected.items():
        if variable.startswith("KMS_"):
            env[variable] = "kms:" + encrypt(kms, key_id, plaintext)
        else:
            env[variable] = f"ssm:/reliability/p{variable[4:]}"
    return env


def info_line(caplog: pytest.LogCaptureFixture) -> re.Match[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "secretboot" and r.levelno == logging.INFO]
    matches = [m for m in map(INFO_LINE.fullmatch, lines) if m is not None]
    assert len(matches) == 1, lines
    return matches[0]


def warning_line(caplog: pytest.LogCaptureFixture) -> re.Match[str]:
    lines = [
        r.getMessage() for r in caplog.records if r.name == "secretboot" and r.levelno == logging.WARNING
    ]
    matches = [m for m in map(WARNING_LINE.fullmatch, lines) if m is not None]
    assert len(matches) == 1, lines
    return matches[0]


def timed_failure(env: dict[str, str], **kwargs: Any) -> tuple[BootstrapError, float]:
    started = time.monotonic()
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env, **kwargs)
    return info.value, time.monotonic() - started


def quick_transport(monkeypatch: pytest.MonkeyPatch, rand: Callable[[], float]) -> None:
    """Make bootstrap() build its fast transport with ``rand`` as the jitter source."""

    class Injected(_fast.FastTransport):
        def __init__(self, env: Any, **kwargs: Any) -> None:
            super().__init__(env, rand=rand, **kwargs)

    monkeypatch.setattr(_fast, "FastTransport", Injected)


def calls_for(n_kms: int, n_ssm: int) -> dict[str, int]:
    """The requests one resolution makes without faults: a Decrypt each, GetParameters per 10."""
    counts = {}
    if n_kms:
        counts[DECRYPT] = n_kms
    if n_ssm:
        counts[GET_PARAMETERS] = -(-n_ssm // 10)
    return counts


# --- 1. random throttling and 5xx are retried through -----------------------------------------


@pytest.mark.parametrize("fault", [throttle(), server_error(503)], ids=["throttled", "503"])
def test_random_faults_are_retried_and_every_value_resolves(
    aws_env: dict[str, str],
    kms: Any,
    ssm: Any,
    key_id: str,
    proxy: AtMost,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    expected = references(ssm, n_kms=20, n_ssm=30)
    if aws_env["SECRETBOOT_TRANSPORT"] == "fast":
        quick_transport(monkeypatch, lambda: 0.2)  # throttling pauses of 0.2 s and 0.4 s
    # Generous: boto3's jittered backoff may pause up to 1 s then 2 s on one call.
    env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="10")
    rule = proxy.add_fault(fault, rate=0.3, rng=random.Random(11))

    secrets = secretboot.bootstrap(environ=env)

    assert dict(secrets) == expected
    assert rule.fired > 0
    baseline = calls_for(20, 30)
    counts = proxy.counts()
    assert counts.keys() == baseline.keys()
    assert sum(counts.values()) == sum(baseline.values()) + rule.fired
    if fault.code == "ThrottlingException":
        assert sum(proxy.throttled().values()) == rule.fired
    else:
        assert proxy.throttled() == {}
    line = info_line(caplog)
    assert int(line["secrets"]) == 50
    assert int(line["calls"]) == sum(baseline.values())
    assert line["transport"] == aws_env["SECRETBOOT_TRANSPORT"]
    # No call was faulted three times, so each fault cost exactly one retry.
    assert int(line["retries"]) == rule.fired


# --- 2. a persistent outage fails fast, completely, and leaves nothing behind --------------------


def test_persistent_outage_fails_every_variable_and_changes_nothing(
    aws_env: dict[str, str],
    kms: Any,
    ssm: Any,
    key_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    expected = references(ssm, n_kms=5, n_ssm=12)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="1.5")
        rule = proxy.add_fault(server_error(503))
        environ_before = dict(os.environ)

        error, elapsed = timed_failure(env, export=True)

        assert elapsed < 1.5 + 0.5
        assert set(error.variables) == set(expected)
        reasons = {f.reason for f in error.failures}
        assert reasons <= {t.SERVICE_ERROR, t.TIMEOUT}
        calls = sum(calls_for(5, 12).values())
        if aws_env["SECRETBOOT_TRANSPORT"] == "fast":
            # Retried for as long as the deadline left room, then out of time, naming the last
            # answer; a request whose next pause the first such failure cut short says so.
            assert t.TIMEOUT in reasons
            assert elapsed >= 1.5 - 0.3
            for failure in error.failures:
                found = OUT_OF_TIME.fullmatch(failure.detail)
                if found is None:
                    assert failure.reason == t.SERVICE_ERROR
                    assert failure.detail.endswith("another variable had already failed the start")
                    continue
                assert found["reason"] == t.SERVICE_ERROR, failure.detail
                assert int(found["attempts"]) > 3  # more than the old fixed count
            assert sum(proxy.counts().values()) == calls + int(warning_line(caplog)["retries"])
        assert rule.fired > 0
        assert dict(os.environ) == environ_before
        for plaintext in expected.values():
            assert plaintext not in failure_texts(error)
        warning = warning_line(caplog)
        assert set(warning["variables"].split(", ")) == set(expected)
        if aws_env["SECRETBOOT_TRANSPORT"] == "fast":
            assert int(warning["retries"]) >= 3 * calls

        # The failure was not cached: once AWS answers, the same call succeeds.
        proxy.clear_faults()
        assert dict(secretboot.bootstrap(environ=env)) == expected


# --- 3. a black hole is cut off by SECRETBOOT_TIMEOUT -----------------------------------------


def test_black_hole_times_out_every_variable_within_the_deadline(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    expected = references(ssm, n_kms=3, n_ssm=12)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="1")
        rule = proxy.add_fault(black_hole())

        error, elapsed = timed_failure(env)

        assert elapsed < 1 + 0.5
        assert elapsed >= 0.9  # it did wait for the answer that never came
        if aws_env["SECRETBOOT_TRANSPORT"] == "fast":
            assert rule.fired > 0
        # (boto3's session and client are built inside the deadline: on a loaded machine
        # that alone can take the whole second, and no request reaches the black hole.)
        assert set(error.variables) == set(expected)
        for failure in error.failures:
            assert failure.reason == t.TIMEOUT, failure
            assert "SECRETBOOT_TIMEOUT" in failure.detail
            # The transport's own timeout (botocore's read timeout is the time left when its
            # client is built), or resolve() no longer waiting for a request still running.
            assert "no answer" in failure.detail or "still waiting" in failure.detail, failure.detail


# --- 4. connection resets are retried --------------------------------------------------------


def test_a_reset_on_the_first_request_of_each_target_is_retried(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, proxy: AtMost
) -> None:
    expected = references(ssm, n_kms=4, n_ssm=15)
    env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="10")
    rules = [proxy.add_fault(reset(), target=target, times=1) for target in (DECRYPT, GET_PARAMETERS)]

    assert dict(secretboot.bootstrap(environ=env)) == expected

    assert [rule.fired for rule in rules] == [1, 1]
    baseline = calls_for(4, 15)
    assert proxy.counts() == {target: n + 1 for target, n in baseline.items()}


# --- 5. the deadline bounds retries -----------------------------------------------------------


@FAST_ONLY
def test_throttling_is_retried_until_the_deadline_and_no_pause_crosses_it(
    aws_env: dict[str, str],
    kms: Any,
    ssm: Any,
    key_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    expected = references(ssm, n_kms=2, n_ssm=3)
    # Full jitter at its top: pauses of 1 s, then 2 s, which would end past the deadline,
    # so the second is drawn within what is left of it.
    quick_transport(monkeypatch, lambda: 1.0)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="2")
        proxy.add_fault(throttle())

        error, elapsed = timed_failure(env)

        # Slept the first pause, then retried while the deadline left room: never past it.
        assert 0.9 <= elapsed < 2.0 + 0.3
        assert set(error.variables) == set(expected)
        attempts = {}
        for failure in error.failures:
            if failure.reason == t.THROTTLED:  # its pause cut short by the first out of time
                assert failure.detail.endswith("another variable had already failed the start")
                continue
            assert failure.reason == t.TIMEOUT
            found = OUT_OF_TIME.fullmatch(failure.detail)
            assert found is not None, failure.detail
            assert found["reason"] == t.THROTTLED
            assert found["operation"] == ("Decrypt" if failure.kind == "kms" else "GetParameters")
            attempts[failure.target] = int(found["attempts"])
        assert attempts and all(n >= 2 for n in attempts.values())
        requests = sum(proxy.counts().values())
        assert requests >= 2 * 3  # three calls (two Decrypt, one GetParameters), each retried
        assert int(warning_line(caplog)["retries"]) == requests - 3  # every request after a call's first


@FAST_ONLY
def test_five_throttles_in_a_row_no_longer_fail_a_start(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the deadline bounded the retries, the third throttling answer failed the start."""
    caplog.set_level(logging.INFO, logger="secretboot")
    expected = references(ssm, n_kms=5, n_ssm=15)
    with AtMost(aws_env["AWS_ENDPOINT_URL"], most=5) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="5")
        rule = proxy.add_fault(throttle())  # the default jitter source: the operating system's

        assert dict(secretboot.bootstrap(environ=env)) == expected

        baseline = calls_for(5, 15)
        assert rule.fired == 5 * sum(baseline.values())
        assert proxy.counts() == {target: 6 * n for target, n in baseline.items()}
        assert int(info_line(caplog)["retries"]) == rule.fired


def test_the_rate_limiter_holds_back_parallel_retries_of_a_throttled_service(bare_proxy: AwsProxy) -> None:
    """Zero backoff, eight threads, every answer throttled: only the limiter paces the requests."""
    bare_proxy.add_fault(throttle())

    def hammer(adaptive: bool) -> tuple[int, set[str]]:
        bare_proxy.reset_counts()
        deadline = t.Deadline(1.0)
        env = {"AWS_ENDPOINT_URL": bare_proxy.url, "AWS_REGION": REGION, **CREDENTIALS}
        transport = _fast.FastTransport(env, rand=lambda: 0.0, deadline=deadline, adaptive=adaptive)
        details: set[str] = set()

        def one() -> None:
            try:
                decrypt(transport)
            except t.TransportError as exc:
                details.add(re.sub(r"\d+ attempt", "N attempt", exc.detail))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        return sum(bare_proxy.counts().values()), details

    unlimited, _ = hammer(adaptive=False)
    limited, details = hammer(adaptive=True)

    # Eight first requests; then retries wait for tokens (0.7 x the rate measured at the first
    # throttling answer, at most 8/s, falling) or for the end of their windows (1 s, then 2 s),
    # whichever comes first: within the second, at most the bucket and its refill, or eight.
    assert 8 <= limited <= 8 + 6 + 8
    assert unlimited > 5 * limited
    assert details == {
        "SECRETBOOT_TIMEOUT ran out for Decrypt after N attempt(s); the last one met Throttled"
    }


# --- 6. backoff: exponential, full jitter, base by kind of error (unit level) -------------------


@pytest.fixture
def bare_proxy(moto_endpoint: str) -> Iterator[AwsProxy]:
    with AwsProxy(moto_endpoint) as running:
        yield running


def fast_transport(
    proxy: AwsProxy, rand: Callable[[], float], **kwargs: Any
) -> tuple[_fast.FastTransport, list[float]]:
    pauses: list[float] = []
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_REGION": REGION, **CREDENTIALS}
    kwargs.setdefault("adaptive", False)  # the backoff schedule alone, without the rate limiter
    return _fast.FastTransport(env, rand=rand, sleep=pauses.append, **kwargs), pauses


def decrypt(transport: _fast.FastTransport) -> None:
    transport.decrypt(b"not-a-real-blob", context=None, key_id=None)


def get_parameters(transport: _fast.FastTransport) -> None:
    transport.get_parameters(["/a", "/b"])


@pytest.mark.parametrize("call", [decrypt, get_parameters], ids=["Decrypt", "GetParameters"])
@pytest.mark.parametrize(
    ("fault", "reason", "base"),
    [(throttle(), t.THROTTLED, 1.0), (server_error(503), t.SERVICE_ERROR, 0.05)],
    ids=["throttled", "503"],
)
@pytest.mark.parametrize("jitter", [1.0, 0.5])
def test_backoff_doubles_from_the_base_of_the_error_kind_scaled_by_jitter(
    bare_proxy: AwsProxy,
    call: Callable[[_fast.FastTransport], None],
    fault: Fault,
    reason: str,
    base: float,
    jitter: float,
) -> None:
    bare_proxy.add_fault(fault)
    transport, pauses = fast_transport(bare_proxy, lambda: jitter)

    with pytest.raises(t.TransportError) as info:
        call(transport)

    assert info.value.reason == reason
    assert pauses == pytest.approx([jitter * base, jitter * base * 2])
    assert transport.retries == 2
    assert sum(bare_proxy.counts().values()) == 3


def test_each_pause_takes_the_base_of_the_error_it_follows(bare_proxy: AwsProxy) -> None:
    bare_proxy.add_fault(throttle(), times=1)
    bare_proxy.add_fault(server_error(503), times=1)
    bare_proxy.add_fault(throttle(), times=1)
    transport, pauses = fast_transport(bare_proxy, lambda: 1.0)

    with pytest.raises(t.TransportError) as info:
        decrypt(transport)

    assert info.value.reason == t.THROTTLED
    assert pauses == pytest.approx([1.0, 0.05 * 2])  # throttling base, then 5xx base, attempt 2


def test_a_pause_that_would_cross_the_deadline_is_not_taken(bare_proxy: AwsProxy) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    bare_proxy.add_fault(throttle())
    deadline = t.Deadline(2.5, clock=lambda: now[0])
    env = {"AWS_ENDPOINT_URL": bare_proxy.url, "AWS_REGION": REGION, **CREDENTIALS}
    pauses: list[float] = []
    transport = _fast.FastTransport(env, rand=lambda: 1.0, sleep=sleep, deadline=deadline, adaptive=False)

    with pytest.raises(t.TransportError) as info:
        decrypt(transport)

    # 1 s fits in 2.5 s; the next 2 s would not: it is drawn within the 1.5 s left, less
    # the time an attempt needs, and the attempts go on while that time is left.
    assert pauses[0] == 1.0
    assert pauses[1] == pytest.approx(1.5 - _retry.MIN_ATTEMPT)
    assert sum(pauses) <= 2.5 - _retry.MIN_ATTEMPT + 1e-9
    assert info.value.reason == t.TIMEOUT
    # (After the last pause, exactly MIN_ATTEMPT may be left, give or take a rounding: started or not.)
    attempts = bare_proxy.counts()[DECRYPT]
    assert attempts in (len(pauses), len(pauses) + 1)
    assert info.value.detail == (
        f"SECRETBOOT_TIMEOUT ran out for Decrypt after {attempts} attempt(s); the last one met Throttled"
    )
    assert transport.retries == attempts - 1


def test_success_after_a_retry_stops_retrying(bare_proxy: AwsProxy) -> None:
    bare_proxy.add_fault(server_error(503), times=1)
    transport, pauses = fast_transport(bare_proxy, lambda: 1.0)

    answer = transport.get_parameters(["/not-there"])

    assert answer.invalid == ["/not-there"]
    assert pauses == pytest.approx([0.05])
    assert transport.retries == 1
    assert bare_proxy.counts() == {GET_PARAMETERS: 2}


# --- 7. SECRETBOOT_TIMEOUT validation (no AWS) ------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "nan", "inf", "-inf", "901", "1e3", "0x10"])
def test_unusable_timeouts_are_configuration_errors(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="SECRETBOOT_TIMEOUT"):
        Settings({"SECRETBOOT_TIMEOUT": raw})


@pytest.mark.parametrize(
    ("raw", "seconds"), [("0.5", 0.5), (" 3 ", 3.0), ("900", 900.0), ("1e2", 100.0), ("", 5.0), ("  ", 5.0)]
)
def test_usable_timeouts(raw: str, seconds: float) -> None:
    assert Settings({"SECRETBOOT_TIMEOUT": raw}).timeout == seconds


def test_unset_timeout_is_the_default() -> None:
    assert Settings({}).timeout == 5.0


def test_bootstrap_refuses_an_unusable_timeout_before_any_request() -> None:
    env = {
        "SECRETBOOT_TIMEOUT": "0",
        "SECRET": "ssm:/never/fetched",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    with pytest.raises(ConfigurationError, match="SECRETBOOT_TIMEOUT"):
        secretboot.bootstrap(environ=env)


# --- 8. concurrency ---------------------------------------------------------------------------


def test_concurrent_first_calls_share_one_resolution(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    expected = references(ssm, n_kms=2, n_ssm=4)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"], latency=0.05) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url)
        barrier = threading.Barrier(32)
        keyrings: list[secretboot.Keyring] = []
        errors: list[BaseException] = []

        def boot() -> None:
            try:
                barrier.wait(timeout=10)
                keyrings.append(secretboot.bootstrap(environ=env))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=boot) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert len(keyrings) == 32
        assert all(keyring is keyrings[0] for keyring in keyrings)
        assert dict(keyrings[0]) == expected
        assert proxy.counts() == calls_for(2, 4)


def test_concurrent_refreshes_run_one_at_a_time(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    expected = references(ssm, n_kms=2, n_ssm=4)
    per_resolution = sum(calls_for(2, 4).values())  # 3 requests, sent side by side
    proxy = InFlightProxy(aws_env["AWS_ENDPOINT_URL"], latency=0.1)
    with proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url)
        first = secretboot.bootstrap(environ=env)
        barrier = threading.Barrier(4)
        keyrings: list[secretboot.Keyring] = []
        errors: list[BaseException] = []

        def refresh() -> None:
            try:
                barrier.wait(timeout=10)
                keyrings.append(secretboot.bootstrap(refresh=True, environ=env))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=refresh) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert all(keyring is first for keyring in keyrings) and len(keyrings) == 4
        assert proxy.counts() == {target: 5 * n for target, n in calls_for(2, 4).items()}
        # Each resolution's requests overlap; two resolutions' never do.
        assert 2 <= proxy.peak <= per_resolution


GENERATIONS = 5
SSM_NAMES = [f"/gen/p{i}" for i in range(6)]
VALUE = re.compile(r"gen-(\d+)-(\w+)")


def generation(value: str, variable: str) -> int:
    match = VALUE.fullmatch(value)
    assert match is not None and match[2] == variable, (variable, "torn or foreign value")
    return int(match[1])


def test_readers_during_refreshes_see_one_generation_per_snapshot(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    """What the keyring promises: one attribute swap per refresh.

    A snapshot of its contents (one read of ``_contents``) holds one generation, whose values
    and references name the same variables and belong together; every single lookup gives a
    whole value, never older than one the same reader saw before; the last refresh is seen.
    """
    ssm_vars = [f"SSM_{i}" for i in range(len(SSM_NAMES))]
    kms_vars = ["KMS_A", "KMS_B"]
    variables = ssm_vars + kms_vars
    blobs: dict[str, int] = {}  # KMS reference (canonical form) -> its generation
    envs = []
    for gen in range(GENERATIONS + 1):
        env = dict(aws_env)
        for variable, name in zip(ssm_vars, SSM_NAMES, strict=True):
            env[variable] = f"ssm:{name}"
        for variable in kms_vars:
            env[variable] = "kms:" + encrypt(kms, key_id, f"gen-{gen}-{variable}")
            blobs[str(secretboot.parse_reference(env[variable]))] = gen
        envs.append(env)

    def publish(gen: int) -> None:
        for variable, name in zip(ssm_vars, SSM_NAMES, strict=True):
            ssm.put_parameter(Name=name, Value=f"gen-{gen}-{variable}", Type="SecureString", Overwrite=True)

    publish(0)
    keyring = secretboot.bootstrap(environ=envs[0])
    stop = threading.Event()
    started = [threading.Event() for _ in range(8)]
    saw_last = [threading.Event() for _ in range(8)]
    problems: list[str] = []
    seen: set[int] = set()
    seen_lock = threading.Lock()

    def read(index: int) -> None:
        latest = dict.fromkeys(variables, 0)
        try:
            while not stop.is_set():
                contents = keyring._contents  # one read: the snapshot the design promises
                gens = {generation(v, k) for k, v in contents.values.items()}
                if len(gens) != 1:
                    problems.append(f"snapshot mixes generations {sorted(gens)}")
                if set(contents.values) != set(variables) or set(contents.references) != set(variables):
                    problems.append("snapshot names the wrong variables")
                for variable in kms_vars:
                    if blobs[str(contents.references[variable])] not in gens:
                        problems.append(f"{variable}: reference and value from different generations")
                for variable in variables:  # single lookups across the live keyring
                    gen = generation(keyring[variable], variable)
                    if gen < latest[variable]:
                        problems.append(f"{variable} went back from {latest[variable]} to {gen}")
                    latest[variable] = gen
                with seen_lock:
                    seen.update(gens)
                started[index].set()
                if set(latest.values()) == {GENERATIONS}:
                    saw_last[index].set()
                time.sleep(0.0005)  # pacing only: leave the GIL to the refreshing threads
        except BaseException as exc:
            problems.append(repr(exc))
            started[index].set()

    readers = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for reader in readers:
        reader.start()
    try:
        assert all(event.wait(10) for event in started)
        for gen in range(1, GENERATIONS + 1):
            publish(gen)
            before = keyring._contents
            old_values, old_references = dict(before.values), dict(before.references)
            assert secretboot.bootstrap(refresh=True, environ=envs[gen]) is keyring
            # Swapped, not edited: a snapshot taken before the refresh still holds the old one.
            assert keyring._contents is not before
            assert before.values == old_values and dict(before.references) == old_references
            assert dict(keyring) == {v: f"gen-{gen}-{v}" for v in variables}  # no refresh running now
        assert all(event.wait(10) for event in saw_last)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=10)
    assert problems == []
    assert {0, GENERATIONS} <= seen


def test_an_items_iteration_spanning_a_refresh_sees_one_generation(aws_env: dict[str, str], ssm: Any) -> None:
    env = dict(aws_env)
    for i, name in enumerate(SSM_NAMES):
        env[f"SSM_{i}"] = f"ssm:{name}"
        ssm.put_parameter(Name=name, Value=f"gen-0-SSM_{i}", Type="SecureString")
    keyring = secretboot.bootstrap(environ=env)

    items = iter(keyring.items())
    first = next(items)
    for i, name in enumerate(SSM_NAMES):
        ssm.put_parameter(Name=name, Value=f"gen-1-SSM_{i}", Type="SecureString", Overwrite=True)
    secretboot.bootstrap(refresh=True, environ=env)
    pairs = [first, *items]

    assert len({generation(value, variable) for variable, value in pairs}) == 1
    assert {generation(value, variable) for variable, value in keyring.items()} == {1}


# --- 7. no retry storms: once a start has failed, retrying stops ------------------------------


def test_once_a_start_has_failed_retries_stop_and_each_variable_keeps_its_reason(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing parameter fails the start; the throttled Decrypts stop instead of using 8 s."""
    caplog.set_level(logging.INFO, logger="secretboot")
    expected = references(ssm, n_kms=3, n_ssm=2)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="8")
        env["MISSING"] = "ssm:/reliability/not-there"
        proxy.add_fault(throttle(), target=DECRYPT)

        error, elapsed = timed_failure(env)

        assert elapsed < 2.5  # not the 8 s deadline
        reasons = {f.variable: f.reason for f in error.failures}
        assert reasons == {
            "MISSING": t.PARAMETER_NOT_FOUND,
            **{f"KMS_{i:02d}": t.THROTTLED for i in range(3)},
        }
        for failure in error.failures:
            if failure.kind == "kms":
                assert "another variable had already failed the start" in failure.detail
        # Each Decrypt was tried once or twice: whatever was in flight when the outcome was decided.
        assert 3 <= proxy.counts()[DECRYPT] <= 6
        for plaintext in expected.values():
            assert plaintext not in failure_texts(error)


def test_a_start_that_fails_before_any_request_makes_each_request_once(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    expected = references(ssm, n_kms=2, n_ssm=0)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="8")
        env["MALFORMED"] = "kms:not base64 at all!"
        proxy.add_fault(throttle(), target=DECRYPT)

        error, elapsed = timed_failure(env)

        assert elapsed < 1.5
        assert set(error.variables) == {"MALFORMED", "KMS_00", "KMS_01"}
        assert {f.reason for f in error.failures if f.variable != "MALFORMED"} == {t.THROTTLED}
        assert proxy.counts()[DECRYPT] == 2  # one request each, never retried


def test_check_reports_every_variable_and_keeps_retrying_after_a_failure(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    """``secretboot check`` is a diagnosis, not a start: one failure does not stop the others."""
    from secretboot._check import check

    expected = references(ssm, n_kms=2, n_ssm=1)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_TIMEOUT="8")
        env["MISSING"] = "ssm:/reliability/not-there"
        # Two throttling answers per Decrypt: at least one is retried after MISSING has failed.
        proxy.add_fault(throttle(), target=DECRYPT, times=4)

        rows = {row.name: row for row in check(environ=env)}

        assert not rows["MISSING"].ok
        assert all(rows[name].ok for name in expected), {n: r.status for n, r in rows.items()}


# --- 8. SECRETBOOT_RETRY_MODE=adaptive: the process's rate limiter -------------------------------


@pytest.mark.parametrize("mode", ["", "standard", "adaptive", "ADAPTIVE "])
def test_retry_mode_adaptive_turns_on_the_processs_rate_limiter(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, mode: str
) -> None:
    expected = references(ssm, n_kms=2, n_ssm=3)
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = environment(aws_env, kms, key_id, expected, proxy.url, SECRETBOOT_RETRY_MODE=mode)
        proxy.add_fault(throttle(), target=DECRYPT, times=1)

        assert dict(secretboot.bootstrap(environ=env)) == expected

        # The fast transport keys its limiters by endpoint URL, boto3's by endpoint or region.
        learnt = _retry.limiter("kms", proxy.url)
        assert learnt.enabled is (mode.strip().lower() == "adaptive")
        assert not _retry.limiter("ssm", proxy.url).enabled  # per service


def test_an_unknown_retry_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings({"SECRETBOOT_RETRY_MODE": "legacy"})
    assert str(info.value) == "SECRETBOOT_RETRY_MODE must be one of standard, adaptive"
