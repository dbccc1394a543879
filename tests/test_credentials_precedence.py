"""The same environment picks the same identity in secretboot's plan() as in boto3's default chain.

Each row builds an environment (variables, a temporary HOME with ~/.aws files, the local
container-credentials and IMDS servers, a web identity token with STS on the local moto) and
resolves it twice: botocore (``botocore.session.Session().get_credentials()`` with the row's
environment as os.environ) and secretboot (``_credentials.plan(env, home=...)`` then
``fetch(None)``). Each row also pins what botocore 1.44 does (``expect``), so a botocore
upgrade that changes its chain fails here first.

Agreement:
- secretboot gives credentials: botocore gives the same method and the same identity (access
  key id; for STS-issued keys, the caller ARN moto reports for them);
- secretboot falls back (a sentence): botocore uses a source we leave to boto3, raises, or
  finds nothing; never one of the sources secretboot serves;
- secretboot's source fails to fetch: botocore finds nothing or raises.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.utils import ContainerMetadataFetcher

from secretboot import _credsources
from secretboot import _transport as t
from tests.conftest import moto_api
from tests.credservers import ContainerCredentialsServer, ImdsServer, isolate, moto_credentials
from tests.localaws import REGION

# What secretboot serves itself (botocore's method names) and what it leaves to boto3.
SERVED = {
    "env",
    "shared-credentials-file",
    "config-file",
    "assume-role-with-web-identity",
    "container-role",
    "iam-role",
}
FALLBACK_KINDS = {
    "assume-role",
    "sso",
    "login",
    "custom-process",
    "ec2-credentials-file",
    "boto-config",
}
NONE = "none"  # botocore found no credentials (get_credentials() is None)

CONTAINER_TOKEN = "Bearer container-token-for-tests"
WEB_ROLE = "arn:aws:iam::123456789012:role/web-role"
WEB_ROLE_OTHER = "arn:aws:iam::123456789012:role/other-web-role"


@dataclass(frozen=True)
class Row:
    id: str
    expect: str  # botocore's method, NONE, or the name of the exception it raises
    env: Mapping[str, str] = field(default_factory=dict)
    credentials: str | None = None  # ~/.aws/credentials
    config: str | None = None  # ~/.aws/config
    files: Mapping[str, str] = field(default_factory=dict)  # more files, relative to HOME
    imds: bool = False  # leave IMDS on (pointing at the local server) instead of disabled


def creds(profile: str, key: str, token: str | None = None) -> str:
    text = f"[{profile}]\naws_access_key_id = {key}\naws_secret_access_key = secret-of-{key}\n"
    return text + (f"aws_session_token = token-of-{key}\n" if token else "")


OFF = {"AWS_EC2_METADATA_DISABLED": "true"}
WEB = {
    "AWS_WEB_IDENTITY_TOKEN_FILE": "{home}/web-token",
    "AWS_ROLE_ARN": WEB_ROLE,
    "AWS_ROLE_SESSION_NAME": "row-session",
    "AWS_ENDPOINT_URL_STS": "{sts}",
    "AWS_REGION": REGION,
}
TOKEN_FILE = {"web-token": "eyJhbGciOiJSUzI1NiJ9.local-web-identity-token.sig"}
CONTAINER = {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "{container}",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN,
}
PROCESS = f"credential_process = {sys.executable} {{home}}/proc.py\n"
PROC_FILE = {
    "proc.py": 'import json\nprint(json.dumps({"Version": 1, "AccessKeyId": "AKIDPROCESS",'
    ' "SecretAccessKey": "secret-of-process"}))\n'
}

ROWS = [
    # -- environment variables
    Row("env-keys", "env", {**OFF, "AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "s"}),
    Row(
        "env-keys-with-token",
        "env",
        {**OFF, "AWS_ACCESS_KEY_ID": "ASIAENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "tok"},
    ),
    Row(
        "env-keys-with-expiration",
        "env",
        {
            **OFF,
            "AWS_ACCESS_KEY_ID": "ASIAENVEXP",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_SESSION_TOKEN": "tok",
            "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z",
        },
    ),
    Row(
        "env-keys-beat-a-profile",
        "env",
        {**OFF, "AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "dev"},
        credentials=creds("default", "AKIDDEFAULT") + creds("dev", "AKIDDEV"),
    ),
    Row(
        "env-keys-beat-a-role-profile",
        "env",
        {**OFF, "AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "role"},
        credentials=creds("base", "AKIDBASE"),
        config="[profile role]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = base\n",
    ),
    Row(
        "env-keys-beat-web-identity-and-container",
        "env",
        {**OFF, **WEB, **CONTAINER, "AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "s"},
        files=TOKEN_FILE,
    ),
    Row(
        "env-security-token-beats-session-token",
        "env",
        {
            **OFF,
            "AWS_ACCESS_KEY_ID": "ASIAENV",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_SESSION_TOKEN": "session",
            "AWS_SECURITY_TOKEN": "security",
        },
    ),
    Row(
        "file-security-token-beats-session-token",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "ASIAFILE", token="t") + "aws_security_token = security\n",
    ),
    Row("env-access-key-without-secret", "PartialCredentialsError", {**OFF, "AWS_ACCESS_KEY_ID": "AKIDENV"}),
    Row(
        "env-secret-without-access-key-then-file",
        "shared-credentials-file",
        {**OFF, "AWS_SECRET_ACCESS_KEY": "s"},
        credentials=creds("default", "AKIDDEFAULT"),
    ),
    Row(
        "env-empty-access-key-then-file",
        "shared-credentials-file",
        {**OFF, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "s"},
        credentials=creds("default", "AKIDDEFAULT"),
    ),
    # -- shared files
    Row(
        "credentials-file-default",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "AKIDDEFAULT"),
    ),
    Row(
        "credentials-file-with-session-token",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "ASIADEFAULT", token="t"),
    ),
    Row(
        "aws-profile-picks-its-section",
        "shared-credentials-file",
        {**OFF, "AWS_PROFILE": "dev"},
        credentials=creds("default", "AKIDDEFAULT") + creds("dev", "AKIDDEV"),
    ),
    Row(
        "aws-default-profile-picks-its-section",
        "shared-credentials-file",
        {**OFF, "AWS_DEFAULT_PROFILE": "dev"},
        credentials=creds("default", "AKIDDEFAULT") + creds("dev", "AKIDDEV"),
    ),
    Row(
        "aws-profile-beats-aws-default-profile",
        "shared-credentials-file",
        {**OFF, "AWS_PROFILE": "dev", "AWS_DEFAULT_PROFILE": "other"},
        credentials=creds("dev", "AKIDDEV") + creds("other", "AKIDOTHER"),
    ),
    Row(
        "aws-profile-names-a-missing-profile",
        "ProfileNotFound",
        {**OFF, "AWS_PROFILE": "missing"},
        credentials=creds("default", "AKIDDEFAULT"),
    ),
    Row(
        "credentials-file-beats-config-file",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "AKIDCREDS"),
        config=creds("default", "AKIDCONFIG"),
    ),
    Row("config-file-only-default", "config-file", OFF, config=creds("default", "AKIDCONFIG")),
    Row(
        "config-file-only-named-profile",
        "config-file",
        {**OFF, "AWS_PROFILE": "dev"},
        config=creds("default", "AKIDCONFIG") + creds("profile dev", "AKIDCONFIGDEV"),
    ),
    Row(
        "config-file-section-without-profile-prefix-is-ignored",
        NONE,
        {**OFF, "AWS_PROFILE": "dev"},
        credentials=creds("default", "AKIDDEFAULT"),
        config="[profile dev]\nregion = eu-west-1\n" + creds("dev", "AKIDNOPREFIX"),
    ),
    Row(
        "credentials-file-section-with-profile-prefix-is-not-the-profile",
        "config-file",
        {**OFF, "AWS_PROFILE": "dev"},
        credentials=creds("profile dev", "AKIDPREFIXED"),
        config=creds("profile dev", "AKIDCONFIGDEV"),
    ),
    Row(
        "override-paths-for-both-files",
        "shared-credentials-file",
        {
            **OFF,
            "AWS_SHARED_CREDENTIALS_FILE": "{home}/elsewhere/creds",
            "AWS_CONFIG_FILE": "{home}/elsewhere/conf",
        },
        credentials=creds("default", "AKIDHOMEFILE"),
        files={"elsewhere/creds": creds("default", "AKIDOVERRIDE"), "elsewhere/conf": "[default]\n"},
    ),
    Row(
        "override-config-file-only",
        "config-file",
        {**OFF, "AWS_CONFIG_FILE": "{home}/elsewhere/conf"},
        config=creds("default", "AKIDHOMECONFIG"),
        files={"elsewhere/conf": creds("default", "AKIDOVERRIDECONFIG")},
    ),
    Row(
        "override-points-at-a-missing-file",
        NONE,
        {**OFF, "AWS_SHARED_CREDENTIALS_FILE": "{home}/nowhere"},
        credentials=creds("default", "AKIDHOMEFILE"),
    ),
    Row(
        "profile-with-role-arn-and-static-keys",
        "assume-role",
        OFF,
        credentials=creds("default", "AKIDDEFAULT"),
        config="[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = default\n",
    ),
    Row(
        "role-arn-with-credential-source",
        "assume-role",
        {**OFF, **CONTAINER, "AWS_PROFILE": "r"},
        config="[profile r]\nrole_arn = arn:aws:iam::123456789012:role/r\ncredential_source = EcsContainer\n",
    ),
    Row(
        "role-arn-with-an-empty-credential-source-fails-eagerly",
        "CredentialRetrievalError",
        {**OFF, "AWS_PROFILE": "r"},
        config="[profile r]\nrole_arn = arn:aws:iam::123456789012:role/r\ncredential_source = Environment\n",
    ),
    Row(
        "role-arn-without-a-source",
        "PartialCredentialsError",
        OFF,
        config="[default]\nrole_arn = arn:aws:iam::123456789012:role/r\n",
    ),
    Row(
        "sso-profile",
        "sso",
        OFF,
        credentials=creds("default", "AKIDDEFAULT"),
        config="[default]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n"
        "sso_account_id = 123456789012\nsso_role_name = dev\n",
    ),
    Row(
        "sso-session-only-then-credentials-file",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "AKIDDEFAULT"),
        config="[default]\nsso_session = corp\n[sso-session corp]\n"
        "sso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n",
    ),
    Row("credential-process", "custom-process", OFF, config="[default]\n" + PROCESS, files=PROC_FILE),
    Row(
        "credentials-file-beats-credential-process",
        "shared-credentials-file",
        OFF,
        credentials=creds("default", "AKIDDEFAULT"),
        config="[default]\n" + PROCESS,
        files=PROC_FILE,
    ),
    Row(
        "credential-process-beats-config-file-keys",
        "custom-process",
        OFF,
        config=creds("default", "AKIDCONFIG") + PROCESS,
        files=PROC_FILE,
    ),
    Row(
        "old-ec2-credential-file",
        "ec2-credentials-file",
        {**OFF, "AWS_CREDENTIAL_FILE": "{home}/ec2.txt"},
        files={"ec2.txt": "AWSAccessKeyId=AKIDEC2\nAWSSecretKey=secret\n"},
    ),
    Row(
        "boto2-config-file",
        "boto-config",
        OFF,
        files={".boto": "[Credentials]\naws_access_key_id = AKIDBOTO\naws_secret_access_key = s\n"},
    ),
    # -- web identity
    Row("web-identity-env", "assume-role-with-web-identity", {**OFF, **WEB}, files=TOKEN_FILE),
    Row(
        "web-identity-default-session-name",
        "assume-role-with-web-identity",
        {**OFF, **{k: v for k, v in WEB.items() if k != "AWS_ROLE_SESSION_NAME"}},
        files=TOKEN_FILE,
    ),
    Row(
        "web-identity-env-beats-static-profile-keys",
        "assume-role-with-web-identity",
        {**OFF, **WEB},
        credentials=creds("default", "AKIDDEFAULT"),
        files=TOKEN_FILE,
    ),
    Row(
        "web-identity-from-the-profile",
        "assume-role-with-web-identity",
        {**OFF, "AWS_ENDPOINT_URL_STS": "{sts}", "AWS_REGION": REGION},
        config=f"[default]\nweb_identity_token_file = {{home}}/web-token\nrole_arn = {WEB_ROLE}\n"
        "role_session_name = from-profile\n",
        files=TOKEN_FILE,
    ),
    Row(
        "web-identity-env-file-with-profile-role",
        "assume-role-with-web-identity",
        {
            **OFF,
            "AWS_WEB_IDENTITY_TOKEN_FILE": "{home}/web-token",
            "AWS_ENDPOINT_URL_STS": "{sts}",
            "AWS_REGION": REGION,
        },
        config=f"[default]\nrole_arn = {WEB_ROLE_OTHER}\nweb_identity_token_file = {{home}}/unused\n",
        files=TOKEN_FILE,
    ),
    Row(
        "web-identity-without-role-arn",
        "InvalidConfigError",
        {**OFF, "AWS_WEB_IDENTITY_TOKEN_FILE": "{home}/web-token"},
        files=TOKEN_FILE,
    ),
    Row(
        "profile-role-arn-beats-web-identity-env",
        "assume-role",
        {**OFF, **WEB},
        credentials=creds("base", "AKIDBASE"),
        config="[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = base\n",
        files=TOKEN_FILE,
    ),
    # -- container and instance metadata
    Row("container-full-uri-with-token", "container-role", {**OFF, **CONTAINER}),
    Row(
        "container-token-file",
        "container-role",
        {
            **OFF,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "{container}",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "{home}/pod-token",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Bearer not-this-one",
        },
        files={"pod-token": CONTAINER_TOKEN},
    ),
    Row(
        "container-relative-uri",
        "container-role",
        {
            **OFF,
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "{relative}",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN,
        },
    ),
    Row(
        "container-full-uri-to-a-host-botocore-refuses",
        "ValueError",
        {**OFF, "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://192.0.2.10/creds"},
    ),
    Row(
        "static-profile-beats-container",
        "shared-credentials-file",
        {**OFF, **CONTAINER},
        credentials=creds("default", "AKIDDEFAULT"),
    ),
    Row("container-beats-imds", "container-role", CONTAINER, imds=True),
    Row("imds-v2", "iam-role", {}, imds=True),
    Row("imds-disabled-nothing", NONE, OFF),
    Row(
        "config-keys-beat-imds",
        "config-file",
        {},
        config=creds("default", "AKIDCONFIG"),
        imds=True,
    ),
    Row("imds-disabled-wins-over-endpoint", NONE, {"AWS_EC2_METADATA_DISABLED": "true"}, imds=True),
]


# -- the world each row runs in ----------------------------------------------------------------


@dataclass
class World:
    sts: str
    container: ContainerCredentialsServer
    imds: ImdsServer
    container_keys: dict[str, str]
    imds_keys: dict[str, str]


@pytest.fixture(scope="module")
def world(moto_endpoint: str) -> Iterator[World]:
    moto_api(moto_endpoint, "reset")
    container_keys = moto_credentials(moto_endpoint, role="container-task-role")
    imds_keys = moto_credentials(moto_endpoint, role="instance-role")
    with (
        ContainerCredentialsServer(container_keys, token=CONTAINER_TOKEN) as container,
        ImdsServer(imds_keys, role="instance-role") as imds,
    ):
        yield World(moto_endpoint, container, imds, container_keys, imds_keys)


def _fill(text: str, world: World, home: Path) -> str:
    return (
        text.replace("{home}", str(home))
        .replace("{sts}", world.sts)
        .replace("{container}", world.container.full_uri)
        .replace("{relative}", world.container.relative_uri)
    )


def _build(row: Row, world: World, home: Path) -> dict[str, str]:
    """Write the row's files under ``home``; return its environment (AWS_* only, plus HOME)."""
    aws = home / ".aws"
    aws.mkdir()
    if row.credentials is not None:
        (aws / "credentials").write_text(_fill(row.credentials, world, home))
    if row.config is not None:
        (aws / "config").write_text(_fill(row.config, world, home))
    for name, text in row.files.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_fill(text, world, home))
    env = {name: _fill(value, world, home) for name, value in row.env.items()}
    if row.imds:
        env.setdefault("AWS_EC2_METADATA_SERVICE_ENDPOINT", world.imds.endpoint)
    else:  # never the real 169.254.169.254
        assert env.get("AWS_EC2_METADATA_DISABLED") == "true", row.id
    env["HOME"] = str(home)
    return env


