"""Shared fixtures: one moto server per session on 127.0.0.1, reset between tests."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import secretboot
from secretboot import _credentials, _retry
from tests.localaws import CREDENTIALS, REGION, client, moto_server


def moto_api(endpoint: str, path: str, body: bytes = b"") -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    """Every test starts unbooted, with no rate limit learnt, and leaves os.environ as it found it."""
    secretboot.reset()
    _retry.forget_limiters()  # the process's limiters would carry one test's throttling into the next
    _credentials.forget()  # and its credential caches one test's identity
    saved = dict(os.environ)
    try:
        yield
    finally:
        secretboot.reset()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(params=["fast", "boto3"])
def aws_env(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> dict[str, str]:
    """A clean moto and an environment pointing at it (also set in os.environ).

    Every integration test runs once on each transport.
    """
    moto_api(moto_endpoint, "reset")
    for name in list(os.environ):
        if name.startswith(("AWS_", "SECRETBOOT_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": REGION,
        "SECRETBOOT_TRANSPORT": request.param,
        **CREDENTIALS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def kms(aws_env: dict[str, str]) -> Any:
    return client(aws_env["AWS_ENDPOINT_URL"], "kms")


@pytest.fixture
def ssm(aws_env: dict[str, str]) -> Any:
    return client(aws_env["AWS_ENDPOINT_URL"], "ssm")


@pytest.fixture
def key_id(kms: Any) -> str:
    return str(kms.create_key(Description="secretboot tests")["KeyMetadata"]["KeyId"])
