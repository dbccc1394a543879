"""``secretboot.prefetch()``: resolution on a background thread, joined by ``bootstrap()``.

Integration tests over real HTTP: moto behind the local AwsProxy (for latency and faults), on
both transports (the ``aws_env`` fixture).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import secretboot
from secretboot import BootstrapError, ConfigurationError, _bootstrap
from tests.awsproxy import AwsProxy
from tests.test_bootstrap import CANARY, encrypt, failure_texts, put
from tests.test_sentry import _frames_locals

LATENCY = 0.2


@pytest.fixture
def proxy(aws_env: dict[str, str]) -> Iterator[AwsProxy]:
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"], latency=LATENCY) as running:
        yield running


@pytest.fixture
def env(aws_env: dict[str, str], proxy: AwsProxy, kms: Any, ssm: Any, key_id: str) -> dict[str, str]:
    """Three secrets (one KMS, two SSM) reached through the proxy, plus a plain value."""
    put(ssm, "/app/token", CANARY + "-token")
    put(ssm, "/app/db", CANARY + "-db")
    return {
        **aws_env,
        "AWS_ENDPOINT_URL": proxy.url,
        "KEY": "kms:" + encrypt(kms, key_id, CANARY + "-kms"),
        "TOKEN": "ssm:/app/token",
        "DB": "ssm:/app/db",
        "PLAIN": "plain value",
    }


EXPECTED = {"KEY": CANARY + "-kms", "TOKEN": CANARY + "-token", "DB": CANARY + "-db"}


def _wait(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _pending() -> _bootstrap._Prefetch:
    job = _bootstrap._state.prefetch
    assert job is not None
    return job


def test_prefetch_returns_at_once_and_the_join_gives_what_bootstrap_gives(
    env: dict[str, str], proxy: AwsProxy
) -> None:
    started = time.perf_counter()
    assert secretboot.prefetch(environ=env) is None
    assert time.perf_counter() - started < LATENCY  # before a single round trip could complete
    keyring = secretboot.bootstrap(environ=env)
    assert dict(keyring) == EXPECTED
    assert secretboot.bootstrap() is keyring  # booted: later calls return the same keyring
    assert keyring.references["TOKEN"] == secretboot.SsmReference("/app/token")
    prefetched_calls = proxy.counts()

    secretboot.reset()
    proxy.reset_counts()
    assert dict(secretboot.bootstrap(environ=env)) == EXPECTED
    assert proxy.counts() == prefetched_calls  # the same requests, made once


def test_the_work_overlaps_the_callers_own(
    env: dict[str, str], proxy: AwsProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # Not timed against a bound (this machine's load decides those; bench/run.py measures):
    # the resolution completes while the caller does something else, and the join only
    # applies it, asking AWS nothing more.
    caplog.set_level(logging.INFO, logger="secretboot")
    started = time.perf_counter()
    secretboot.prefetch(environ=env)
    returned = time.perf_counter() - started
    job = _bootstrap._state.prefetch
    assert job is not None
    assert job.done.wait(30), "the background resolution did not finish"  # the caller's own work
    assert returned < LATENCY  # returned before a single round trip could have been made
    calls = proxy.counts()
    assert sum(calls.values()) > 0
    keyring = secretboot.bootstrap(environ=env)
    assert proxy.counts() == calls  # the join asked nothing: it applied what was fetched
    assert dict(keyring) == EXPECTED
    assert "(prefetched; the join waited" in caplog.text


def test_a_bad_reference_fails_at_the_join_with_bootstraps_error(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = {**env, "MISSING": "ssm:/app/missing", "BROKEN": "kms:" + "QUJD" * 20}
    secretboot.prefetch(environ=env)
    with pytest.raises(BootstrapError) as joined:
        secretboot.bootstrap(environ=env)
    assert _bootstrap._state.keyring is None  # failed closed: nothing applied
    with pytest.raises(BootstrapError) as alone:
        secretboot.bootstrap(environ=env)  # the prefetch was consumed: this resolves anew
    assert joined.value.failures == alone.value.failures
    assert set(joined.value.variables) == {"MISSING", "BROKEN"}
    # Raised from bootstrap()'s frame only: no frame holding references or plaintext.
    assert [f.name for f in _traceback_frames(joined.value)] == ["bootstrap"]
    locals_text = _frames_locals(joined.value)
    for secret in (CANARY, env["BROKEN"][4:], env["KEY"][4:]):
        assert secret not in failure_texts(joined.value)
        assert secret not in locals_text
        assert secret not in caplog.text


def _traceback_frames(error: BaseException) -> list[Any]:
    import traceback

    return [f for f in traceback.extract_tb(error.__traceback__) if "secretboot" in f.filename]


def test_a_prefetch_never_joined_logs_its_failure_once_and_raises_at_the_next_call(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    os.environ.update({**env, "MISSING": "ssm:/app/missing"})
    secretboot.prefetch()
    _wait(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert errors[0].name == "secretboot"
    assert "MISSING (ParameterNotFound)" in message and "bootstrap()" in message
    assert errors[0].threadName == "secretboot-prefetch"  # logged when it failed, not at the join
    with pytest.raises(BootstrapError) as info:
        secretboot.getenv("PLAIN")  # the next call joins, and fails closed
    assert info.value.variables == ("MISSING",)
    assert CANARY not in caplog.text and CANARY not in failure_texts(info.value)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_getenv_joins_the_prefetch(env: dict[str, str], proxy: AwsProxy) -> None:
    os.environ.update(env)
    secretboot.prefetch()
    assert secretboot.getenv("TOKEN") == CANARY + "-token"
    assert secretboot.getenv("PLAIN") == "plain value"
    calls = sum(proxy.counts().values())
    assert dict(secretboot.bootstrap()) == EXPECTED
    assert sum(proxy.counts().values()) == calls  # joined, not resolved twice


def test_getenv_joins_with_the_prefetchs_own_options(env: dict[str, str]) -> None:
    secretboot.prefetch(environ=env)
    assert secretboot.getenv("KEY") == CANARY + "-kms"


def test_a_second_prefetch_is_a_no_op_and_other_options_are_refused(env: dict[str, str]) -> None:
    secretboot.prefetch(environ=env)
    first = _pending()
    secretboot.prefetch(environ={**env, "OTHER": "ssm:/app/db"})
    assert _pending() is first
    with pytest.raises(ConfigurationError, match="environ") as info:
        secretboot.bootstrap()  # os.environ, not the prefetch's mapping
    assert CANARY not in str(info.value)
    with pytest.raises(ConfigurationError, match="export"):
        secretboot.bootstrap(environ=env, export=True)
    assert dict(secretboot.bootstrap(environ=env)) == EXPECTED  # still there to join
    secretboot.prefetch(environ=env)  # booted: nothing to do
    assert _bootstrap._state.prefetch is None


def test_export_is_applied_at_the_join_on_the_callers_thread(env: dict[str, str]) -> None:
    os.environ.update(env)
    secretboot.prefetch(export=True)
    _wait(_pending().done.is_set)
    assert os.environ["TOKEN"] == "ssm:/app/token"  # the thread resolved, and wrote nothing
    secretboot.bootstrap(export=True)
    assert os.environ["TOKEN"] == CANARY + "-token"
    secretboot.reset()
    assert os.environ["TOKEN"] == "ssm:/app/token"


def test_a_reference_set_between_prefetch_and_join_is_resolved(
    env: dict[str, str], proxy: AwsProxy, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = dict(env)
    secretboot.prefetch(environ=mapping)
    mapping["PLAIN"] = "another plain value"  # plain values do not change the result
    mapping["LATE"] = "ssm:/app/db"
    keyring = secretboot.bootstrap(environ=mapping)
    assert dict(keyring) == {**EXPECTED, "LATE": CANARY + "-db"}
    assert "LATE changed since prefetch()" in caplog.text


def test_a_plain_change_keeps_the_prefetch(env: dict[str, str], proxy: AwsProxy) -> None:
    mapping = dict(env)
    secretboot.prefetch(environ=mapping)
    _wait(_pending().done.is_set)
    calls = sum(proxy.counts().values())
    mapping["PLAIN"] = "another plain value"
    assert dict(secretboot.bootstrap(environ=mapping)) == EXPECTED
    assert sum(proxy.counts().values()) == calls


def test_reset_and_refresh_drop_the_prefetch(
    env: dict[str, str], proxy: AwsProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broken = {**env, "MISSING": "ssm:/app/missing"}
    secretboot.prefetch(environ=broken)
    job = _pending()
    secretboot.reset()
    job.done.wait(10)
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]  # dropped: nobody to tell
    assert dict(secretboot.bootstrap(environ=env)) == EXPECTED

    secretboot.reset()
    secretboot.prefetch(environ=broken)
    assert dict(secretboot.bootstrap(refresh=True, environ=env)) == EXPECTED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_resolves_for_itself(env: dict[str, str], proxy: AwsProxy) -> None:
    secretboot.prefetch(environ=env)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the prefetch thread was not forked with it
        try:
            os.close(read)
            pending = _bootstrap._state.prefetch is not None
            values = dict(secretboot.bootstrap(environ=env))
            os.write(write, json.dumps({"pending": pending, "ok": values == EXPECTED}).encode())
        finally:
            os._exit(0)
    os.close(write)
    assert dict(secretboot.bootstrap(environ=env)) == EXPECTED
    deadline = time.monotonic() + 20
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the child hung")
        time.sleep(0.02)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read()) == {"pending": False, "ok": True}
    both = proxy.counts()
    secretboot.reset()
    proxy.reset_counts()
    secretboot.bootstrap(environ=env)
    # The child made its own requests: as many as one resolution, twice in all.
    assert both == {target: 2 * count for target, count in proxy.counts().items()}


def test_snapstart_hooks_are_registered_at_the_join_on_the_callers_thread(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from secretboot import _snapstart

    registered: list[tuple[str, str]] = []
    monkeypatch.setattr(_snapstart, "register", lambda policy: registered.append((policy, _thread())))
    snapstart = {**env, "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}
    secretboot.prefetch(environ=snapstart)
    _wait(_pending().done.is_set)
    assert registered == []  # resolved, not applied
    secretboot.bootstrap(environ=snapstart)
    assert registered == [("drop", _thread())]


def _thread() -> str:
    import threading

    return threading.current_thread().name


def test_a_prefetch_not_joined_before_the_snapshot_is_dropped_and_said(
    env: dict[str, str], proxy: AwsProxy, caplog: pytest.LogCaptureFixture
) -> None:
    secretboot.prefetch(environ=env)
    job = _pending()
    _bootstrap._prefetch_before_snapshot()  # waits for the thread, then drops its plaintext
    assert job.done.is_set() and job.found is None and _bootstrap._state.prefetch is None
    assert "never joined before the SnapStart snapshot" in caplog.text
    calls = sum(proxy.counts().values())
    assert dict(secretboot.bootstrap(environ=env)) == EXPECTED  # resolved again after restore
    assert sum(proxy.counts().values()) == 2 * calls
