"""Every credential source serves the fast transport on a real cold start, over real HTTP.

Each test runs ``secretboot.bootstrap()`` in a fresh ``python -c`` whose environment holds an
``ssm:`` SecureString reference and a ``kms:`` ciphertext, and credentials from ONE source: the
environment, a shared credentials or config file profile, STS web identity, the container
credentials endpoint (full URI with the token in a variable or a file, relative URI) or IMDSv2.
moto checks every signature (its auth mode) and accepts only the temporary keys it issued
(``moto_credentials``), which the local servers of ``tests/credservers.py`` hand out. The child
reports hashes of the values (never the values), whether botocore was imported (never, on the
fast path) and the transport its own log line names.

Each source has a negative twin: it serves the right key id with a wrong secret key (a canary),
so moto refuses the signature; the start fails closed, exit non-zero, with an error naming the
variables and no served secret, token or value anywhere in the child's output.

Then the container token's guard end to end (never sent to a host botocore would refuse), and
temporary credentials refetched before they expire, in process, on the cache's injected clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import secretboot
from secretboot import _credentials
from tests.awsproxy import AwsProxy, ProxyRequest, ProxyResponse
from tests.conftest import moto_api
from tests.credservers import ContainerCredentialsServer, ImdsServer, moto_credentials, set_moto_auth
from tests.localaws import REGION, client

ROOT = Path(__file__).resolve().parent.parent
CANARY = "canary-Vq3xFastCredSecret"  # in wrong keys, tokens and values: never in any output
TOKEN = "Bearer " + CANARY + "-container-token"
WEB_TOKEN = "eyJhbGciOiJSUzI1NiJ9." + CANARY + "-web-identity.c2ln"
KMS_VALUE = "kms-plaintext-" + CANARY
SSM_VALUE = "ssm-plaintext-" + CANARY
PARAMETER = "/fastcreds/api-key"

# What the child runs. ``atexit`` reports even when bootstrap() raises (the traceback goes to
# stderr first, as in any real start), so botocore's absence is checked on failures too.
CHILD = """
import atexit, hashlib, json, logging, re, sys
said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logger = logging.getLogger("secretboot")
logger.addHandler(Keep())
logger.setLevel(logging.INFO)
report = {}
def show():
    via = [m.group(1) for line in said for m in [re.search(r" via (\\w+)", line)] if m]
    report.update(botocore="botocore" in sys.modules, boto3="boto3" in sys.modules)
    report.update(transport=via[-1] if via else None, log=said)
    print(json.dumps(report))