def _caller(sts: str, access_key: str, secret_key: str, token: str | None) -> str:
    """The identity moto's STS sees for keys it issued (the assumed role and its session)."""
    client = boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=sts,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=token,
    )
    return str(client.get_caller_identity()["Arn"])


def _identity(world: World, method: str, access_key: str, secret_key: str, token: str | None) -> str:
    if method == "assume-role-with-web-identity":
        arn = _caller(world.sts, access_key, secret_key, token)
        # botocore's default session name holds a timestamp: compare the role's part.
        role, _, session = arn.rpartition("/")
        return arn if not session.startswith("botocore-session-") else role + "/<default session>"
    return f"{access_key} token={token}"  # the token too: which variable or key wins


def _botocore(env: Mapping[str, str], world: World) -> tuple[str, str | None]:
    """(method or NONE or exception name, identity for the sources secretboot serves)."""
    try:
        credentials = botocore.session.Session().get_credentials()
        if credentials is None:
            return NONE, None
        method = str(credentials.method)
        if method not in SERVED:
            return method, None  # never resolve them: they would call AWS
        frozen = credentials.get_frozen_credentials()
    except Exception as exc:  # the row pins which
        return type(exc).__name__, None
    return method, _identity(world, method, str(frozen.access_key), str(frozen.secret_key), frozen.token)


