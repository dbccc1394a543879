"""The fast transport: SigV4 checked against botocore and AWS's vectors, transport selection,
retries and errors against a scripted local server, TLS, and a cold process.

Every server here listens on 127.0.0.1 only and is shut down by its fixture; every wait
is bounded.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import quote

import boto3.session
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from secretboot import ConfigurationError, _sigv4
from secretboot import _transport as t
from secretboot._boto3 import Boto3Transport
from secretboot._fast import FastTransport
from secretboot._fast import plan as fast_plan
from secretboot._resolve import default_transport
from secretboot._settings import Settings
from tests.conftest import moto_api

ROOT = Path(__file__).resolve().parent.parent

# AWS's SigV4 test suite credentials and clock.
EXAMPLE_KEY = "AKIDEXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS's published example
EXAMPLE_NOW = 1440938160  # 20150830T123600Z

KEY_ID = "AKIDFASTTEST"
SECRET = "fast/secret+key"
JSON_TYPE = "application/x-amz-json-1.1"
TARGETS = {"kms": "TrentService.Decrypt", "ssm": "AmazonSSM.GetParameters"}


# --- 1. SigV4 -------------------------------------------------------------------------------


def botocore_signed(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    token: str | None,
    region: str,
    service: str,
    now: float,
) -> dict[str, str]:
    """The headers botocore's ``SigV4Auth`` produces for this request at ``now``."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    instant = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=instant):
        botocore.auth.SigV4Auth(Credentials(access_key, secret_key, token), service, region).add_auth(request)
    return dict(request.headers.items())


