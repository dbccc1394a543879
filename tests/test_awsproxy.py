"""The delay proxy in front of moto: relays AWS calls, counts them, keeps connections alive,
and delays requests in flight side by side."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.awsproxy import AwsProxy
from tests.conftest import REGION, moto_api

# moto routes an unsigned-looking request by the service in the credential scope and does not
# check signatures unless its auth mode is on, so raw requests need only this much.
SSM_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0"
)


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


def _describe(conn: http.client.HTTPConnection, **extra: str) -> http.client.HTTPResponse:
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AmazonSSM.DescribeParameters",
        "Authorization": SSM_AUTH,
        **extra,
    }
    conn.request("POST", "/", body=b"{}", headers=headers)
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
