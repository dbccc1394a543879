"""The credential stand-ins answer as botocore's own fetchers and boto3's default chain expect."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.session
import pytest
from botocore.utils import ContainerMetadataFetcher, InstanceMetadataFetcher

from tests.conftest import moto_api
from tests.credservers import (
    IMDS_ROLE_PATH,
    ContainerCredentialsServer,
    ImdsServer,
    isolate,
    moto_auth,
    moto_credentials,
    moto_user_keys,
)
from tests.localaws import REGION, client

TOKEN = "Bearer local-container-token"


@pytest.fixture
def keys(moto_endpoint: str) -> Iterator[dict[str, str]]:
    moto_api(moto_endpoint, "reset")
    yield moto_credentials(moto_endpoint)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(monkeypatch, str(tmp_path))
    return tmp_path


def _no_sleep(_: float) -> None:
    pass


def _imds_fetcher(endpoint: str, *, timeout: float = 1.0) -> InstanceMetadataFetcher:
    return InstanceMetadataFetcher(
        timeout=timeout,  # type: ignore[arg-type]  # stubs say int; urllib3 takes seconds as a float
        num_attempts=1,
        env={},
        config={"ec2_metadata_service_endpoint": endpoint},
    )


def _status(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# -- container credentials ------------------------------------------------------------------


def test_container_answers_botocore_fetcher_with_the_token(keys: dict[str, str]) -> None:
    with ContainerCredentialsServer(keys, token=TOKEN) as server:
        fetcher = ContainerMetadataFetcher(sleep=_no_sleep)
        document = fetcher.retrieve_full_uri(server.full_uri, headers={"Authorization": TOKEN})
        assert document["AccessKeyId"] == keys["AccessKeyId"]
        assert document["SecretAccessKey"] == keys["SecretAccessKey"]
        assert document["Token"]
        assert document["Expiration"].endswith("Z")
        assert server.count == 1
        seen = server.requests[0]
        assert (seen.method, seen.path) == ("GET", server.relative_uri)
        assert seen.header("Authorization") == TOKEN
        assert seen.header("Accept") == "application/json"


@pytest.mark.parametrize(("headers", "status"), [(None, "401"), ({"Authorization": "Bearer other"}, "403")])
def test_container_refuses_a_missing_or_wrong_token(
    keys: dict[str, str], headers: dict[str, str] | None, status: str
) -> None:
    with ContainerCredentialsServer(keys, token=TOKEN) as server:
        fetcher = ContainerMetadataFetcher(sleep=_no_sleep)
        with pytest.raises(botocore.exceptions.MetadataRetrievalError, match=f"non 200 response {status}"):
            fetcher.retrieve_full_uri(server.full_uri, headers=headers)
        assert server.count == ContainerMetadataFetcher.RETRY_ATTEMPTS


def test_container_fails_n_times_then_answers(keys: dict[str, str]) -> None:
    with ContainerCredentialsServer(keys) as server:
        server.fail_next(2, 500)
        document = ContainerMetadataFetcher(sleep=_no_sleep).retrieve_full_uri(server.full_uri)
        assert document["AccessKeyId"] == keys["AccessKeyId"]
        assert server.count == 3
        server.fail_next(3, 503)
        with pytest.raises(botocore.exceptions.MetadataRetrievalError, match="503"):
            ContainerMetadataFetcher(sleep=_no_sleep).retrieve_full_uri(server.full_uri)


def test_container_other_paths_are_not_found(keys: dict[str, str]) -> None:
    with ContainerCredentialsServer(keys) as server:
        assert _status(server.base_url + "/v2/credentials/other") == 404
        assert _status(server.full_uri) == 200


def test_container_relative_uri_through_the_link_local_host(
    keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ContainerCredentialsServer(keys) as server:
        # botocore sends a relative URI to 169.254.170.2; point that host at the server.
        monkeypatch.setattr(ContainerMetadataFetcher, "IP_ADDRESS", f"127.0.0.1:{server.port}")
        document = ContainerMetadataFetcher(sleep=_no_sleep).retrieve_uri(server.relative_uri)
        assert document["AccessKeyId"] == keys["AccessKeyId"]


def test_container_chain_signs_requests_moto_checks(
    moto_endpoint: str, keys: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ContainerCredentialsServer(keys, token=TOKEN) as server:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", server.full_uri)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN)
        session = boto3.Session(region_name=REGION)
        credentials = session.get_credentials()
        assert credentials is not None
        assert credentials.method == "container-role"
        assert credentials.access_key == keys["AccessKeyId"]
        with moto_auth(moto_endpoint):
            kms = session.client("kms", endpoint_url=moto_endpoint)
            kms.list_keys()  # signed with the served keys, checked by moto
            forged = _kms(moto_endpoint, keys["AccessKeyId"], "not-the-secret", keys["Token"])
            with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
                forged.list_keys()


# -- instance metadata ----------------------------------------------------------------------


def test_imds_v2_answers_botocore_fetcher(keys: dict[str, str]) -> None:
    with ImdsServer(keys, role="app-role") as server:
        document = _imds_fetcher(server.endpoint).retrieve_iam_role_credentials()
        assert document["role_name"] == "app-role"
        assert document["access_key"] == keys["AccessKeyId"]
        assert document["secret_key"] == keys["SecretAccessKey"]
        assert document["token"]
        put, role, creds = server.requests
        assert (put.method, put.path) == ("PUT", "/latest/api/token")
        assert put.header("x-aws-ec2-metadata-token-ttl-seconds") == "21600"
        assert (role.method, role.path) == ("GET", IMDS_ROLE_PATH)
        assert (creds.method, creds.path) == ("GET", IMDS_ROLE_PATH + "app-role")
        assert role.header("x-aws-ec2-metadata-token") == creds.header("x-aws-ec2-metadata-token")
        assert role.header("x-aws-ec2-metadata-token")
        assert server.token_ttls == [21600]


def test_imds_credentials_document_has_every_field(keys: dict[str, str]) -> None:
    import json

    with ImdsServer(keys, role="r1") as server:
        request = urllib.request.Request(
            server.endpoint + "latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            token = answer.read().decode()
        request = urllib.request.Request(
            server.endpoint + "latest/meta-data/iam/security-credentials/r1",
            headers={"X-aws-ec2-metadata-token": token},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            document = json.loads(answer.read())
        assert document["Code"] == "Success"
        assert document["Type"] == "AWS-HMAC"
        assert set(document) == {
            "Code",
            "LastUpdated",
            "Type",
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "Expiration",
        }
        assert (
            _status(
                server.endpoint + "latest/meta-data/iam/security-credentials/other",
                headers={"X-aws-ec2-metadata-token": token},
            )
            == 404
        )


def test_imds_token_needs_its_ttl_header(keys: dict[str, str]) -> None:
    with ImdsServer(keys) as server:
        url = server.endpoint + "latest/api/token"
        assert _status(url, "PUT") == 400
        assert _status(url, "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "0"}) == 400
        assert _status(url, "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "21601"}) == 400
        assert _status(url, "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}) == 200
        assert _status(url, "GET") == 405


@pytest.mark.parametrize("v1_allowed", [False, True])
def test_imds_without_a_token_only_when_v1_is_allowed(keys: dict[str, str], v1_allowed: bool) -> None:
    with ImdsServer(keys, v1_allowed=v1_allowed) as server:
        expected = 200 if v1_allowed else 401
        assert _status(server.endpoint + IMDS_ROLE_PATH.lstrip("/")) == expected
        bad = {"X-aws-ec2-metadata-token": "not-a-token"}
        assert _status(server.endpoint + IMDS_ROLE_PATH.lstrip("/"), headers=bad) == 401


def test_imds_v1_fallback_as_botocore_does_it(keys: dict[str, str]) -> None:
    # The token endpoint failing (403 here) makes botocore go on without a token (IMDSv1).
    with ImdsServer(keys, v1_allowed=True) as server:
        server.fail_next(1, 403)
        document = _imds_fetcher(server.endpoint).retrieve_iam_role_credentials()
        assert document["access_key"] == keys["AccessKeyId"]
        assert [r.header("x-aws-ec2-metadata-token") for r in server.requests] == [None, None, None]
    with ImdsServer(keys, v1_allowed=False) as server:
        server.fail_next(1, 403)
        assert _imds_fetcher(server.endpoint).retrieve_iam_role_credentials() == {}


def test_imds_disabled_gives_botocore_nothing(keys: dict[str, str]) -> None:
    with ImdsServer(keys) as server:
        server.disabled = True
        assert _imds_fetcher(server.endpoint).retrieve_iam_role_credentials() == {}
        assert server.count >= 1
        assert _status(server.endpoint + "latest/api/token", "PUT") == 404


def test_imds_slow_times_botocore_out(keys: dict[str, str]) -> None:
    with ImdsServer(keys, delay=0.6) as server:
        assert _imds_fetcher(server.endpoint, timeout=0.2).retrieve_iam_role_credentials() == {}
        server.delay = 0.0
        assert _imds_fetcher(server.endpoint, timeout=0.2).retrieve_iam_role_credentials()["role_name"]


def test_imds_chain_signs_requests_moto_checks(
    moto_endpoint: str, keys: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ImdsServer(keys) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.endpoint)
        session = boto3.Session(region_name=REGION)
        credentials = session.get_credentials()
        assert credentials is not None
        assert credentials.method == "iam-role"
        assert credentials.access_key == keys["AccessKeyId"]
        with moto_auth(moto_endpoint):
            session.client("ssm", endpoint_url=moto_endpoint).describe_parameters()


def test_imds_out_of_the_chain_when_disabled_by_env(
    keys: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ImdsServer(keys) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.endpoint)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        assert botocore.session.Session().get_credentials() is None
        assert server.count == 0


# -- moto's auth mode -----------------------------------------------------------------------


def _kms(endpoint: str, access_key: str, secret_key: str, token: str | None = None) -> Any:
    return boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=token,
    )


def test_moto_auth_checks_keys_only_inside_the_block(moto_endpoint: str, keys: dict[str, str]) -> None:
    user = moto_user_keys(moto_endpoint)
    testing = client(moto_endpoint, "kms")
    with moto_auth(moto_endpoint):
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidClientTokenId"):
            testing.list_keys()  # not a key moto issued
        _kms(moto_endpoint, keys["AccessKeyId"], keys["SecretAccessKey"], keys["Token"]).list_keys()
        _kms(moto_endpoint, user["AccessKeyId"], user["SecretAccessKey"]).list_keys()
        with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
            _kms(moto_endpoint, keys["AccessKeyId"], keys["SecretAccessKey"][::-1], keys["Token"]).list_keys()
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidClientTokenId"):
            _kms(moto_endpoint, keys["AccessKeyId"], keys["SecretAccessKey"], "another-token").list_keys()
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidClientTokenId"):
            _kms(moto_endpoint, user["AccessKeyId"], user["SecretAccessKey"], "a-token").list_keys()
    testing.list_keys()  # off again


def test_isolate_clears_the_aws_environment(home: Path) -> None:
    assert os.environ["HOME"] == str(home)
    assert not [name for name in os.environ if name.startswith("AWS_")]