def fast_signed(
    *,
    method: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    token: str | None,
    region: str,
    service: str,
    now: float,
    query: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return _sigv4.sign(
        method=method,
        host=host,
        path="/",
        headers=headers,
        body=body,
        access_key=access_key,
        secret_key=secret_key,
        session_token=token,
        region=region,
        service=service,
        query=query,
        now=now,
    )


def assert_same_as_botocore(
    *,
    scheme: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes,
    token: str | None,
    service: str,
    now: float,
    region: str = "us-east-1",
) -> dict[str, str]:
    ours = fast_signed(
        method="POST",
        host=host,
        headers=headers,
        body=body,
        access_key=KEY_ID,
        secret_key=SECRET,
        token=token,
        region=region,
        service=service,
        now=now,
    )
    theirs = botocore_signed(
        method="POST",
        url=f"{scheme}://{host}/",
        headers=headers,
        body=body,
        access_key=KEY_ID,
        secret_key=SECRET,
        token=token,
        region=region,
        service=service,
        now=now,
    )
    assert ours["Host"] == host
    # botocore signs Host from the URL without adding the header; everything else is identical.
    assert {k: v for k, v in ours.items() if k != "Host"} == theirs
    return ours


def _json_headers(service: str, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": JSON_TYPE,
        "X-Amz-Target": TARGETS[service],
        "User-Agent": "secretboot-tests",
        **extra,
    }


@pytest.mark.parametrize("service", ["kms", "ssm"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDK+session/token=="])
@pytest.mark.parametrize(
    ("scheme", "host"),
    [("http", "127.0.0.1:5000"), ("https", "kms.us-east-1.amazonaws.com"), ("https", "127.0.0.1:8443")],
)
def test_signature_matches_botocore(scheme: str, host: str, token: str | None, service: str) -> None:
    body = json.dumps({"CiphertextBlob": "AQICAHh0ZXN0", "Names": ["/a", "/b"]}).encode()
    signed = assert_same_as_botocore(
        scheme=scheme,
        host=host,
        headers=_json_headers(service),
        body=body,
        token=token,
        service=service,
        now=1_700_000_000.25,
    )
    assert signed["X-Amz-Date"] == "20231114T221320Z"
    assert ("X-Amz-Security-Token" in signed) is (token is not None)
    assert f"Credential={KEY_ID}/20231114/us-east-1/{service}/aws4_request" in signed["Authorization"]


@pytest.mark.parametrize(
    "extra",
    [
        {"X-Amz-Meta-Spaces": "a    b     c"},
        {"X-Amz-Meta-Spaces": "   leading and trailing   "},
        {"X-Amz-Meta-Tabs": "tab\t\tseparated  value"},
        {"X-Custom": "x", "x-amz-meta-lower": "UPPER lower"},
    ],
)
def test_header_whitespace_matches_botocore(extra: dict[str, str]) -> None:
    signed = assert_same_as_botocore(
        scheme="http",
        host="127.0.0.1:5000",
        headers=_json_headers("kms", **extra),
        body=b"{}",
        token="token  with   runs",
        service="kms",
        now=EXAMPLE_NOW,
    )
    names = signed["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {name.lower() for name in extra} <= set(names)
    assert "user-agent" not in names


_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_TOKENS = st.text(_PRINTABLE, min_size=1, max_size=80).filter(lambda s: s == s.strip())


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=512),
    token=st.none() | _TOKENS,
    header=st.text(_PRINTABLE, max_size=40),
    service=st.sampled_from(["kms", "ssm"]),
    now=st.integers(min_value=0, max_value=4_102_444_799),
)
def test_signature_matches_botocore_property(
    body: bytes, token: str | None, header: str, service: str, now: int
) -> None:
    assert_same_as_botocore(
        scheme="http",
        host="127.0.0.1:5000",
        headers=_json_headers(service, **{"X-Amz-Meta-Extra": header}),
        body=body,
        token=token,
        service=service,
        now=now,
        region="eu-west-3",
    )


def test_signing_keys_are_per_region_and_service() -> None:
    """Derived keys are cached per day: a cache keyed too coarsely signs with the wrong key."""
    for now in (EXAMPLE_NOW, EXAMPLE_NOW + 60, EXAMPLE_NOW + 86_400):
        for region in ("us-east-1", "eu-west-1", "us-east-1"):
            for service in ("kms", "ssm", "kms"):
                assert_same_as_botocore(
                    scheme="https",
                    host=f"{service}.{region}.amazonaws.com",
                    headers=_json_headers(service),
                    body=b"{}",
                    token=None,
                    service=service,
                    now=now,
                    region=region,
                )


@pytest.mark.parametrize(
    "query",
    [
        {"Version": "2010-05-08", "Action": "ListUsers"},
        {"b": "2", "a": "1 space", "c~": "slash/plus+equals=", "A": "upper", "é": "ü"},
        {"empty": "", "Param2": "value2", "Param1": "value1"},
    ],
)
def test_query_matches_botocore(query: dict[str, str]) -> None:
    ours = fast_signed(
        method="GET",
        host="iam.amazonaws.com",
        headers={},
        body=b"",
        access_key=EXAMPLE_KEY,
        secret_key=EXAMPLE_SECRET,
        token=None,
        region="us-east-1",
        service="iam",
        now=EXAMPLE_NOW,
        query=query,
    )
    encoded = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())
    theirs = botocore_signed(
        method="GET",
        url=f"https://iam.amazonaws.com/?{encoded}",
        headers={},
        body=b"",
        access_key=EXAMPLE_KEY,
        secret_key=EXAMPLE_SECRET,
        token=None,
        region="us-east-1",
        service="iam",
        now=EXAMPLE_NOW,
    )
    assert ours["Authorization"] == theirs["Authorization"]


def test_aws_vector_get_vanilla() -> None:
    signed = fast_signed(
        method="GET",
        host="example.amazonaws.com",
        headers={},
        body=b"",
        access_key=EXAMPLE_KEY,
        secret_key=EXAMPLE_SECRET,
        token=None,
        region="us-east-1",
        service="service",
        now=EXAMPLE_NOW,
    )
    assert signed["X-Amz-Date"] == "20150830T123600Z"
    assert signed["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_aws_vector_iam_list_users() -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    query = {"Action": "ListUsers", "Version": "2010-05-08"}
    signed = fast_signed(
        method="GET",
        host="iam.amazonaws.com",
        headers=headers,
        body=b"",
        access_key=EXAMPLE_KEY,
        secret_key=EXAMPLE_SECRET,
        token=None,
        region="us-east-1",
        service="iam",
        now=EXAMPLE_NOW,
        query=query,
    )
    assert signed["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )
    # botocore agrees on the same vector.
    theirs = botocore_signed(
        method="GET",
        url="https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        headers=headers,
        body=b"",
        access_key=EXAMPLE_KEY,
        secret_key=EXAMPLE_SECRET,
        token=None,
        region="us-east-1",
        service="iam",
        now=EXAMPLE_NOW,
    )
    assert theirs["Authorization"] == signed["Authorization"]


def test_signing_does_not_mutate_headers_and_uses_the_clock() -> None:
    headers = _json_headers("kms")
    before = dict(headers)
    low = time.time()
    signed = _sigv4.sign(
        method="POST",
        host="h",
        path="/",
        headers=headers,
        body=b"",
        access_key=KEY_ID,
        secret_key=SECRET,
        session_token=None,
        region="us-east-1",
        service="kms",
    )
    assert headers == before
    stamp = calendar.timegm(time.strptime(signed["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    assert int(low) - 1 <= stamp <= time.time() + 1


# --- 2. Transport selection ----------------------------------------------------------------

BASE_ENV = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}
LOCAL = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}


def _select(env: Mapping[str, str]) -> Any:
    return default_transport(Settings(env))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any name lookup or connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"network I/O while building a transport: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    "env",
    [
        BASE_ENV,
        {**BASE_ENV, **LOCAL},
        {**BASE_ENV, "AWS_SESSION_TOKEN": "token"},
        {**{k: v for k, v in BASE_ENV.items() if k != "AWS_REGION"}, "AWS_DEFAULT_REGION": "eu-west-1"},
        {**BASE_ENV, "AWS_REGION": "ap-southeast-2"},
        {**BASE_ENV, "AWS_REGION": "cn-north-1", **LOCAL},
        {
            **BASE_ENV,
            "AWS_REGION": "us-gov-west-1",
            "AWS_ENDPOINT_URL_KMS": "https://k",
            "AWS_ENDPOINT_URL_SSM": "https://s",
        },
        {**BASE_ENV, "AWS_USE_FIPS_ENDPOINT": "false", "NO_PROXY": "127.0.0.1"},
    ],
)
@pytest.mark.parametrize("choice", [None, "", "auto", "fast", " Fast "])
def test_fast_where_it_can_serve(env: dict[str, str], choice: str | None, no_network: None) -> None:
    if choice is not None:
        env = {**env, "SECRETBOOT_TRANSPORT": choice}
    assert type(_select(env)) is FastTransport


@pytest.mark.parametrize("env", [BASE_ENV, {**BASE_ENV, **LOCAL}, {"AWS_PROFILE": "dev"}])
def test_boto3_when_forced(env: dict[str, str], no_network: None) -> None:
    assert type(_select({**env, "SECRETBOOT_TRANSPORT": "boto3"})) is Boto3Transport


UNSERVABLE = {
    "profile that does not exist": {"AWS_PROFILE": "no-such-profile-anywhere", "AWS_REGION": "us-east-1"},
    "profile only": {"AWS_PROFILE": "dev", "AWS_REGION": "us-east-1"},
    "no secret key": {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_REGION": "us-east-1"},
    "no region": {k: v for k, v in BASE_ENV.items() if k != "AWS_REGION"},
    "fips": {**BASE_ENV, "AWS_USE_FIPS_ENDPOINT": "true"},
    "fips upper": {**BASE_ENV, "AWS_USE_FIPS_ENDPOINT": "TRUE", **LOCAL},
    "dualstack": {**BASE_ENV, "AWS_USE_DUALSTACK_ENDPOINT": "true"},
    "HTTPS_PROXY": {**BASE_ENV, "HTTPS_PROXY": "http://127.0.0.1:3128"},
    "https_proxy": {**BASE_ENV, "https_proxy": "http://127.0.0.1:3128", **LOCAL},
    "china": {**BASE_ENV, "AWS_REGION": "cn-north-1"},
    "govcloud": {**BASE_ENV, "AWS_REGION": "us-gov-west-1"},
    "iso": {**BASE_ENV, "AWS_REGION": "us-iso-east-1"},
    "govcloud, kms endpoint only": {
        **BASE_ENV,
        "AWS_REGION": "us-gov-west-1",
        "AWS_ENDPOINT_URL_KMS": "http://k",
    },
    "ignored endpoint": {
        **BASE_ENV,
        "AWS_REGION": "cn-north-1",
        **LOCAL,
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
    },
    "not http": {**BASE_ENV, "AWS_ENDPOINT_URL": "ftp://127.0.0.1:21"},
}


@pytest.mark.parametrize("env", UNSERVABLE.values(), ids=UNSERVABLE.keys())
@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_falls_back_to_boto3(env: dict[str, str], choice: str | None, no_network: None) -> None:
    if choice is not None:
        env = {**env, "SECRETBOOT_TRANSPORT": choice}
    assert type(_select(env)) is Boto3Transport


@pytest.mark.parametrize("env", UNSERVABLE.values(), ids=UNSERVABLE.keys())
def test_forcing_fast_where_it_cannot_serve_is_a_configuration_error(
    env: dict[str, str], no_network: None
) -> None:
    with pytest.raises(ConfigurationError) as info:
        _select({**env, "SECRETBOOT_TRANSPORT": "fast"})
    assert "SECRETBOOT_TRANSPORT" in str(info.value)
    assert SECRET not in str(info.value)


def test_no_credentials_anywhere_is_botocores_last_resort_instance_metadata(no_network: None) -> None:
    # botocore ends its chain with the instance metadata service; so does the fast path,
    # deciding without the network (the fetch happens at the first request).
    chosen = fast_plan({"AWS_REGION": "us-east-1", **LOCAL, "HOME": "/nonexistent"})
    assert not isinstance(chosen, str)
    assert (chosen[0].name, chosen[1]) == ("iam-role", "us-east-1")
    assert type(_select({"AWS_REGION": "us-east-1", **LOCAL, "HOME": "/nonexistent"})) is FastTransport
    disabled = {"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "HOME": "/nonexistent"}
    assert isinstance(fast_plan(disabled), str)


@pytest.mark.parametrize("value", ["turbo", "boto", "http", "fast,boto3", "1"])
def test_invalid_transport_value(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SECRETBOOT_TRANSPORT"):
        _select({**BASE_ENV, "SECRETBOOT_TRANSPORT": value})


def test_fast_transport_refuses_an_environment_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="cannot be used"):
        FastTransport(UNSERVABLE["china"])


# --- 3. A scripted server ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", JSON_TYPE),)
    # "": keep alive; "header": say Connection: close but leave the socket open (so only a
    # client that honours the header stops using it); "silent": close without saying so;
    # "reset": close without saying so, with a TCP reset; "hang": never answer (until the
    # server stops, at most 3 s).
    close: str = ""


def ok(payload: object, **kwargs: Any) -> Reply:
    return Reply(200, json.dumps(payload).encode(), **kwargs)


def plaintext(value: bytes, **kwargs: Any) -> Reply:
    return ok({"KeyId": "arn:aws:kms:us-east-1:123456789012:key/k", "Plaintext": b64(value)}, **kwargs)


def aws_error(status: int, code: str, message: str = "") -> Reply:
    return Reply(status, json.dumps({"__type": code, "message": message}).encode())


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    connection: int  # which accepted TCP connection carried it


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next scripted ``Reply``; records requests and connections."""

    daemon_threads = True

    def __init__(
        self, script: list[Reply] | Callable[[Received], Reply], tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script = script
        self.tls = tls
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.accepted = 0
        self.closed = 0
        self.release = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.received)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(5)  # no handler thread can outlive the test by long
        with self.lock:
            self.accepted += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        with self.lock:
            self._sockets.append(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.lock:
            self.closed += 1

    def connection_index(self, sock: socket.socket) -> int:
        with self.lock:
            return self._sockets.index(sock)

    def answer(self, received: Received) -> Reply:
        with self.lock:
            self.received.append(received)
            if callable(self.script):
                return self.script(received)
            if self.script:
                return self.script.pop(0)
        return aws_error(400, "ScriptExhausted")

    def wait_closed(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.lock:
                if self.closed >= count:
                    return
            time.sleep(0.01)
        raise AssertionError(f"the server closed {self.closed} connections, expected {count}")

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:  # wake handler threads blocked on kept-alive connections
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._thread.join(5)


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits on a delayed ACK (~40 ms)
    server: ScriptedServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = Received(
            self.command,
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
            body,
            self.server.connection_index(self.request),
        )
        reply = self.server.answer(received)
        if reply.close == "hang":
            self.server.release.wait(3)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.close == "header":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)
        if reply.close == "header":
            self.close_connection = False  # send_header set it; keep reading this socket
        if reply.close == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if reply.close in ("silent", "reset"):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BlackHole:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: list[Reply] | Callable[[Received], Reply], tls: ssl.SSLContext | None = None) -> Any:
        server = ScriptedServer(script, tls)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


class Made:
    """A ``FastTransport`` with a fixed jitter of 1.0 and recorded sleeps.

    Its rate limiters are off, so the sleeps are the backoff schedule alone (the limiters
    are tested in test_retry.py and test_reliability.py).
    """

    def __init__(self, env: Mapping[str, str], rand: Callable[[], float] = lambda: 1.0) -> None:
        self.sleeps: list[float] = []
        self.transport = FastTransport(env, rand=rand, sleep=self.sleeps.append, adaptive=False)


@pytest.fixture
def make() -> Iterator[Callable[..., Made]]:
    made: list[Made] = []

    def build(url: str | None, *, rand: Callable[[], float] = lambda: 1.0, **extra: str) -> Made:
        env = {**BASE_ENV, **({"AWS_ENDPOINT_URL": url} if url else {}), **extra}
        item = Made(env, rand)
        made.append(item)
        return item

    yield build
    for item in made:  # close kept-alive client connections
        for pool in item.transport._pools.values():
            for conn in pool._idle:
                conn.close()


def decrypt(made: Made, blob: bytes = b"ciphertext-blob") -> bytes:
    plaintext, _ = made.transport.decrypt(blob, context=None, key_id=None)
    return plaintext


def assert_verifiable(received: Received, *, service: str, secret: str = SECRET) -> None:
    """Check the signature as a server would: re-sign what arrived, with both signers."""
    auth = received.headers["authorization"]
    credential = auth.split("Credential=")[1].split(",")[0]
    access_key, date, region, signed_service, terminator = credential.split("/")
    assert (signed_service, terminator) == (service, "aws4_request")
    amz_date = received.headers["x-amz-date"]
    assert date == amz_date[:8]
    now = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    signed_names = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-amz-target", "content-type"} <= set(signed_names)
    token = received.headers.get("x-amz-security-token")
    if token is not None:
        assert "x-amz-security-token" in signed_names
    host = received.headers["host"]
    headers = {
        name: received.headers[name]
        for name in signed_names
        if name not in ("host", "x-amz-date", "x-amz-security-token")
    }
    ours = _sigv4.sign(
        method=received.method,
        host=host,
        path=received.path,
        headers=headers,
        body=received.body,
        access_key=access_key,
        secret_key=secret,
        session_token=token,
        region=region,
        service=service,
        now=now,
    )
    assert ours["Authorization"] == auth
    theirs = botocore_signed(
        method=received.method,
        url=f"http://{host}{received.path}",
        headers=headers,
        body=received.body,
        access_key=access_key,
        secret_key=secret,
        token=token,
        region=region,
        service=service,
        now=now,
    )
    assert theirs["Authorization"] == auth


def test_decrypt_request_and_answer(serve: Any, make: Any) -> None:
    server = serve([plaintext(b"hello \x00 world")])
    made = make(server.url)
    blob = b"\x01\x02\x02\x00x-blob"
    answer, _ = made.transport.decrypt(blob, context={"LambdaFunctionName": "fn"}, key_id="alias/app")
    assert answer == b"hello \x00 world"
    assert (made.sleeps, made.transport.retries, server.requests) == ([], 0, 1)
    (received,) = server.received
    assert (received.method, received.path) == ("POST", "/")
    assert received.headers["x-amz-target"] == "TrentService.Decrypt"
    assert received.headers["content-type"] == JSON_TYPE
    assert received.headers["host"] == server.url.split("//")[1]
    scope = f"Credential={KEY_ID}/{received.headers['x-amz-date'][:8]}/us-east-1/kms/aws4_request,"
    assert scope in received.headers["authorization"]
    assert "x-amz-security-token" not in received.headers
    assert json.loads(received.body) == {
        "CiphertextBlob": b64(blob),
        "EncryptionContext": {"LambdaFunctionName": "fn"},
        "KeyId": "alias/app",
    }
    assert_verifiable(received, service="kms")


def test_decrypt_without_context_or_key_sends_only_the_blob(serve: Any, make: Any) -> None:
    server = serve([plaintext(b"x")])
    made = make(server.url)
    assert made.transport.decrypt(b"blob", context={}, key_id=None)[0] == b"x"
    assert json.loads(server.received[0].body) == {"CiphertextBlob": b64(b"blob")}


def test_get_parameters_request_and_answer(serve: Any, make: Any) -> None:
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/app/db"
    server = serve(
        [
            ok(
                {
                    "Parameters": [
                        {
                            "Name": "/app/db",
                            "ARN": arn,
                            "Value": "s3cr3t",
                            "Type": "SecureString",
                            "Version": 2,
                        },
                        {"Name": "plain", "Value": "p", "Type": "String", "Version": 1},
                    ],
                    "InvalidParameters": ["/app/missing", "/app/db:7"],
                }
            )
        ]
    )
    made = make(server.url, AWS_SESSION_TOKEN="session/token+with  spaces==")
    names = ["/app/db", "plain", "/app/missing", "/app/db:7"]
    answer = made.transport.get_parameters(names)
    assert list(answer.found) == [t.Parameter("/app/db", arn, "s3cr3t"), t.Parameter("plain", "", "p")]
    assert list(answer.invalid) == ["/app/missing", "/app/db:7"]
    (received,) = server.received
    assert received.headers["x-amz-target"] == "AmazonSSM.GetParameters"
    assert received.headers["content-type"] == JSON_TYPE
    assert received.headers["x-amz-security-token"] == "session/token+with  spaces=="
    assert json.loads(received.body) == {"Names": names, "WithDecryption": True}
    assert_verifiable(received, service="ssm")


def test_service_endpoint_overrides_the_general_one(serve: Any, make: Any) -> None:
    general = serve([plaintext(b"from general")])
    ssm = serve([ok({"Parameters": [], "InvalidParameters": ["/x"]})])
    made = make(general.url, AWS_ENDPOINT_URL_SSM=ssm.url)
    assert decrypt(made) == b"from general"
    assert list(made.transport.get_parameters(["/x"]).invalid) == ["/x"]
    assert (general.requests, ssm.requests) == (1, 1)
    assert ssm.received[0].headers["host"] == ssm.url.split("//")[1]


THROTTLE_JSON = aws_error(400, "ThrottlingException", "Rate exceeded")
THROTTLE_TYPED = aws_error(400, "com.amazonaws.kms#ThrottlingException")
THROTTLE_HEADER = Reply(
    400,
    b'{"message": "Rate exceeded"}',
    (("Content-Type", JSON_TYPE), ("x-amzn-ErrorType", "ThrottlingException:http://internal.amazon.com/")),
)


@pytest.mark.parametrize(
    "throttle",
    [THROTTLE_JSON, THROTTLE_TYPED, THROTTLE_HEADER],
    ids=["json", "typed", "header"],
)
def test_throttling_backs_off_and_succeeds(serve: Any, make: Any, throttle: Reply) -> None:
    server = serve([throttle, throttle, plaintext(b"after throttling")])
    made = make(server.url)
    assert decrypt(made) == b"after throttling"
    assert made.sleeps == [1.0, 2.0]
    assert made.transport.retries == 2
    assert server.requests == 3
    # Every attempt is signed afresh and verifiable.
    for received in server.received:
        assert_verifiable(received, service="kms")


def test_throttling_until_the_last_attempt_is_throttled(serve: Any, make: Any) -> None:
    server = serve([THROTTLE_JSON] * 3 + [plaintext(b"too late")])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == "Throttled"
    assert (made.sleeps, server.requests) == ([1.0, 2.0], 3)


def test_jitter_scales_the_backoff(serve: Any, make: Any) -> None:
    server = serve([THROTTLE_JSON, aws_error(503, "ServiceUnavailable"), plaintext(b"ok")])
    made = make(server.url, rand=lambda: 0.25)
    assert decrypt(made) == b"ok"
    assert made.sleeps == [0.25, 0.025]


@pytest.mark.parametrize(
    "transient",
    [
        Reply(503, b""),
        aws_error(503, "ServiceUnavailable"),
        aws_error(500, "KMSInternalException"),
        Reply(502, b"<html>bad gateway</html>", (("Content-Type", "text/html"),)),
        aws_error(504, "GatewayTimeout"),
        aws_error(400, "RequestTimeoutException"),
    ],
    ids=["503-empty", "503-json", "500-json", "502-html", "504", "RequestTimeoutException"],
)
def test_transient_errors_back_off_briefly_and_succeed(serve: Any, make: Any, transient: Reply) -> None:
    server = serve([transient, transient, plaintext(b"after 5xx")])
    made = make(server.url)
    assert decrypt(made) == b"after 5xx"
    assert made.sleeps == [0.05, 0.1]
    assert made.transport.retries == 2
    assert server.requests == 3


@pytest.mark.parametrize(
    "failure", [Reply(500, b""), aws_error(500, "InternalFailure")], ids=["empty", "json"]
)
def test_three_server_errors_give_up(serve: Any, make: Any, failure: Reply) -> None:
    server = serve([failure] * 3 + [plaintext(b"never fetched")])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == "ServiceError"
    assert server.requests == 3
    assert made.sleeps == [0.05, 0.1]


DENIED_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>Sender</Type>'
    b"<Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/reader is not authorized"
    b"</Message></Error><RequestId>abc</RequestId></ErrorResponse>"
)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (aws_error(400, "AccessDeniedException", "not allowed"), "AccessDenied"),
        (aws_error(400, "InvalidCiphertextException"), "InvalidCiphertext"),
        (aws_error(400, "IncorrectKeyException"), "IncorrectKey"),
        (aws_error(400, "DisabledException"), "KeyUnavailable"),
        (aws_error(400, "UnrecognizedClientException"), "InvalidCredentials"),
        (aws_error(400, "com.amazon.coral.service#InvalidSignatureException"), "InvalidCredentials"),
        (aws_error(400, "ValidationException"), "InvalidRequest"),
        (aws_error(404, "SomethingNew"), "SomethingNew"),
        (Reply(403, DENIED_XML, (("Content-Type", "text/xml"),)), "AccessDenied"),
        (Reply(403, b"", ()), "AccessDenied"),
        (Reply(400, b"not json, not xml", ()), "400"),
        # Like botocore, a body that is not JSON is known only by its status.
        (
            Reply(
                400,
                b"<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>",
                (("Content-Type", "text/xml"),),
            ),
            "400",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_client_errors_are_not_retried(serve: Any, make: Any, reply: Reply, reason: str) -> None:
    server = serve([reply, plaintext(b"never fetched")])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == reason
    assert (server.requests, made.sleeps, made.transport.retries) == (1, [], 0)


def test_error_messages_are_scrubbed(serve: Any, make: Any) -> None:
    blob_like = "A" * 20 + "QICAHhsecretlookingbase64" + "Z" * 20
    server = serve([aws_error(400, "AccessDeniedException", f"cannot decrypt {blob_like} for you")])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert blob_like not in str(info.value)
    assert "cannot decrypt" in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<html>captive portal</html>", (("Content-Type", "text/html"),)),
        Reply(200, b"", ()),
        Reply(200, b"\xff\xfe\x00garbage", ()),
        ok({"KeyId": "k"}),
        ok({"Plaintext": "not base64!"}),
        ok({"Plaintext": 42}),
        ok(["Plaintext"]),
        ok(None),
    ],
    ids=["html", "empty", "binary", "no-plaintext", "bad-base64", "number", "list", "null"],
)
def test_malformed_success_is_a_service_error(serve: Any, make: Any, reply: Reply) -> None:
    server = serve([reply, plaintext(b"never fetched")])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == "ServiceError"
    assert (server.requests, made.sleeps) == (1, [])


@pytest.mark.parametrize(
    "payload",
    [
        {"Parameters": [{"Value": "no name"}]},
        {"Parameters": [{"Name": "/a"}]},
        {"Parameters": ["not an object"]},
        {"Parameters": None},
        [],
        b"<html>not json</html>",
    ],
    ids=["no-name", "no-value", "string", "null", "list", "not-json"],
)
def test_malformed_get_parameters_is_a_service_error(serve: Any, make: Any, payload: object) -> None:
    server = serve([Reply(200, payload) if isinstance(payload, bytes) else ok(payload)])
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        made.transport.get_parameters(["/a"])
    assert info.value.reason == "ServiceError"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_connection_refused(make: Any, closed_port: int) -> None:
    made = make(f"http://127.0.0.1:{closed_port}")
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == "ConnectionError"
    assert made.sleeps == [0.05, 0.1]  # three attempts
    assert made.transport.retries == 2


def test_read_timeout(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(t, "READ_TIMEOUT", 0.3)
    hole = BlackHole()
    try:
        made = make(hole.url)
        start = time.monotonic()
        with pytest.raises(t.TransportError) as info:
            decrypt(made)
        elapsed = time.monotonic() - start
    finally:
        hole.stop()
    assert info.value.reason == "Timeout"
    assert made.sleeps == [0.05, 0.1]
    assert len(hole.held) == 3
    assert 0.85 <= elapsed < 3.0


def test_connect_timeout(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener whose backlog is full drops further connection attempts until they time out."""
    monkeypatch.setattr(t, "CONNECT_TIMEOUT", 0.2)
    monkeypatch.setattr(t, "READ_TIMEOUT", 1.0)
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        made = make(f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(t.TransportError) as info:
            decrypt(made)
        elapsed = time.monotonic() - start
    assert info.value.reason == "Timeout"
    assert made.sleeps == [0.05, 0.1]
    assert 0.55 <= elapsed < 1.5  # three connects of 0.2 s


def test_keep_alive_reuses_one_connection(serve: Any, make: Any) -> None:
    server = serve(lambda received: plaintext(b"again"))
    made = make(server.url)
    for _ in range(3):
        assert decrypt(made) == b"again"
    assert (server.requests, server.accepted) == (3, 1)
    assert {r.connection for r in server.received} == {0}
    # Each service keeps its own connections (as boto3's clients do), also reused.
    made.transport.get_parameters(["/a"])
    made.transport.get_parameters(["/b"])
    assert (server.requests, server.accepted) == (5, 2)
    assert [r.connection for r in server.received] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("close", ["silent", "reset"])
def test_idle_connection_closed_by_the_server_is_replaced_silently(serve: Any, make: Any, close: str) -> None:
    server = serve([plaintext(b"first", close=close), plaintext(b"second")])
    made = make(server.url)
    assert decrypt(made) == b"first"
    server.wait_closed(1)
    assert decrypt(made) == b"second"
    assert (made.transport.retries, made.sleeps) == (0, [])
    assert (server.requests, server.accepted) == (2, 2)
    assert [r.connection for r in server.received] == [0, 1]


@pytest.mark.parametrize("close", ["silent", "reset"])
def test_idle_tls_connection_closed_by_the_server_is_replaced_silently(
    serve: Any, make: Any, close: str, tls_server: ssl.SSLContext, certificate: Certificate
) -> None:
    server = serve([plaintext(b"first", close=close), plaintext(b"second")], tls=tls_server)
    made = make(server.url, AWS_CA_BUNDLE=str(certificate.cert))
    assert decrypt(made) == b"first"
    server.wait_closed(1)
    assert decrypt(made) == b"second"
    assert (made.transport.retries, made.sleeps) == (0, [])
    assert (server.requests, server.accepted) == (2, 2)


def test_each_attempt_is_signed_afresh(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff moves a fake clock on by an hour a second: every attempt carries its own date."""
    clock = [float(EXAMPLE_NOW)]
    fake_time = SimpleNamespace(time=lambda: clock[0], gmtime=time.gmtime, strftime=time.strftime)
    monkeypatch.setattr(_sigv4, "time", fake_time)

    def sleep(seconds: float) -> None:
        clock[0] += seconds * 3600

    server = serve([THROTTLE_JSON, THROTTLE_JSON, plaintext(b"late")])
    transport = FastTransport({**BASE_ENV, "AWS_ENDPOINT_URL": server.url}, rand=lambda: 1.0, sleep=sleep)
    assert transport.decrypt(b"blob", context=None, key_id=None)[0] == b"late"
    dates = [r.headers["x-amz-date"] for r in server.received]
    assert dates == ["20150830T123600Z", "20150830T133600Z", "20150830T153600Z"]
    for received in server.received:
        assert_verifiable(received, service="kms")
    for conn in transport._pools["kms"]._idle:
        conn.close()


def test_connection_close_is_not_reused(serve: Any, make: Any) -> None:
    server = serve([plaintext(b"first", close="header"), plaintext(b"second"), plaintext(b"third")])
    made = make(server.url)
    assert [decrypt(made) for _ in range(3)] == [b"first", b"second", b"third"]
    assert [r.connection for r in server.received] == [0, 1, 1]
    assert (made.transport.retries, made.sleeps) == (0, [])


def test_connection_after_close_gets_the_read_timeout(
    serve: Any, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Connection: close, every later attempt is a fresh connection with the read timeout."""
    monkeypatch.setattr(t, "READ_TIMEOUT", 0.2)
    hang = Reply(close="hang")
    server = serve([plaintext(b"first", close="header"), hang, hang, hang])
    made = make(server.url)
    assert decrypt(made) == b"first"
    start = time.monotonic()
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    elapsed = time.monotonic() - start
    assert info.value.reason == "Timeout"
    assert [r.connection for r in server.received] == [0, 1, 2, 3]
    assert 0.55 <= elapsed < 1.5  # three reads of 0.2 s, not the 2 s connect timeout


def test_concurrent_calls_share_the_pool(serve: Any, make: Any) -> None:
    def echo(received: Received) -> Reply:
        time.sleep(0.005)
        return ok({"Plaintext": json.loads(received.body)["CiphertextBlob"]})

    server = serve(echo)
    made = make(server.url)
    results: dict[bytes, bytes] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for call in range(4):
                blob = f"blob-{worker}-{call}".encode()
                results[blob] = decrypt(made, blob)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert len(results) == 32 and all(key == value for key, value in results.items())
    assert server.requests == 32
    assert 1 <= server.accepted <= 8


# --- 4. TLS -----------------------------------------------------------------------------------

AWS_HOSTS = ("kms.us-east-1.amazonaws.com", "ssm.us-east-1.amazonaws.com")


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and the us-east-1 KMS and SSM hosts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secretboot test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *(x509.DNSName(h) for h in AWS_HOSTS)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    paths = Certificate(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_server(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


def test_tls_untrusted_certificate_is_refused(serve: Any, make: Any, tls_server: ssl.SSLContext) -> None:
    server = serve([plaintext(b"must not be read")] * 3, tls=tls_server)
    made = make(server.url)
    with pytest.raises(t.TransportError) as info:
        decrypt(made)
    assert info.value.reason == "ConnectionError"
    assert server.requests == 0
    assert server.accepted == 3
    assert made.sleeps == [0.05, 0.1]


def test_tls_with_ca_bundle(
    serve: Any, make: Any, tls_server: ssl.SSLContext, certificate: Certificate
) -> None:
    server = serve([plaintext(b"over tls"), plaintext(b"again")], tls=tls_server)
    made = make(server.url, AWS_CA_BUNDLE=str(certificate.cert))
    assert decrypt(made) == b"over tls"
    assert decrypt(made) == b"again"
    assert (server.requests, server.accepted, made.sleeps) == (2, 1, [])
    assert_verifiable(server.received[0], service="kms")


def test_default_endpoint_is_the_regional_https_host(
    serve: Any,
    make: Any,
    tls_server: ssl.SSLContext,
    certificate: Certificate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No endpoint set: https://kms.us-east-1.amazonaws.com, verified by name and sent SNI.

    Connections to that name are redirected to the local server; anything else is refused.
    """
    sni: list[str | None] = []
    tls_server.sni_callback = lambda sock, name, context: sni.append(name)
    server = serve([plaintext(b"from the regional host")], tls=tls_server)
    port = int(server.server_address[1])
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo
    dialled: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        dialled.append(address)
        assert address == ("kms.us-east-1.amazonaws.com", 443)
        return real_create_connection(("127.0.0.1", port), *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "127.0.0.1", f"lookup of {host!r}"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    made = make(None, AWS_CA_BUNDLE=str(certificate.cert))
    assert decrypt(made) == b"from the regional host"
    assert dialled == [("kms.us-east-1.amazonaws.com", 443)]
    assert sni == ["kms.us-east-1.amazonaws.com"]
    (received,) = server.received
    assert received.headers["host"] == "kms.us-east-1.amazonaws.com"
    assert_verifiable(received, service="kms")


def test_ipv6_endpoint_host_header(serve: Any, make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL=http://[::1]:PORT, with the connection redirected to the IPv4 server."""
    server = serve([plaintext(b"over ipv6")])
    port = int(server.server_address[1])
    real_create_connection = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        assert address == ("::1", port)
        return real_create_connection(("127.0.0.1", port), *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    made = make(f"http://[::1]:{port}")
    assert decrypt(made) == b"over ipv6"
    (received,) = server.received
    assert received.headers["host"] == f"[::1]:{port}"
    assert_verifiable(received, service="kms")


# --- 5. Out of process ---------------------------------------------------------------------

CHILD = """
import json, sys
import secretboot
keyring = secretboot.bootstrap()
print(json.dumps({
    "db": keyring["DB_PASSWORD"],
    "api": keyring["API_KEY"],
    "loaded": sorted(m for m in ("boto3", "botocore") if m in sys.modules),
}))
"""


@pytest.mark.parametrize(("choice", "loaded"), [(None, []), ("fast", []), ("boto3", ["boto3", "botocore"])])
def test_cold_process(moto_endpoint: str, tmp_path: Path, choice: str | None, loaded: list[str]) -> None:
    moto_api(moto_endpoint, "reset")
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    kms = session.client("kms", endpoint_url=moto_endpoint)
    ssm = session.client("ssm", endpoint_url=moto_endpoint)
    key = kms.create_key(Description="cold process")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"kms-plaintext")["CiphertextBlob"]
    ssm.put_parameter(Name="/cold/api-key", Value="ssm-plaintext", Type="SecureString")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "DB_PASSWORD": "kms:" + b64(blob),
        "API_KEY": "ssm:/cold/api-key",
    }
    if choice is not None:
        env["SECRETBOOT_TRANSPORT"] = choice
    child = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result == {"db": "kms-plaintext", "api": "ssm-plaintext", "loaded": loaded}


# --- 6. Oversized answers ------------------------------------------------------------------

HUGE = 64 << 20  # what the hostile endpoint sends: four times MAX_ANSWER
_MIB = b"x" * (1 << 20)
SMALL_ANSWER = json.dumps(
    {
        "Parameters": [{"Name": f"/big/{n}", "Value": "v", "ARN": ""} for n in range(3)],
        "InvalidParameters": [],
    }
).encode()


class BigAnswers(ThreadingHTTPServer):
    """Answers the first ``small`` requests with a real GetParameters answer, then with ``mode``.

    "chunked": 64 MiB in 1 MiB chunks; "close": 64 MiB with no length, ended by closing;
    "length": a Content-Length of 64 MiB that a few bytes follow, then nothing.
    """

    daemon_threads = True

    def __init__(self, mode: str, small: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _BigHandler)
        self.mode = mode
        self.small = small
        self.requests = 0
        self.sent = 0  # bytes of oversized body written before the client hung up
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _BigHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BigAnswers

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.connection.settimeout(5)
        with self.server.lock:
            self.server.requests += 1
            small = self.server.requests <= self.server.small
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        if small:
            self.send_header("Content-Length", str(len(SMALL_ANSWER)))
            self.end_headers()
            self.wfile.write(SMALL_ANSWER)
            return
        mode = self.server.mode
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif mode == "length":
            self.send_header("Content-Length", str(HUGE))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        head = b'{"Parameters": [{"Name": "/big/0", "Value": "'
        with contextlib.suppress(OSError):
            if mode == "length":
                self.wfile.write(head)
                self.wfile.flush()
                self.rfile.read(1)  # until the client hangs up (or 5 s)
                return
            for _ in range(HUGE // len(_MIB)):
                if mode == "chunked":
                    self.wfile.write(b"%x\r\n" % len(_MIB) + _MIB + b"\r\n")
                else:
                    self.wfile.write(_MIB)
                with self.server.lock:
                    self.server.sent += len(_MIB)
            if mode == "chunked":
                self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def big_answers() -> Iterator[Callable[..., BigAnswers]]:
    servers: list[BigAnswers] = []

    def start(mode: str, small: int = 0) -> BigAnswers:
        servers.append(BigAnswers(mode, small))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_max_answer_is_well_above_the_largest_real_answer() -> None:
    # 20 secrets of 64 KiB, every byte a control character JSON writes as \u00XX.
    worst_batch = 20 * 6 * 65536
    assert worst_batch * 2 <= t.MAX_ANSWER < HUGE


@pytest.mark.parametrize("transport", ["fast", "boto3"])
@pytest.mark.parametrize("mode", ["chunked", "close", "length"])
def test_an_oversized_answer_fails_every_variable_of_its_request_in_bounded_memory(
    big_answers: Any, transport: str, mode: str
) -> None:
    import tracemalloc

    from secretboot import SsmReference
    from secretboot._resolve import resolve

    server = big_answers(mode, small=1)
    env = {**BASE_ENV, "AWS_ENDPOINT_URL": server.url, "SECRETBOOT_TRANSPORT": transport}
    refs = {f"V{n}": SsmReference(f"/big/{n}") for n in range(3)}
    settings = Settings(env)
    chosen = default_transport(settings, ("ssm",))
    assert chosen.name == transport
    # A first, normal answer: clients, service models and connections exist before measuring.
    warm = resolve(refs, settings, chosen)
    assert (warm.values, warm.failures) == ({"V0": "v", "V1": "v", "V2": "v"}, [])
    tracemalloc.start()
    try:
        started = time.monotonic()
        outcome = resolve(refs, settings, chosen)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.values == {}
    detail = "the GetParameters answer is larger than 16 MiB, more than any real one"
    assert {(f.variable, f.reason, f.detail) for f in outcome.failures} == {
        (f"V{n}", "AnswerTooLarge", detail) for n in range(3)
    }
    assert server.requests == 2  # not retried: the same request would bring the same answer
    assert peak < t.MAX_ANSWER + (8 << 20) < HUGE
    if mode == "length":  # refused on its Content-Length, before any of it is read
        assert peak < 4 << 20
        assert elapsed < 2
    else:
        assert server.sent < HUGE
