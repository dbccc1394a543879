"""The refresh lifecycle over the local AWS endpoint (moto, behind tests/awsproxy.py).

A running process follows a rotated SSM parameter within ``max_age``; a failing refresh
keeps the last good values with one WARNING; ``refresh_now`` is paced per name (counted at
the proxy); a forked child keeps refreshing on its own thread; a SnapStart restore calls
the ``on_refresh`` callbacks. Every test runs on both transports (``aws_env``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import secretboot
from secretboot import _lifecycle, _snapstart
from tests.awsproxy import AwsProxy, error, throttle
from tests.test_bootstrap import put

CANARY = "CANARY-lifecycle-5e1d"
GET = "AmazonSSM.GetParameters"


@pytest.fixture
def proxy(aws_env: dict[str, str]) -> Iterator[AwsProxy]:
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as running:
        yield running


@pytest.fixture
def env(aws_env: dict[str, str], proxy: AwsProxy, ssm: Any) -> dict[str, str]:
    put(ssm, "/app/db", CANARY + "-db-1")
    put(ssm, "/app/token", CANARY + "-token-1")
    return {**aws_env, "AWS_ENDPOINT_URL": proxy.url, "DB": "ssm:/app/db", "TOKEN": "ssm:/app/token"}


def _rotate(ssm: Any, name: str, value: str) -> None:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)


def _wait(predicate: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_rotated_parameter_is_followed_within_max_age(
    env: dict[str, str], ssm: Any, proxy: AwsProxy
) -> None:
    keyring = secretboot.bootstrap(environ=env, max_age=1)
    changes: list[frozenset[str]] = []
    unregister = secretboot.on_refresh(lambda k, changed: changes.append(changed))
    try:
        _rotate(ssm, "/app/db", CANARY + "-db-2")
        rotated = time.monotonic()
        _wait(lambda: keyring["DB"] == CANARY + "-db-2", 5)
        # Due within max_age of the last success, so within max_age of the rotation plus one
        # resolution (local, tens of ms); generous bound for a loaded machine.
        assert time.monotonic() - rotated < 1 + 1.5
        assert keyring["TOKEN"] == CANARY + "-token-1" and secretboot.getenv("DB") == CANARY + "-db-2"
        assert frozenset({"DB"}) in changes
        # One batched call per refresh: the proxy saw GetParameters only (2 names, 1 request each).
        assert set(proxy.counts()) == {GET}
    finally:
        unregister()
    assert [t.name for t in threading.enumerate()].count("secretboot-refresh") == 1
    secretboot.reset()
    _wait(lambda: "secretboot-refresh" not in [t.name for t in threading.enumerate()], 5)


@pytest.mark.parametrize(
    "fault", [throttle(), error(400, "AccessDeniedException", "no")], ids=["throttle", "denied"]
)
def test_a_failing_refresh_keeps_the_last_good_values_and_warns_once(
    env: dict[str, str], ssm: Any, proxy: AwsProxy, caplog: pytest.LogCaptureFixture, fault: Any
) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    booted = dict(env)  # the boot's own deadline: boto3 may need more than 0.5 s to build clients
    keyring = secretboot.bootstrap(environ=booted, max_age=1)
    booted["SECRETBOOT_TIMEOUT"] = "0.5"  # read again by each refresh: failing ones give up fast
    _rotate(ssm, "/app/db", CANARY + "-db-2")
    proxy.reset_counts()
    rule = proxy.add_fault(fault, target=GET)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    _wait(lambda: bool(warnings()), 15)
    first = rule.fired
    _wait(lambda: rule.fired >= first + 3, 15)  # more refreshes failed since, backing off
    assert dict(keyring) == {"DB": CANARY + "-db-1", "TOKEN": CANARY + "-token-1"}
    assert len(warnings()) == 1, warnings()
    assert warnings()[0].startswith("could not refresh DB (") and "TOKEN (" in warnings()[0]
    assert CANARY not in caplog.text
    proxy.clear_faults()
    _wait(lambda: keyring["DB"] == CANARY + "-db-2", 10)
    assert "refreshed after" in caplog.text


def test_max_stale_fails_reads_closed_and_a_success_serves_again(
    env: dict[str, str], ssm: Any, proxy: AwsProxy
) -> None:
    booted = {**env, "SECRETBOOT_MAX_STALE": "0.5"}
    keyring = secretboot.bootstrap(environ=booted, max_age=1)
    booted["SECRETBOOT_TIMEOUT"] = "0.5"  # as above: the boot had the default deadline
    proxy.add_fault(throttle(), target=GET)
    _wait(lambda: keyring._stale, 10)
    with pytest.raises(secretboot.StaleError, match=r"^DB is stale"):
        keyring["DB"]
    with pytest.raises(secretboot.StaleError, match=r"^TOKEN is stale"):
        secretboot.getenv("TOKEN")
    proxy.clear_faults()
    _wait(lambda: not keyring._stale, 10)
    assert keyring["DB"] == CANARY + "-db-1"


def test_refresh_now_is_paced_per_name_counted_at_the_proxy(
    env: dict[str, str], ssm: Any, proxy: AwsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = secretboot.bootstrap(environ={**env, "SECRETBOOT_REFRESH_MIN_INTERVAL": "2"})
    _rotate(ssm, "/app/db", CANARY + "-db-2")
    proxy.reset_counts()
    assert secretboot.refresh_now(["DB"]) == frozenset()  # resolved at boot, under 2 s ago
    assert proxy.counts() == {}
    time.sleep(2)
    results = [secretboot.refresh_now(["DB"]) for _ in range(50)]  # a flood of failed logins
    assert results[0] == {"DB"} and not any(results[1:]) and keyring["DB"] == CANARY + "-db-2"
    assert proxy.counts() == {GET: 1}  # one request, for DB alone
    # Concurrent callers: still one request per name per interval.
    time.sleep(2)
    proxy.reset_counts()
    threads = [threading.Thread(target=secretboot.refresh_now, args=(["DB", "TOKEN"],)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert proxy.counts() == {GET: 1}


def test_a_forked_child_keeps_refreshing(env: dict[str, str], ssm: Any) -> None:
    keyring = secretboot.bootstrap(environ=env, max_age=1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running pytest's teardown
        code = 1
        try:
            os.close(read_end)
            threads = [t.name for t in threading.enumerate()]
            deadline = time.monotonic() + 10
            while keyring["DB"] != CANARY + "-db-2" and time.monotonic() < deadline:
                time.sleep(0.02)
            report = {"threads": threads, "db": keyring["DB"] == CANARY + "-db-2", "pid": os.getpid()}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _rotate(ssm, "/app/db", CANARY + "-db-2")
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "secretboot-refresh" in report["threads"]  # re-armed at once in the child
    assert report["db"] is True and report["pid"] != os.getpid()


def test_a_snapstart_restore_calls_on_refresh_with_every_name(
    env: dict[str, str], ssm: Any, proxy: AwsProxy
) -> None:
    keyring = secretboot.bootstrap(environ=env, max_age=60)
    calls: list[tuple[bool, frozenset[str], str]] = []
    unregister = secretboot.on_refresh(
        lambda k, changed: calls.append((k is keyring, changed, threading.current_thread().name))
    )
    try:
        _snapstart.before_snapshot()
        assert len(keyring) == 0 and _lifecycle._state.refresher is None  # nothing to refill it
        _rotate(ssm, "/app/token", CANARY + "-token-2")
        _snapstart.after_restore()
        assert calls == [(True, frozenset({"DB", "TOKEN"}), "secretboot-restore")]
        assert keyring["TOKEN"] == CANARY + "-token-2"
        assert _lifecycle._state.refresher is not None  # the timer runs again after the restore
    finally:
        unregister()
