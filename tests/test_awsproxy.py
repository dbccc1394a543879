"""The delay proxy in front of moto: relays AWS calls, counts them, keeps connections alive,
delays requests in flight side by side, and injects faults (AWS errors, resets, a black hole,
extra delays, token-bucket quotas)."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from tests.awsproxy import (
    AwsProxy,
    black_hole,
    delay,
    error,
    reset,
    server_error,
    throttle,
)
from tests.conftest import REGION, moto_api

# moto routes an unsigned-looking request by the service in the credential scope and does not
# check signatures unless its auth mode is on, so raw requests need only this much.
SSM_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0"
)
# Raw request bodies moto needs (DescribeParameters takes "{}").
_BODIES = {"AmazonSSM.GetParameters": b'{"Names": ["/proxy/missing"]}'}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[AwsProxy]:
    # Not aws_env: that one runs each test once per secretboot transport, which the proxy ignores.
    moto_api(moto_endpoint, "reset")
    with AwsProxy(moto_endpoint) as running:
        yield running


def _client(proxy: AwsProxy, service: str, pool: int = 10) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=proxy.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=pool),
    )


def _no_retry(proxy: AwsProxy, service: str, **options: Any) -> Any:
    """A client that makes one attempt per call, so each fault reaches the test as it is."""
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=proxy.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, **options),
    )


def _connect(proxy: AwsProxy, timeout: float = 10) -> http.client.HTTPConnection:
    host, port = proxy.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def _describe(
    conn: http.client.HTTPConnection, target: str = "AmazonSSM.DescribeParameters", **extra: str
) -> http.client.HTTPResponse:
    """One raw request (``target`` is forwarded to moto as SSM) over ``conn``, its body read."""
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": target,
        "Authorization": SSM_AUTH,
        **extra,
    }
    conn.request("POST", "/", body=_BODIES.get(target, b"{}"), headers=headers)
    answer = conn.getresponse()
    answer.read()
    return answer


def test_url_is_loopback(proxy: AwsProxy) -> None:
    assert proxy.url.startswith("http://127.0.0.1:")


def test_boto3_calls_go_through_and_are_counted_by_target(proxy: AwsProxy) -> None:
    kms, ssm = _client(proxy, "kms"), _client(proxy, "ssm")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"through the proxy")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"through the proxy"
    ssm.put_parameter(Name="/proxy/p", Value="v", Type="SecureString")
    found = ssm.get_parameters(Names=["/proxy/p", "/proxy/missing"], WithDecryption=True)
    assert [p["Value"] for p in found["Parameters"]] == ["v"]
    assert found["InvalidParameters"] == ["/proxy/missing"]

    assert proxy.counts() == {
        "TrentService.CreateKey": 1,
        "TrentService.Encrypt": 1,
        "TrentService.Decrypt": 1,
        "AmazonSSM.PutParameter": 1,
        "AmazonSSM.GetParameters": 1,
    }
    proxy.reset_counts()
    assert proxy.counts() == {}
    assert proxy.connections() == 0


def test_errors_are_relayed(proxy: AwsProxy) -> None:
    ssm = _client(proxy, "ssm")
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/proxy/missing")
    assert proxy.counts() == {"AmazonSSM.GetParameter": 1}


def test_one_connection_carries_two_requests(proxy: AwsProxy) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        first = _describe(conn)
        sock = conn.sock
        second = _describe(conn)
        assert (first.status, second.status) == (200, 200)
        assert first.getheader("Connection") is None
        assert not first.will_close
        assert conn.sock is sock is not None  # http.client reconnects silently otherwise
        assert proxy.counts() == {"AmazonSSM.DescribeParameters": 2}
        assert proxy.connections() == 1
    finally:
        conn.close()


def test_connection_close_is_honoured(proxy: AwsProxy) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        answer = _describe(conn, Connection="close")
        assert answer.status == 200
        assert answer.getheader("Connection") == "close"
    finally:
        conn.close()


def test_requests_in_flight_are_delayed_side_by_side(proxy: AwsProxy) -> None:
    ssm = _client(proxy, "ssm", pool=5)
    ssm.describe_parameters()  # build and warm the client outside the timed part
    proxy.latency = 0.3
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ssm.describe_parameters()
        except BaseException as exc:  # reported below: a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.perf_counter() - started
    assert not errors
    assert proxy.counts()["AmazonSSM.DescribeParameters"] == 6
    # Queued, five would take 1.5 s; side by side, one delay plus moto's own time.
    assert 0.3 <= elapsed < 0.9, elapsed


def test_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with AwsProxy(f"http://127.0.0.1:{port}") as proxy:
            host, proxy_port = proxy.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(proxy_port), timeout=10)
            try:
                assert _describe(conn).status == 502
            finally:
                conn.close()


def test_stop_ends_idle_keep_alive_connections(moto_endpoint: str) -> None:
    proxy = AwsProxy(moto_endpoint)
    proxy.start()
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        _describe(conn)
        started = time.perf_counter()
        proxy.stop()
        assert time.perf_counter() - started < 5
        with pytest.raises(RuntimeError):
            _ = proxy.url
    finally:
        conn.close()


def _statuses(
    conn: http.client.HTTPConnection, n: int, target: str = "AmazonSSM.DescribeParameters"
) -> list[int]:
    return [_describe(conn, target).status for _ in range(n)]


def _code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# ============================================================================== faults


def test_throttle_is_an_aws_json_error_that_boto3_parses(proxy: AwsProxy) -> None:
    rule = proxy.add_fault(throttle(), target="AmazonSSM.GetParameters")
    ssm = _no_retry(proxy, "ssm")
    with pytest.raises(ClientError) as caught:
        ssm.get_parameters(Names=["/proxy/p"])
    assert _code(caught) == ("ThrottlingException", 400)
    assert caught.value.response["Error"]["Message"] == "Rate exceeded"

    conn = _connect(proxy)
    try:
        answer = _describe(conn, "AmazonSSM.GetParameters")
        assert answer.status == 400
        assert answer.getheader("x-amzn-ErrorType") == "ThrottlingException"
        assert answer.getheader("Content-Type") == "application/x-amz-json-1.1"
        assert not answer.will_close  # a made-up answer keeps the connection alive
        assert _describe(conn).status == 200  # other targets on the same connection go through
    finally:
        conn.close()
    assert rule.fired == 2
    assert proxy.counts() == {"AmazonSSM.GetParameters": 2, "AmazonSSM.DescribeParameters": 1}
    assert proxy.throttled() == {"AmazonSSM.GetParameters": 2}


def test_throttle_body_is_the_aws_json_error_shape(proxy: AwsProxy) -> None:
    proxy.add_fault(throttle())
    conn = _connect(proxy)
    try:
        conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "TrentService.Decrypt"})
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert body == {"__type": "ThrottlingException", "message": "Rate exceeded"}


@pytest.mark.parametrize(("status", "code"), [(500, "InternalFailure"), (503, "ServiceUnavailable")])
def test_server_errors_parse_as_client_errors(proxy: AwsProxy, status: int, code: str) -> None:
    proxy.add_fault(server_error(status))
    kms = _no_retry(proxy, "kms")
    with pytest.raises(ClientError) as caught:
        kms.list_keys()
    assert _code(caught) == (code, status)
    assert proxy.counts() == {"TrentService.ListKeys": 1}
    assert proxy.throttled() == {}


def test_any_aws_error_can_be_scripted(proxy: AwsProxy) -> None:
    proxy.add_fault(
        error(400, "DisabledException", "arn:aws:kms:... is disabled."), target="TrentService.Decrypt"
    )
    kms = _no_retry(proxy, "kms")
    with pytest.raises(kms.exceptions.DisabledException):
        kms.decrypt(CiphertextBlob=b"x" * 64)


def test_times_takes_exactly_the_first_matching_requests(proxy: AwsProxy) -> None:
    rule = proxy.add_fault(throttle(), target="AmazonSSM.GetParameters", times=2)
    ssm = _no_retry(proxy, "ssm")
    ssm.describe_parameters()  # another target: neither taken nor charged
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            ssm.get_parameters(Names=["/proxy/missing"])
        assert _code(caught) == ("ThrottlingException", 400)
    for _ in range(2):
        assert ssm.get_parameters(Names=["/proxy/missing"])["InvalidParameters"] == ["/proxy/missing"]
    assert rule.fired == 2
    assert proxy.throttled() == {"AmazonSSM.GetParameters": 2}
    assert proxy.counts() == {"AmazonSSM.GetParameters": 4, "AmazonSSM.DescribeParameters": 1}


def test_targets_are_exact_or_prefixes_ending_in_a_dot(proxy: AwsProxy) -> None:
    proxy.add_fault(throttle(), target="TrentService.")
    proxy.add_fault(server_error(), target="AmazonSSM.GetParameter")  # exact: not GetParameters
    kms, ssm = _no_retry(proxy, "kms"), _no_retry(proxy, "ssm")
    for call in (kms.list_keys, kms.create_key):
        with pytest.raises(ClientError) as caught:
            call()
        assert _code(caught) == ("ThrottlingException", 400)
    assert ssm.get_parameters(Names=["/proxy/missing"])["Parameters"] == []
    with pytest.raises(ClientError) as caught:
        ssm.get_parameter(Name="/proxy/missing")
    assert _code(caught) == ("InternalFailure", 500)
    assert proxy.throttled() == {"TrentService.ListKeys": 1, "TrentService.CreateKey": 1}


def test_rate_takes_a_reproducible_share_with_a_seeded_rng(proxy: AwsProxy) -> None:
    def pattern(seed: int) -> list[bool]:
        proxy.clear_faults()
        proxy.add_fault(throttle(), rate=0.3, rng=random.Random(seed))
        proxy.add_fault(server_error())  # whatever the first rule leaves: no need for moto
        conn = _connect(proxy)
        try:
            statuses = _statuses(conn, 200)
        finally:
            conn.close()
        assert set(statuses) <= {400, 500}
        return [status == 400 for status in statuses]

    first = pattern(7)
    assert 40 <= sum(first) <= 80  # 60 expected
    assert pattern(7) == first
    draws = random.Random(7)  # one draw per matching request, in order
    assert first == [draws.random() < 0.3 for _ in range(200)]
    other = pattern(8)
    assert other != first
    assert proxy.throttled() == {"AmazonSSM.DescribeParameters": 2 * sum(first) + sum(other)}


def test_delay_slows_only_matching_requests_then_later_rules_apply(proxy: AwsProxy) -> None:
    proxy.add_fault(delay(0.3), target="AmazonSSM.DescribeParameters")
    proxy.add_fault(delay(0.2), target="AmazonSSM.GetParameter")
    proxy.add_fault(throttle(), target="AmazonSSM.GetParameter")
    ssm = _no_retry(proxy, "ssm")
    ssm.get_parameters(Names=["/proxy/missing"])  # build and warm the client outside the timings

    def timed(call: Any, **kwargs: Any) -> float:
        started = time.perf_counter()
        try:
            call(**kwargs)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ThrottlingException"
        return time.perf_counter() - started

    assert timed(ssm.get_parameters, Names=["/proxy/missing"]) < 0.2
    assert 0.3 <= timed(ssm.describe_parameters) < 1.0
    assert 0.2 <= timed(ssm.get_parameter, Name="/proxy/missing") < 0.8
    assert proxy.throttled() == {"AmazonSSM.GetParameter": 1}


def test_reset_aborts_the_connection_without_an_answer(proxy: AwsProxy) -> None:
    rule = proxy.add_fault(reset(), target="AmazonSSM.DescribeParameters", times=2)
    conn = _connect(proxy)
    try:
        # RST rather than FIN: ConnectionResetError on Linux; a client may also see a bare EOF.
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            _describe(conn)
    finally:
        conn.close()
    ssm = _no_retry(proxy, "ssm")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        ssm.describe_parameters()
    assert ssm.describe_parameters()["Parameters"] == []  # times=2 spent: forwarded again
    assert rule.fired == 2
    assert proxy.counts() == {"AmazonSSM.DescribeParameters": 3}


def test_black_hole_never_answers_and_stop_ends_it_promptly(proxy: AwsProxy) -> None:
    proxy.add_fault(black_hole(), target="AmazonSSM.DescribeParameters")
    ssm = _no_retry(proxy, "ssm", read_timeout=0.5, connect_timeout=2)
    assert ssm.get_parameters(Names=["/proxy/missing"])["Parameters"] == []  # other targets answer
    cpu, started = time.process_time(), time.perf_counter()
    with pytest.raises(ReadTimeoutError):
        ssm.describe_parameters()
    assert 0.5 <= time.perf_counter() - started < 2
    assert time.process_time() - cpu < 0.25  # the held connection waits in recv(): no spinning

    conn = _connect(proxy, timeout=5)
    try:
        conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "AmazonSSM.DescribeParameters"})
        deadline = time.monotonic() + 5
        while proxy.counts().get("AmazonSSM.DescribeParameters", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the proxy holds the request
        started = time.perf_counter()
        proxy.stop()
        assert time.perf_counter() - started < 1.0
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()  # stop() ended the held connection: no answer, no hang
    finally:
        conn.close()


# ============================================================================== quotas


def test_quota_is_a_token_bucket(moto_endpoint: str) -> None:
    now = [100.0]
    with AwsProxy(moto_endpoint, clock=lambda: now[0]) as proxy:
        proxy.quota("AmazonSSM.DescribeParameters", rate=5, burst=5)
        conn = _connect(proxy)
        try:
            assert _statuses(conn, 10) == [200] * 5 + [400] * 5
            now[0] += 0.45  # 2.25 tokens
            assert _statuses(conn, 3) == [200, 200, 400]
            now[0] += 100  # refilled, but never beyond the burst
            assert _statuses(conn, 7) == [200] * 5 + [400] * 2
            assert _describe(conn, "AmazonSSM.GetParameters").status == 200  # no quota of its own
        finally:
            conn.close()
        assert proxy.throttled() == {"AmazonSSM.DescribeParameters": 8}
        assert proxy.counts() == {"AmazonSSM.DescribeParameters": 20, "AmazonSSM.GetParameters": 1}


def test_a_request_takes_a_token_from_every_quota_it_matches(moto_endpoint: str) -> None:
    with AwsProxy(moto_endpoint, clock=lambda: 0.0) as proxy:  # a frozen clock: no refill
        proxy.quota("AmazonSSM.", rate=1, burst=4)
        proxy.quota("AmazonSSM.GetParameters", rate=1, burst=2)
        conn = _connect(proxy)
        try:
            assert _statuses(conn, 3, "AmazonSSM.GetParameters") == [200, 200, 400]
            # The refused third took no token from the prefix's bucket: two are left.
            assert _statuses(conn, 3) == [200, 200, 400]
        finally:
            conn.close()
        assert proxy.throttled() == {"AmazonSSM.GetParameters": 1, "AmazonSSM.DescribeParameters": 1}


def test_quota_refills_on_the_real_clock(proxy: AwsProxy) -> None:
    started = time.monotonic()
    proxy.quota("AmazonSSM.DescribeParameters", rate=5, burst=5)
    conn = _connect(proxy)
    try:
        first = _statuses(conn, 10)
        burst_took = time.monotonic() - started
        time.sleep(0.42)  # at least 2 tokens more
        second = _statuses(conn, 5)
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    # Exact counts depend on how long the requests took: bound them by the tokens that time bought.
    assert first[:5] == [200] * 5
    assert 5 <= first.count(200) <= 5 + 5 * burst_took
    assert second.count(200) >= 2
    assert first.count(200) + second.count(200) <= 5 + 5 * elapsed
    assert proxy.throttled() == {"AmazonSSM.DescribeParameters": first.count(400) + second.count(400)}


def test_rules_and_quotas_are_thread_safe(moto_endpoint: str) -> None:
    with AwsProxy(moto_endpoint, clock=lambda: 0.0) as proxy:
        rule = proxy.add_fault(throttle(), target="AmazonSSM.", times=5)
        proxy.quota("AmazonSSM.", rate=1, burst=5)
        statuses: list[int] = []
        lock = threading.Lock()

        def call() -> None:
            conn = _connect(proxy)
            try:
                status = _describe(conn).status
            finally:
                conn.close()
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(statuses) == [200] * 5 + [400] * 15  # 5 by the rule, 10 by the quota
        assert rule.fired == 5
        assert proxy.throttled() == {"AmazonSSM.DescribeParameters": 15}


# ============================================================================== housekeeping


def test_clear_faults_restores_plain_forwarding(proxy: AwsProxy) -> None:
    proxy.add_fault(reset())
    rule = proxy.add_fault(throttle())
    proxy.quota("AmazonSSM.", rate=1, burst=1)
    assert proxy.faults[1] is rule
    assert len(proxy.faults) == 2
    proxy.clear_faults()
    assert not proxy.faults
    conn = _connect(proxy)
    try:
        assert _statuses(conn, 3) == [200] * 3
    finally:
        conn.close()


def test_reset_counts_keeps_rules(proxy: AwsProxy) -> None:
    proxy.add_fault(throttle())
    conn = _connect(proxy)
    try:
        assert _statuses(conn, 1) == [400]
        assert proxy.throttled() == {"AmazonSSM.DescribeParameters": 1}
        proxy.reset_counts()
        assert (proxy.counts(), proxy.throttled()) == ({}, {})
        assert _statuses(conn, 1) == [400]
    finally:
        conn.close()
    assert proxy.throttled() == {"AmazonSSM.DescribeParameters": 1}


@pytest.mark.parametrize(
    "mistake",
    [
        lambda p: server_error(404),
        lambda p: error(200, "Fine", "not an error"),
        lambda p: error(400, "", "no code"),
        lambda p: delay(-1),
        lambda p: p.add_fault(throttle(), times=0),
        lambda p: p.add_fault(throttle(), rate=1.5),
        lambda p: p.add_fault(throttle(), rng=random.Random(1)),
        lambda p: p.quota("AmazonSSM.", rate=0, burst=1),
        lambda p: p.quota("AmazonSSM.", rate=1, burst=0),
        lambda p: p.quota("", rate=1, burst=1),
    ],
)
def test_fault_arguments_are_checked(mistake: Any) -> None:
    with pytest.raises(ValueError):
        mistake(AwsProxy("http://127.0.0.1:1"))


def test_a_fault_must_be_built_by_its_functions() -> None:
    with pytest.raises(TypeError):
        AwsProxy("http://127.0.0.1:1").add_fault("throttle")  # type: ignore[arg-type]