atexit.register(show)
PRELUDE
import secretboot
keyring = secretboot.bootstrap()
digest = lambda v: hashlib.sha256(v.encode()).hexdigest()
report.update(db=digest(keyring["DB_PASSWORD"]), api=digest(keyring["API_KEY"]))
"""


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class World:
    """moto with a key, a ciphertext, a SecureString and a role's temporary keys; a child's env."""

    endpoint: str
    home: Path
    keys: dict[str, str]  # AccessKeyId, SecretAccessKey, Token, RoleArn (moto checks them)
    env: dict[str, str] = field(default_factory=dict)

    def wrong(self) -> dict[str, str]:
        """The right key id and token with a wrong secret key: moto refuses the signature."""
        return {**self.keys, "SecretAccessKey": CANARY + "-wrong-secret"}

    def secrets(self) -> list[str]:
        """What must never show: the canary (wrong keys, tokens, values), real keys and values."""
        return [CANARY, self.keys["SecretAccessKey"], self.keys["Token"], KMS_VALUE, SSM_VALUE]


@pytest.fixture
def world(moto_endpoint: str, tmp_path: Path) -> World:
    moto_api(moto_endpoint, "reset")
    set_moto_auth(moto_endpoint, False)  # whatever an earlier test left
    kms, ssm = client(moto_endpoint, "kms"), client(moto_endpoint, "ssm")
    key = kms.create_key(Description="fast credentials")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=KMS_VALUE.encode())["CiphertextBlob"]
    ssm.put_parameter(Name=PARAMETER, Value=SSM_VALUE, Type="SecureString")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",  # never 169.254.169.254 (the IMDS tests replace it)
        "DB_PASSWORD": "kms:" + base64.b64encode(blob).decode(),
        "API_KEY": "ssm:" + PARAMETER,
    }
    return World(moto_endpoint, home, moto_credentials(moto_endpoint), env)


@contextmanager
def moto_auth(endpoint: str, unchecked: int = 0) -> Iterator[None]:
    """moto checks signatures and policies (after ``unchecked`` requests) in the block, never after.

    ``tests.credservers.moto_auth`` with moto's count of requests let through first: the web
    identity tests need one (see ``test_moto_auth_refuses_the_unsigned_web_identity_call``).
    """
    moto_api(endpoint, "reset-auth", str(unchecked).encode())
    try:
        yield
    finally:
        set_moto_auth(endpoint, False)


@dataclass
class Child:
    code: int
    out: str
    err: str
    report: dict[str, Any]
    seconds: float


def run_child(env: Mapping[str, str], prelude: str = "") -> Child:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD.replace("PRELUDE", prelude)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    return Child(done.returncode, done.stdout, done.stderr, report, seconds)


def assert_served(child: Child) -> None:
    """Both values right, botocore never imported, the fast transport named by the log line."""
    assert child.code == 0, child.err
    assert child.report["db"] == digest(KMS_VALUE)
    assert child.report["api"] == digest(SSM_VALUE)
    assert child.report["botocore"] is False and child.report["boto3"] is False
    assert child.report["transport"] == "fast", child.report["log"]
    assert child.seconds < 5, child.seconds  # no retries, pauses or fallbacks hiding in there


def assert_failed_closed(child: Child, world: World, also: tuple[str, ...] = ()) -> None:
    """Non-zero exit, both variables named, nothing secret shown, and still no botocore."""
    assert child.code != 0, child.out
    assert "DB_PASSWORD" in child.err and "API_KEY" in child.err, child.err
    assert "db" not in child.report and "api" not in child.report
    assert child.report["botocore"] is False, "the failure must not fall back to boto3"
    # moto refused the signature (its 403), for both calls: not a fetch or connection problem
    assert "API_KEY (ssm /fastcreds/api-key): AccessDenied" in child.err, child.err
    assert "DB_PASSWORD (kms <ciphertext, 103 bytes>): AccessDenied" in child.err, child.err
    shown = child.out + child.err
    for secret in (*world.secrets(), *also):
        assert secret not in shown, f"a secret reached the output: {shown}"
    assert "canary" not in shown.lower(), shown


# ----------------------------------------------------------------------------- the sources


def test_environment_keys_with_session_token(world: World) -> None:
    keys = world.keys
    env = {
        **world.env,
        "AWS_ACCESS_KEY_ID": keys["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": keys["SecretAccessKey"],
        "AWS_SESSION_TOKEN": keys["Token"],
    }
    with moto_auth(world.endpoint):
        assert_served(run_child(env))
        wrong = {**env, "AWS_SECRET_ACCESS_KEY": world.wrong()["SecretAccessKey"]}
        assert_failed_closed(run_child(wrong), world)


def profile_text(section: str, keys: Mapping[str, str], extra: str = "") -> str:
    return (
        f"[{section}]\naws_access_key_id = {keys['AccessKeyId']}\n"
        f"aws_secret_access_key = {keys['SecretAccessKey']}\naws_session_token = {keys['Token']}\n{extra}"
    )


def test_shared_credentials_file_profile(world: World) -> None:
    aws = world.home / ".aws"
    aws.mkdir()
    env = {**world.env, "AWS_PROFILE": "app"}
    with moto_auth(world.endpoint):
        both = profile_text("default", world.wrong()) + profile_text("app", world.keys)
        (aws / "credentials").write_text(both)
        assert_served(run_child(env))  # the profile's keys, not [default]'s
        (aws / "credentials").write_text(profile_text("app", world.wrong()))
        assert_failed_closed(run_child(env), world)


def test_config_file_profile_with_its_region(world: World) -> None:
    aws = world.home / ".aws"
    aws.mkdir()
    env = {k: v for k, v in world.env.items() if k != "AWS_REGION"} | {"AWS_PROFILE": "app"}
    with moto_auth(world.endpoint):
        # The region comes from the profile too (no AWS_REGION here): the same keys with the
        # profile saying eu-west-1 sign for and ask moto's eu-west-1, which has neither the key
        # nor the parameter.
        (aws / "config").write_text(profile_text("profile app", world.keys, f"region = {REGION}\n"))
        assert_served(run_child(env))
        (aws / "config").write_text(profile_text("profile app", world.keys, "region = eu-west-1\n"))
        elsewhere = run_child(env)
        assert elsewhere.code != 0 and "API_KEY (ssm /fastcreds/api-key): ParameterNotFound" in elsewhere.err
        (aws / "config").write_text(profile_text("profile app", world.wrong(), f"region = {REGION}\n"))
        assert_failed_closed(run_child(env), world)


class StsRecorder(AwsProxy):
    """Relays STS calls to moto, keeping each request; ``wrong_secret`` rewrites the answer's
    SecretAccessKey (as a broken or hostile STS would), so the keys moto issued fail to sign."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.seen: list[ProxyRequest] = []
        self.wrong_secret: str | None = None

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        self.seen.append(request)
        answer = super().handle(request)
        if self.wrong_secret is None or answer.status != 200:
            return answer
        start = answer.body.index(b"<SecretAccessKey>") + len(b"<SecretAccessKey>")
        end = answer.body.index(b"</SecretAccessKey>")
        body = answer.body[:start] + self.wrong_secret.encode() + answer.body[end:]
        return ProxyResponse(answer.status, answer.reason, answer.headers, body)