def _secretboot(env: Mapping[str, str], home: Path, world: World) -> tuple[str, str | None]:
    """(source name, identity), ("fallback", sentence) or ("error", reason)."""
    from secretboot import _credentials

    planned = _credentials.plan(env, home=str(home))
    if isinstance(planned, str):
        return "fallback", planned
    try:
        got = planned.fetch(None)
    except t.TransportError as exc:
        return "error", exc.reason
    assert got.source == planned.name
    return got.source, _identity(world, got.source, got.access_key, got.secret_key, got.token)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_same_identity_as_botocore(
    row: Row, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _build(row, world, home)
    isolate(monkeypatch, str(home), env)
    # Both send a relative URI to 169.254.170.2: there, the local server (never the real host).
    local = f"127.0.0.1:{world.container.port}"
    monkeypatch.setattr(ContainerMetadataFetcher, "IP_ADDRESS", local)
    monkeypatch.setattr(_credsources, "CONTAINER_HOST", local)
    monkeypatch.setattr(ContainerMetadataFetcher, "SLEEP_TIME", 0)

    boto_method, boto_identity = _botocore(env, world)
    assert boto_method == row.expect, "botocore's chain changed: this row pins what it did"

    full_env = dict(os.environ)  # what the process would hand plan(): all of it
    ours, detail = _secretboot(full_env, home, world)
    if ours == "fallback":
        assert boto_method not in SERVED, (
            f"secretboot falls back where botocore serves {boto_method}: {detail}"
        )
        assert boto_method in FALLBACK_KINDS or boto_method == NONE or boto_method[0].isupper()
    elif ours == "error":
        assert boto_method == NONE or boto_method not in SERVED | FALLBACK_KINDS, detail
    else:
        assert (ours, detail) == (boto_method, boto_identity)


def test_the_table_covers_every_served_source_and_fallback_kind() -> None:
    pinned = {row.expect for row in ROWS}
    assert pinned >= SERVED
    assert pinned >= FALLBACK_KINDS - {"login"}  # login needs botocore[crt]
    assert len(ROWS) >= 30


def test_served_keys_are_what_the_container_and_imds_rows_saw(world: World) -> None:
    # The servers answer with the moto role credentials, never anything else.
    assert world.container_keys["AccessKeyId"] != world.imds_keys["AccessKeyId"]
    assert _caller(
        world.sts,
        world.container_keys["AccessKeyId"],
        world.container_keys["SecretAccessKey"],
        world.container_keys["Token"],
    ).endswith("assumed-role/container-task-role/credservers")
