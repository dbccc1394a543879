"""The Lambda test helpers over real HTTP against moto: functions created from a zip, and the
``LambdaRevisions`` proxy giving moto's Lambda API real Lambda's RevisionId checks."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import moto_api
from tests.lambdaapi import (
    LambdaRevisions,
    create_function,
    function_variables,
    set_function_variables,
)
from tests.localaws import client

# moto routes by the credential scope and checks no signature unless its auth mode is on.
LAMBDA_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/lambda/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


@pytest.fixture
def moto(moto_endpoint: str) -> str:
    moto_api(moto_endpoint, "reset")
    return moto_endpoint


@pytest.fixture
def proxy(moto: str) -> Iterator[LambdaRevisions]:
    with LambdaRevisions(moto) as running:
        yield running


@pytest.fixture
def lam(proxy: LambdaRevisions, moto: str) -> Any:
    """A Lambda client through the proxy, for a function "app" with one variable."""
    create_function(moto, "app", {"A": "1"})
    return client(proxy.url, "lambda")


def _code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_create_function_sets_the_variables_and_the_key(moto: str) -> None:
    key = client(moto, "kms").create_key()["KeyMetadata"]["Arn"]
    config = create_function(moto, "app", {"A": "1", "B": "two"}, kms_key_arn=key)
    assert config["Environment"] == {"Variables": {"A": "1", "B": "two"}}
    assert config["KMSKeyArn"] == key
    assert config["Runtime"] == "python3.13"
    assert "RevisionId" not in config  # moto's own answer: the gap the proxy fills
    create_function(moto, "other", {})  # the role is reused, not created twice
    assert function_variables(moto, "app") == {"A": "1", "B": "two"}
    assert function_variables(moto, "other") == {}


def test_revision_is_stable_until_an_update_changes_it(lam: Any) -> None:
    first = lam.get_function_configuration(FunctionName="app")["RevisionId"]
    assert lam.get_function_configuration(FunctionName="app")["RevisionId"] == first
    assert lam.get_function(FunctionName="app")["Configuration"]["RevisionId"] == first

    updated = lam.update_function_configuration(FunctionName="app", Environment={"Variables": {"A": "2"}})
    assert updated["RevisionId"] != first
    assert lam.get_function_configuration(FunctionName="app")["RevisionId"] == updated["RevisionId"]


def test_create_through_the_proxy_returns_a_revision(proxy: LambdaRevisions) -> None:
    config = create_function(proxy.url, "app", {"A": "1"})
    assert config["RevisionId"] == proxy.revision("app")


def test_update_with_the_current_revision_changes_the_function(
    lam: Any, proxy: LambdaRevisions, moto: str
) -> None:
    revision = lam.get_function_configuration(FunctionName="app")["RevisionId"]
    answer = lam.update_function_configuration(
        FunctionName="app", Environment={"Variables": {"A": "2"}}, RevisionId=revision
    )
    assert answer["Environment"] == {"Variables": {"A": "2"}}
    assert function_variables(moto, "app") == {"A": "2"}
    assert proxy.updates() == [("app", revision)]


def test_a_stale_revision_is_refused_412_and_moto_is_unchanged(
    lam: Any, proxy: LambdaRevisions, moto: str
) -> None:
    stale = lam.get_function_configuration(FunctionName="app")["RevisionId"]
    lam.update_function_configuration(FunctionName="app", Environment={"Variables": {"A": "2"}})

    with pytest.raises(ClientError) as caught:
        lam.update_function_configuration(
            FunctionName="app", Environment={"Variables": {"A": "3"}}, RevisionId=stale
        )
    assert _code(caught) == ("PreconditionFailedException", 412)
    assert caught.value.response["Error"]["Message"].startswith("The Revision Id provided does not match")
    assert isinstance(caught.value, lam.exceptions.PreconditionFailedException)
    assert function_variables(moto, "app") == {"A": "2"}
    assert proxy.updates() == [("app", None), ("app", stale)]


def test_a_function_named_by_arn_has_the_same_revision(lam: Any, moto: str) -> None:
    arn = lam.get_function_configuration(FunctionName="app")["FunctionArn"]
    stale = lam.get_function_configuration(FunctionName=arn)["RevisionId"]
    assert lam.get_function_configuration(FunctionName="app")["RevisionId"] == stale
    lam.update_function_configuration(FunctionName="app", Environment={"Variables": {"A": "2"}})
    with pytest.raises(ClientError) as caught:
        lam.update_function_configuration(FunctionName=arn, Environment={"Variables": {}}, RevisionId=stale)
    assert _code(caught) == ("PreconditionFailedException", 412)
    assert function_variables(moto, "app") == {"A": "2"}


def test_a_concurrent_change_before_the_update_makes_its_revision_stale(
    lam: Any, proxy: LambdaRevisions, moto: str
) -> None:
    revision = lam.get_function_configuration(FunctionName="app")["RevisionId"]
    calls: list[None] = []

    def other_writer() -> None:
        calls.append(None)
        set_function_variables(moto, "app", {"A": "1", "OTHER": "x"})

    proxy.before_next_update(other_writer)
    assert calls == []  # nothing runs until an update arrives
    with pytest.raises(ClientError) as caught:
        lam.update_function_configuration(
            FunctionName="app", Environment={"Variables": {"A": "2"}}, RevisionId=revision
        )
    assert _code(caught) == ("PreconditionFailedException", 412)
    assert calls == [None]
    assert function_variables(moto, "app") == {"A": "1", "OTHER": "x"}  # the other writer's change stands

    # Read again, retry: the callback was used up, and the fresh revision is accepted.
    fresh = lam.get_function_configuration(FunctionName="app")
    assert fresh["RevisionId"] != revision
    assert fresh["Environment"] == {"Variables": {"A": "1", "OTHER": "x"}}
    lam.update_function_configuration(
        FunctionName="app",
        Environment={"Variables": {"A": "2", "OTHER": "x"}},
        RevisionId=fresh["RevisionId"],
    )
    assert calls == [None]
    assert function_variables(moto, "app") == {"A": "2", "OTHER": "x"}
    assert proxy.updates() == [("app", revision), ("app", fresh["RevisionId"])]


def test_an_update_without_revision_is_forwarded_even_after_a_concurrent_change(
    lam: Any, proxy: LambdaRevisions, moto: str
) -> None:
    proxy.before_next_update(lambda: set_function_variables(moto, "app", {"OTHER": "x"}))
    lam.update_function_configuration(FunctionName="app", Environment={"Variables": {"A": "2"}})
    assert function_variables(moto, "app") == {"A": "2"}  # last writer wins, as on Lambda
    assert proxy.updates() == [("app", None)]


def test_a_failing_callback_fails_the_update_without_retries(
    lam: Any, proxy: LambdaRevisions, moto: str
) -> None:
    def broken() -> None:
        raise KeyError("nothing")

    proxy.before_next_update(broken)
    with pytest.raises(ClientError) as caught:
        lam.update_function_configuration(FunctionName="app", Environment={"Variables": {"A": "2"}})
    assert _code(caught) == ("CallbackFailed", 400)
    assert "KeyError" in caught.value.response["Error"]["Message"]
    assert function_variables(moto, "app") == {"A": "1"}
    assert len(proxy.updates()) == 1


def test_a_rewritten_answer_has_the_right_content_length(lam: Any, proxy: LambdaRevisions) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/2015-03-31/functions/app/configuration", headers={"Authorization": LAMBDA_AUTH})
        answer = conn.getresponse()
        body = answer.read()
    finally:
        conn.close()
    assert answer.status == 200
    assert answer.getheader("Content-Length") == str(len(body))
    assert json.loads(body)["RevisionId"] == proxy.revision("app")


def test_kms_goes_through_unchanged(proxy: LambdaRevisions, moto: str) -> None:
    kms = client(proxy.url, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"pass-through")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"pass-through"
    direct = client(moto, "kms").list_keys()
    via_proxy = kms.list_keys()
    assert via_proxy["Keys"] == direct["Keys"]
    assert proxy.counts() == {
        "TrentService.CreateKey": 1,
        "TrentService.Encrypt": 1,
        "TrentService.Decrypt": 1,
        "TrentService.ListKeys": 1,
    }
    assert proxy.updates() == []