def test_moto_auth_refuses_the_unsigned_web_identity_call(world: World) -> None:
    """Why the web identity tests let one request through unchecked: real STS takes
    AssumeRoleWithWebIdentity unsigned (the token is the proof), moto's auth mode checks a
    signature on it like on any call, and fails on the missing Authorization header (HTTP 500).
    With its checks off, moto issues keys it then accepts. If moto ever takes the unsigned call,
    this fails: drop ``unchecked=1`` below."""
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": world.keys["RoleArn"]}
    form |= {"RoleSessionName": "s", "WebIdentityToken": WEB_TOKEN}
    data = "&".join(f"{k}={urllib.request.quote(v, safe='')}" for k, v in form.items()).encode()
    request = urllib.request.Request(
        world.endpoint, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    with moto_auth(world.endpoint), pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 500  # moto 5.2's signature check fails on the missing header
    with urllib.request.urlopen(request, timeout=10) as answer:  # auth off: issued
        assert b"<AccessKeyId>ASIA" in answer.read()


def test_web_identity(world: World) -> None:
    token_file = world.home / "token"
    token_file.write_text(WEB_TOKEN)
    with StsRecorder(world.endpoint) as sts:
        env = {
            **world.env,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_ROLE_ARN": world.keys["RoleArn"],  # moto signs its keys with this role's policy
            "AWS_ROLE_SESSION_NAME": "fast-credentials",
            "AWS_ENDPOINT_URL_STS": sts.url,
        }
        # One request unchecked: the unsigned STS call (the test above says why). The fast
        # path fetches credentials before it signs anything, so it is the first; were it not,
        # moto would refuse it and the start would fail. Every KMS and SSM call is checked,
        # signed with the keys moto's STS issued.
        with moto_auth(world.endpoint, unchecked=1):
            assert_served(run_child(env))
        assert [r.method for r in sts.seen] == ["POST"]
        fields = urllib.parse.parse_qs(sts.seen[0].body.decode())
        assert fields["Action"] == ["AssumeRoleWithWebIdentity"]
        assert fields["WebIdentityToken"] == [WEB_TOKEN] and fields["RoleSessionName"] == ["fast-credentials"]
        assert not any(name.lower() == "authorization" for name, _ in sts.seen[0].headers)

        sts.wrong_secret = CANARY + "-wrong-secret"
        with moto_auth(world.endpoint, unchecked=1):
            assert_failed_closed(run_child(env), world, also=(WEB_TOKEN,))
        assert len(sts.seen) == 2


@pytest.mark.parametrize("token_from", ["variable", "file"])
def test_container_full_uri_with_token(world: World, token_from: str) -> None:
    token_file = world.home / "container-token"
    token_file.write_text(TOKEN)
    with ContainerCredentialsServer(world.keys, token=TOKEN) as ecs:
        env = {**world.env, "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.full_uri}
        if token_from == "variable":
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = TOKEN
        else:
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token_file)
        with moto_auth(world.endpoint):
            assert_served(run_child(env))
            assert [(r.path, r.header("authorization")) for r in ecs.requests] == [(ecs.path, TOKEN)]
            ecs.credentials = world.wrong()
            assert_failed_closed(run_child(env), world, also=(TOKEN,))
        assert ecs.count == 2  # one fetch per process: a refused signature is not a fetch problem


# The relative URI always means http://169.254.170.2<path> (botocore's fixed ECS host), which a
# test can neither bind nor safely reach (something on this machine answers there): the child
# points the module's host constant at the local server before it starts, the only change.
RELATIVE_PRELUDE = "import secretboot._credsources as cs; cs.CONTAINER_HOST = {host!r}"


def test_container_relative_uri(world: World) -> None:
    with ContainerCredentialsServer(world.keys) as ecs:
        env = {**world.env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": ecs.relative_uri}
        prelude = RELATIVE_PRELUDE.format(host=f"127.0.0.1:{ecs.port}")
        with moto_auth(world.endpoint):
            assert_served(run_child(env, prelude))
            assert [(r.path, r.header("authorization")) for r in ecs.requests] == [(ecs.path, None)]
            ecs.credentials = world.wrong()
            assert_failed_closed(run_child(env, prelude), world)


def test_instance_metadata_v2(world: World) -> None:
    with ImdsServer(world.keys, role="app-role") as imds:
        env = {k: v for k, v in world.env.items() if k != "AWS_EC2_METADATA_DISABLED"}
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.endpoint
        with moto_auth(world.endpoint):
            assert_served(run_child(env))
            seen = [(r.method, r.path) for r in imds.requests]
            role_path = "/latest/meta-data/iam/security-credentials/"
            assert seen == [("PUT", "/latest/api/token"), ("GET", role_path), ("GET", role_path + "app-role")]
            assert all(r.header("x-aws-ec2-metadata-token") for r in imds.requests[1:])  # v2 throughout
            imds.credentials = world.wrong()
            assert_failed_closed(run_child(env), world)


# ----------------------------------------------------------------------------- the token guard


def own_address() -> str:
    """This machine's address on its default route (not loopback): nothing is sent to find it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # UDP connect: picks a route, sends nothing
        return str(probe.getsockname()[0])


@pytest.mark.parametrize("transport", ["auto", "fast"])
def test_container_token_never_sent_to_a_disallowed_host(world: World, transport: str) -> None:
    """A full URI on a host botocore refuses (neither loopback nor ECS's/EKS's addresses):
    with SECRETBOOT_TRANSPORT=fast, a ConfigurationError naming the variable and why; on the
    default transport, the fast path refuses and boto3 refuses as well. The token goes nowhere."""
    env = {
        **world.env,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://192.0.2.1/v2/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN,
    }
    if transport == "fast":
        env["SECRETBOOT_TRANSPORT"] = "fast"
    child = run_child(env)
    assert child.code != 0
    shown = child.out + child.err
    assert CANARY not in shown, shown
    assert child.seconds < 5  # refused before any connection, never a wait on 192.0.2.1
    if transport == "fast":
        assert "ConfigurationError" in child.err, child.err
        assert "SECRETBOOT_TRANSPORT=fast, but AWS_CONTAINER_CREDENTIALS_FULL_URI names host '192.0.2.1'" in (
            child.err
        )
        assert "its token is never sent there" in child.err
        assert child.report["botocore"] is False
    else:
        assert "DB_PASSWORD" in child.err and "API_KEY" in child.err, child.err

    # The same refusal for a server that would answer, on this machine's own non-loopback
    # address: it receives nothing at all, on either transport.
    with ContainerCredentialsServer(world.keys, token=TOKEN) as ecs:
        address = own_address()
        relay = socket.create_server((address, 0))
        try:
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://{address}:{relay.getsockname()[1]}{ecs.path}"
            relay.settimeout(0)
            child = run_child(env)
            assert child.code != 0 and CANARY not in child.out + child.err
            with pytest.raises(BlockingIOError):
                relay.accept()  # no connection was ever made to it
        finally:
            relay.close()
        assert ecs.count == 0


# ----------------------------------------------------------------------------- expiry


class SigningRecorder(AwsProxy):
    """In front of moto: the access key id each request was signed with, in order."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.signed_with: list[str] = []

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        authorization = next((v for k, v in request.headers if k.lower() == "authorization"), "")
        self.signed_with.append(authorization.split("Credential=", 1)[-1].split("/", 1)[0])
        return super().handle(request)


def test_temporary_credentials_are_refetched_before_they_expire(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: a container source's keys expire in 20 minutes. 4 minutes on, a refresh
    reuses them (16 minutes left, outside botocore's 15-minute advisory window); 15 minutes on
    (5 left, inside the 10-minute mandatory one) it fetches the rotated keys and signs with
    them, and moto (checking every signature) accepts both sets."""
    first, second = world.keys, moto_credentials(world.endpoint)
    offset = [0.0]
    # The cache's clock is injected (CredentialCache(clock=)); cache_for builds it with
    # time.time, so the caches of this test get time.time moved on by ``offset``.
    moved = functools.partial(_credentials.CredentialCache, clock=lambda: time.time() + offset[0])
    monkeypatch.setattr(_credentials, "CredentialCache", moved)
    with ContainerCredentialsServer(first, token=TOKEN) as ecs, SigningRecorder(world.endpoint) as aws:
        ecs.expiration = datetime_in(20 * 60)
        env = {k: v for k, v in world.env.items() if k not in ("PATH", "PYTHONPATH", "HOME")}
        env |= {
            "AWS_ENDPOINT_URL": aws.url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.full_uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN,
            "SECRETBOOT_TRANSPORT": "fast",
            "HOME": str(world.home),
        }
        for name in [n for n in os.environ if n.startswith(("AWS_", "SECRETBOOT_"))]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with moto_auth(world.endpoint):
            keyring = secretboot.bootstrap()
            assert (keyring["DB_PASSWORD"], keyring["API_KEY"]) == (KMS_VALUE, SSM_VALUE)
            assert (ecs.count, set(aws.signed_with)) == (1, {first["AccessKeyId"]})
            assert len(aws.signed_with) == 2  # one Decrypt, one GetParameters

            ecs.credentials = second  # the endpoint rotates; the process's keys are still good
            ecs.expiration = datetime_in(15 * 60 + 3600)
            offset[0] = 4 * 60
            secretboot.bootstrap(refresh=True)
            assert (ecs.count, set(aws.signed_with[2:])) == (1, {first["AccessKeyId"]})

            offset[0] = 15 * 60
            keyring = secretboot.bootstrap(refresh=True)
            assert (keyring["DB_PASSWORD"], keyring["API_KEY"]) == (KMS_VALUE, SSM_VALUE)
            assert ecs.count == 2
            assert set(aws.signed_with[4:]) == {second["AccessKeyId"]} and len(aws.signed_with) == 6
        assert [r.header("authorization") for r in ecs.requests] == [TOKEN, TOKEN]


def datetime_in(seconds: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(int(time.time() + seconds), tz=datetime.timezone.utc)
