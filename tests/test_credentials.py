"""secretboot._credentials: botocore's default chain for the fast transport, piece by piece.

Unit tests with an injected clock for the refresh windows, shared files in tmp_path, and
small local HTTP servers on loopback for container, IMDS and STS answers; one test against
moto's STS over real HTTP. The table-driven comparison with botocore's own chain lives in
the precedence tests; here each rule is pinned on its own, with a canary for leaks.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from secretboot import _credentials as c
from secretboot import _credsources as cs
from secretboot import _transport as t
from tests.credservers import ContainerCredentialsServer, ImdsServer

CANARY = "canary-Zq8wSecretValue"  # in keys, tokens and answers: never in a message or repr
KEYS = {"AccessKeyId": "ASIACANARYKEYID", "SecretAccessKey": CANARY + "-secret", "Token": CANARY + "-tok"}
ROOT = Path(__file__).resolve().parent.parent


def no_leak(text: str) -> None:
    assert "canary" not in text.lower(), text
    assert "ASIACANARYKEYID" not in text, text


def plan(env: Mapping[str, str], home: Path) -> Any:
    return c.plan({"HOME": str(home), **env}, home=str(home))


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    c.forget()
    yield
    c.forget()


# ----------------------------------------------------------------------------- import cost


def test_import_and_static_plan_load_nothing_heavy() -> None:
    code = (
        "import sys; before = set(sys.modules); import secretboot._credentials as c; "
        "c.plan({'AWS_ACCESS_KEY_ID': 'a', 'AWS_SECRET_ACCESS_KEY': 'b'}); "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    )
    loaded = out.stdout.split()
    assert "secretboot._credentials" in loaded
    heavy = ("botocore", "boto3", "configparser", "xml", "ssl", "http", "datetime", "dataclasses", "json")
    assert not [m for m in loaded if m.split(".")[0] in heavy], loaded


# ----------------------------------------------------------------------------- Credentials


def test_repr_never_shows_a_key() -> None:
    temporary = c.Credentials("ASIACANARYKEYID", CANARY, CANARY, time.time() + 3600, c.CONTAINER)
    static = c.Credentials("ASIACANARYKEYID", CANARY, None, None, c.ENVIRONMENT)
    for creds in (temporary, static):
        no_leak(repr(creds))
        no_leak(str(creds))
    assert repr(temporary).startswith("Credentials(source=container-role, temporary=True, expires in 35")
    assert repr(static) == "Credentials(source=env, temporary=False)"
    with pytest.raises(AttributeError):
        static.token = "x"  # type: ignore[misc]
    assert static == c.Credentials("ASIACANARYKEYID", CANARY, None, None, c.ENVIRONMENT)


def test_source_names_are_botocores() -> None:
    from botocore import credentials as bc

    assert c.ENVIRONMENT == bc.EnvProvider.METHOD
    assert c.SHARED_CREDENTIALS_FILE == bc.SharedCredentialProvider.METHOD
    assert c.CONFIG_FILE == bc.ConfigProvider.METHOD
    assert c.WEB_IDENTITY == bc.AssumeRoleWithWebIdentityProvider.METHOD
    assert c.CONTAINER == bc.ContainerProvider.METHOD
    assert c.INSTANCE_METADATA == bc.InstanceMetadataProvider.METHOD
    assert (c.ADVISORY_REFRESH, c.MANDATORY_REFRESH) == (
        bc._DEFAULT_ADVISORY_REFRESH_TIMEOUT,
        bc._DEFAULT_MANDATORY_REFRESH_TIMEOUT,
    )


def test_constants_are_botocores() -> None:
    from botocore import utils as bu

    fetcher = bu.ContainerMetadataFetcher
    assert (cs.CONTAINER_TIMEOUT, cs.CONTAINER_ATTEMPTS, cs.CONTAINER_PAUSE) == (
        fetcher.TIMEOUT_SECONDS,
        fetcher.RETRY_ATTEMPTS,
        fetcher.SLEEP_TIME,
    )
    assert set(fetcher._ALLOWED_HOSTS) == cs.CONTAINER_HOSTS
    assert (
        bu.METADATA_BASE_URL,
        bu.METADATA_BASE_URL_IPv6,
        bu.DEFAULT_METADATA_SERVICE_TIMEOUT,
    ) == (cs.IMDS_IPV4, cs.IMDS_IPV6, cs.IMDS_TIMEOUT)
    assert cs.IMDS_TOKEN_TTL == bu.IMDSFetcher._TOKEN_TTL


# ----------------------------------------------------------------------------- refresh windows


class FakeSource:
    """Counts fetches; answers from a list (a TransportError is raised); can block."""

    name = "fake"
    key = ("fake",)

    def __init__(self, *answers: c.Credentials | t.TransportError, gate: threading.Event | None = None):
        self.answers = list(answers)
        self.fetches = 0
        self.gate = gate

    def fetch(self, deadline: t.Deadline | None) -> c.Credentials:
        self.fetches += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, t.TransportError):
            raise answer
        return answer


def temp(n: int, expires: float) -> c.Credentials:
    return c.Credentials(f"AKIA{n}", f"secret{n}", f"token{n}", expires, "fake")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_static_credentials_are_fetched_once() -> None:
    source = FakeSource(c.Credentials("a", "b", None, None, c.ENVIRONMENT))
    cache = c.CredentialCache(source)
    assert cache.get() is cache.get()
    assert source.fetches == 1


def test_refresh_windows() -> None:
    clock = Clock()
    expiry = clock.now + 3600
    failed = t.TransportError(
        t.CONNECTION_ERROR, "container credentials at 127.0.0.1:1: ConnectionRefusedError"
    )
    source = FakeSource(temp(1, expiry), failed, failed, temp(2, expiry + 3600))
    cache = c.CredentialCache(source, clock=clock)
    first = cache.get()
    assert source.fetches == 1
    clock.now = expiry - c.ADVISORY_REFRESH - 1  # outside both windows: no fetch
    assert cache.get() is first and source.fetches == 1
    clock.now = expiry - c.ADVISORY_REFRESH + 1  # advisory: a failure keeps the current ones
    assert cache.get() is first and source.fetches == 2
    clock.now = expiry - c.MANDATORY_REFRESH + 1  # mandatory: a failure is raised
    with pytest.raises(t.TransportError) as raised:
        cache.get()
    assert raised.value is failed and source.fetches == 3
    second = cache.get()  # a success replaces them
    assert second.access_key == "AKIA2" and source.fetches == 4
    assert cache.get() is second and source.fetches == 4


def test_refetched_credentials_already_expired_are_refused() -> None:
    clock = Clock()
    source = FakeSource(temp(1, clock.now - 5))
    with pytest.raises(t.TransportError) as raised:
        c.CredentialCache(source, clock=clock).get()
    assert raised.value.reason == t.INVALID_CREDENTIALS
    assert "expired" in str(raised.value)


def test_concurrent_gets_do_one_fetch() -> None:
    gate = threading.Event()
    clock = Clock()
    source = FakeSource(temp(1, clock.now + 3600), gate=gate)
    cache = c.CredentialCache(source, clock=clock)
    results: list[c.Credentials] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert source.fetches == 1
    assert len(results) == 8 and len({id(r) for r in results}) == 1


def test_threads_waiting_for_a_failed_fetch_share_its_failure() -> None:
    # Eight requests at a cold start, a credentials endpoint that refuses: asked once, not once
    # per waiting thread (each would have made its own attempts, one after the other).
    gate = threading.Event()
    refused = t.TransportError(t.CREDENTIAL_RETRIEVAL, "container credentials answered HTTP 403")
    source = FakeSource(refused, temp(1, Clock().now + 3600), gate=gate)
    cache = c.CredentialCache(source, clock=Clock())
    errors: list[str] = []

    def get() -> None:
        try:
            cache.get()
        except t.TransportError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert source.fetches == 1
    assert errors == [str(refused)] * 8
    # A later call (a refresh) asks again, and gets the credentials now served.
    assert cache.get().access_key == "AKIA1" and source.fetches == 2


def test_advisory_window_others_use_current_ones_while_one_fetches() -> None:
    clock = Clock()
    gate = threading.Event()
    source = FakeSource(temp(1, clock.now + 3600), temp(2, clock.now + 7200))
    cache = c.CredentialCache(source, clock=clock)
    first = cache.get()
    clock.now += 3600 - c.ADVISORY_REFRESH + 1
    source.gate = gate  # the refetch blocks
    fetching = threading.Thread(target=cache.get)
    fetching.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert cache.get() is first  # not waiting for the fetch
    assert time.monotonic() - started < 0.5
    gate.set()
    fetching.join(10)
    assert cache.get().access_key == "AKIA2" and source.fetches == 2


def test_mandatory_window_waiter_runs_out_of_its_deadline() -> None:
    clock = Clock()
    gate = threading.Event()
    source = FakeSource(temp(1, clock.now + 3600))
    cache = c.CredentialCache(source, clock=clock)
    cache.get()
    clock.now += 3600 - c.MANDATORY_REFRESH + 1
    source.gate = gate
    fetching = threading.Thread(target=cache.get)
    fetching.start()
    time.sleep(0.1)
    try:
        with pytest.raises(t.TransportError) as raised:
            cache.get(t.Deadline(0.2))
        assert raised.value.reason == t.TIMEOUT
    finally:
        gate.set()
        fetching.join(10)


def test_cache_for_shares_by_configuration_and_forget_drops() -> None:
    one, two = FakeSource(temp(1, time.time() + 3600)), FakeSource(temp(2, time.time() + 3600))
    assert c.cache_for(one) is c.cache_for(two)  # same key
    first = c.cache_for(one)
    c.forget()
    assert c.cache_for(one) is not first


# ----------------------------------------------------------------------------- environment and files


def test_environment_keys_and_tokens(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "missing"}
    source = plan(env, tmp_path)  # the keys win over AWS_PROFILE, as in boto3.Session()
    assert source.name == c.ENVIRONMENT
    assert source.fetch(None) == c.Credentials("AKIA1", "s", None, None, c.ENVIRONMENT)
    env |= {"AWS_SECURITY_TOKEN": "old", "AWS_SESSION_TOKEN": "new"}
    assert plan(env, tmp_path).fetch(None).token == "old"  # botocore reads AWS_SECURITY_TOKEN first
    env |= {"AWS_SECURITY_TOKEN": "", "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z"}
    creds = plan(env, tmp_path).fetch(None)
    assert (creds.token, creds.expires) == ("new", 1893456000.0)


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_ACCESS_KEY_ID": CANARY},
        {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": CANARY, "AWS_CREDENTIAL_EXPIRATION": CANARY},
    ],
)
def test_partial_or_odd_environment_is_left_to_boto3(env: dict[str, str], tmp_path: Path) -> None:
    why = plan(env, tmp_path)
    assert isinstance(why, str)
    no_leak(why)


@pytest.mark.parametrize("access_key", [None, ""])
def test_a_secret_without_an_access_key_is_skipped_as_botocore_skips_it(
    access_key: str | None, tmp_path: Path
) -> None:
    env = {"AWS_SECRET_ACCESS_KEY": CANARY}
    if access_key is not None:
        env["AWS_ACCESS_KEY_ID"] = access_key
    source = plan(env, tmp_path)
    assert not isinstance(source, str)
    assert source.name == c.INSTANCE_METADATA  # the chain goes on past the environment
    no_leak(repr(source))


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_shared_files_profiles(tmp_path: Path) -> None:
    write(
        tmp_path / ".aws/config",
        "[default]\nregion = eu-west-1\naws_access_key_id = AKIADEFCONF\naws_secret_access_key = s0\n"
        "[profile dev]\nregion = eu-central-1\naws_access_key_id = AKIADEV\naws_secret_access_key = s1\n"
        "[dev]\naws_access_key_id = IGNORED\naws_secret_access_key = x\n",
    )
    write(
        tmp_path / ".aws/credentials",
        "[default]\naws_access_key_id = AKIADEFCRED\naws_secret_access_key = s2\n"
        "aws_security_token = first\naws_session_token = second\n"
        "[profile dev]\naws_access_key_id = IGNORED\naws_secret_access_key = x\n",
    )
    default = plan({}, tmp_path)
    assert default.name == c.SHARED_CREDENTIALS_FILE  # credentials file before config file
    assert default.fetch(None) == c.Credentials("AKIADEFCRED", "s2", "first", None, c.SHARED_CREDENTIALS_FILE)
    dev = plan({"AWS_PROFILE": "dev"}, tmp_path)  # [profile dev] in config; [dev] ignored there
    assert dev.fetch(None) == c.Credentials("AKIADEV", "s1", None, None, c.CONFIG_FILE)
    # botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE
    assert plan({"AWS_DEFAULT_PROFILE": "dev", "AWS_PROFILE": "default"}, tmp_path).name == c.CONFIG_FILE
    assert c.region({"AWS_PROFILE": "dev"}, home=str(tmp_path)) == "eu-central-1"
    assert c.region({}, home=str(tmp_path)) == "eu-west-1"
    assert c.region({"AWS_DEFAULT_REGION": "us-west-2"}, home=str(tmp_path)) == "us-west-2"
    assert (
        c.region({"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "x"}, home=str(tmp_path)) == "ap-south-1"
    )


def test_file_variables_and_region_from_credentials_file(tmp_path: Path) -> None:
    config = write(tmp_path / "elsewhere/conf", '[profile "my app"]\nregion = ca-central-1\n')
    creds = write(
        tmp_path / "elsewhere/creds", "[my app]\naws_access_key_id = AKIA9\naws_secret_access_key = s\n"
    )
    env = {"AWS_CONFIG_FILE": config, "AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_PROFILE": "my app"}
    assert plan(env, tmp_path).fetch(None).access_key == "AKIA9"
    assert c.region(env, home=str(tmp_path)) == "ca-central-1"
    # a region only in the credentials file counts (session.full_config merges both)
    write(tmp_path / ".aws/credentials", "[default]\nregion = sa-east-1\n")
    assert c.region({}, home=str(tmp_path)) == "sa-east-1"
    env = {"AWS_SHARED_CREDENTIALS_FILE": "~/elsewhere/creds", "AWS_PROFILE": "my app"}
    assert plan(env, tmp_path).fetch(None).access_key == "AKIA9"  # ~ is HOME


FALLBACKS = [
    ("[profile p]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = q\n", "", "role_arn"),
    ("[profile p]\nsso_session = s\nsso_account_id = 1\nsso_role_name = r\n", "", "sso"),
    ("[profile p]\ncredential_process = /bin/" + CANARY + "\n", "", "credential_process"),
    ("[profile p]\nlogin_session = x\n", "", "login_session"),
    ("", "[p]\naws_access_key_id = " + CANARY + "\n", "part of a key pair"),
    ("[profile p]\nregion = x\n[profile p\n", "", "cannot be parsed"),
    ("[profile p]\ns3 =\n  " + CANARY + "\n", "", "nested"),
    ("[profile q]\n", "", "does not exist"),
    ("[profile p]\nweb_identity_token_file = /t\n", "", "without a role ARN"),
    ("[profile p]\nmetadata_service_timeout = " + CANARY + "\n", "", "AWS_METADATA_SERVICE_TIMEOUT"),
    ("[profile p]\nec2_metadata_service_endpoint_mode = " + CANARY + "\n", "", "ENDPOINT_MODE"),
]


@pytest.mark.parametrize(("config", "credentials", "said"), FALLBACKS)
def test_fallbacks_say_why_without_values(config: str, credentials: str, said: str, tmp_path: Path) -> None:
    write(tmp_path / ".aws/config", config)
    write(tmp_path / ".aws/credentials", credentials)
    why = plan({"AWS_PROFILE": "p"}, tmp_path)
    assert isinstance(why, str), why
    assert said in why
    no_leak(why)


def test_credentials_file_keys_win_over_credential_process_and_config_keys_lose(tmp_path: Path) -> None:
    write(tmp_path / ".aws/config", "[default]\ncredential_process = /bin/false\n")
    write(tmp_path / ".aws/credentials", "[default]\naws_access_key_id = A\naws_secret_access_key = s\n")
    assert plan({}, tmp_path).name == c.SHARED_CREDENTIALS_FILE
    write(tmp_path / ".aws/config", "[default]\ncredential_process = /bin/false\naws_access_key_id = A\n")
    write(tmp_path / ".aws/credentials", "")
    assert "credential_process" in plan({}, tmp_path)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"AWS_PROFILE": "default"}, "does not exist"),  # named explicitly, it has to exist
        ({"AWS_CREDENTIAL_FILE": "/x"}, "AWS_CREDENTIAL_FILE"),
        ({"AWS_CONFIG_FILE": "$HOME/x"}, "AWS_CONFIG_FILE"),
        ({"AWS_EC2_METADATA_DISABLED": "TRUE"}, "AWS_EC2_METADATA_DISABLED"),
        ({"AWS_METADATA_SERVICE_NUM_ATTEMPTS": "0"}, "AWS_METADATA_SERVICE_NUM_ATTEMPTS"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "ftp://x"}, "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://vm:1/"}, "vm"),
        ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "@example.com/"}, "example.com"),
    ],
)
def test_environment_fallbacks(env: dict[str, str], said: str, tmp_path: Path) -> None:
    why = plan(env, tmp_path)
    assert isinstance(why, str) and said in why, why


def test_boto2_file_with_keys_is_left_to_boto3(tmp_path: Path) -> None:
    boto = write(tmp_path / "boto.cfg", "[Credentials]\naws_access_key_id = A\naws_secret_access_key = s\n")
    assert "boto2" in plan({"BOTO_CONFIG": boto}, tmp_path)
    write(tmp_path / ".boto", "[Credentials]\naws_access_key_id = A\naws_secret_access_key = s\n")
    assert "boto2" in plan({}, tmp_path)
    write(tmp_path / ".boto", "[Boto]\ndebug = 0\n")
    assert plan({}, tmp_path).name == c.INSTANCE_METADATA


def test_chain_order_after_the_files(tmp_path: Path) -> None:
    web = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
    container = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"}
    write(tmp_path / ".aws/credentials", "[default]\naws_access_key_id = A\naws_secret_access_key = s\n")
    assert plan({**web, **container}, tmp_path).name == c.WEB_IDENTITY  # before the files
    assert plan(container, tmp_path).name == c.SHARED_CREDENTIALS_FILE  # files before containers
    write(tmp_path / ".aws/credentials", "")
    assert plan(container, tmp_path).name == c.CONTAINER
    relative = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/x", **container}
    assert repr(plan(relative, tmp_path)) == "<credentials source container-role at 169.254.170.2:80>"
    assert plan({}, tmp_path).name == c.INSTANCE_METADATA
    # the profile's web identity settings, each overridden by its variable
    write(
        tmp_path / ".aws/config",
        "[default]\nweb_identity_token_file = /f\nrole_arn = arn:aws:iam::1:role/p\n",
    )
    assert plan({}, tmp_path).name == c.WEB_IDENTITY
    # present but empty, the variable hides the profile's file (botocore reads "in os.environ")
    assert plan({"AWS_WEB_IDENTITY_TOKEN_FILE": ""}, tmp_path).name == c.INSTANCE_METADATA


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "https://sts.amazonaws.com"),
        ({"AWS_REGION": "eu-west-1"}, "https://sts.eu-west-1.amazonaws.com"),
        ({"AWS_DEFAULT_REGION": "us-east-1"}, "https://sts.us-east-1.amazonaws.com"),
        ({"AWS_REGION": "us-east-1", "AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, "https://sts.amazonaws.com"),
        (
            {"AWS_REGION": "ap-east-1", "AWS_STS_REGIONAL_ENDPOINTS": "legacy"},
            "https://sts.ap-east-1.amazonaws.com",
        ),
        ({"AWS_REGION": "cn-north-1"}, "https://sts.cn-north-1.amazonaws.com.cn"),
        ({"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://x:1"}, "http://x:1"),
        ({"AWS_ENDPOINT_URL_STS": "http://y:1", "AWS_ENDPOINT_URL": "http://x:1"}, "http://y:1"),
    ],
)
def test_sts_endpoint_as_botocore_picks_it(env: dict[str, str], url: str) -> None:
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    got = cs.sts_endpoint(env, c.region(env, home="/nonexistent"), lambda v, k: env.get(v), {})
    assert got == url
    # botocore, given the same region (secretboot passes AWS_REGION to boto3 as region_name)
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if k != "AWS_REGION"})
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        client = botocore.session.Session().create_client(
            "sts", region_name=c.region(env, home="/nonexistent"), config=Config(signature_version=UNSIGNED)
        )
        assert client.meta.endpoint_url == url
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_STS_REGIONAL_ENDPOINTS": "Regional"},
        {"AWS_USE_FIPS_ENDPOINT": "true"},
        {"AWS_REGION": "us-gov-west-1"},
    ],
)
def test_sts_endpoints_left_to_boto3(env: dict[str, str]) -> None:
    with pytest.raises(c._Unsupported):
        cs.sts_endpoint(env, env.get("AWS_REGION"), lambda v, k: env.get(v), {})


# ----------------------------------------------------------------------------- container host guard

ALLOWED = [
    "http://127.0.0.1:8080/x",
    "http://127.0.0.2/x",
    "http://127.255.255.254/x",
    "http://[::1]:1/x",
    "http://localhost/x",
    "http://LOCALHOST:1/x",
    "http://169.254.170.2/v2/credentials/x",
    "http://169.254.170.23/v1/credentials",
    "http://[fd00:ec2::23]/v1/credentials",
    "https://example.com/creds",
]
REFUSED = [
    "http://example.com/x",
    "http://vm:1/x",  # a name for 127.0.0.1 in /etc/hosts: names are not resolved
    "http://169.254.170.2@example.com/x",
    "http://127.1/x",
    "http://0.0.0.0/x",
    "http://169.254.169.254/latest",
    "http://192.0.2.2/x",
]


@pytest.mark.parametrize("url", ALLOWED + REFUSED)
def test_container_hosts_as_botocore_allows_them(url: str) -> None:
    from botocore.utils import ContainerMetadataFetcher

    try:
        ContainerMetadataFetcher()._validate_allowed_url(url)
        botocore_allows = True
    except ValueError:
        botocore_allows = False
    assert botocore_allows == (url in ALLOWED)
    assert (cs.container_refusal(url) is None) == botocore_allows


class Recorder(http.server.BaseHTTPRequestHandler):
    """A tiny server that records every request and answers ``answer`` (status, body)."""

    seen: list[tuple[str, str, dict[str, str], bytes]]
    answer: tuple[int, bytes] = (200, b"")
    delay = 0.0

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, dict(self.headers.items()), body))
        time.sleep(self.delay)
        status, data = self.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


def serve(host: str = "127.0.0.1", answer: tuple[int, bytes] = (200, b""), delay: float = 0.0) -> Any:
    handler = type("H", (Recorder,), {"seen": [], "answer": answer, "delay": delay})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def container_answer(expires: str = "2099-01-01T00:00:00Z") -> tuple[int, bytes]:
    return 200, json.dumps({**KEYS, "Expiration": expires}).encode()


@pytest.mark.parametrize("host", ["vm", "192.0.2.2"])
def test_container_token_never_sent_to_a_refused_host(host: str) -> None:
    """A server that would answer (on every interface) gets no request for a refused host."""
    server = serve("0.0.0.0", container_answer())
    try:
        port = server.server_address[1]
        url = f"http://{host}:{port}/creds"
        source = cs.Container(
            url, variable="AWS_CONTAINER_CREDENTIALS_FULL_URI", token_file=None, token=CANARY
        )
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert raised.value.reason == t.INVALID_REQUEST
        no_leak(str(raised.value))
        assert server.RequestHandlerClass.seen == []
        # the same server through loopback gets it, with the token
        ok = cs.Container(
            f"http://127.0.0.1:{port}/creds", variable="x", token_file=None, token=CANARY
        ).fetch(None)
        assert ok.access_key == "ASIACANARYKEYID" and ok.source == c.CONTAINER
        assert server.RequestHandlerClass.seen[0][2]["Authorization"] == CANARY
    finally:
        server.shutdown()


def test_container_on_127_0_0_2_is_allowed() -> None:
    server = serve("127.0.0.2", container_answer())
    try:
        env = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.2:{server.server_address[1]}/c",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok",
        }
        creds = c.plan(env, home="/nonexistent").fetch(None)
        assert creds.expires == 4070908800.0
        assert server.RequestHandlerClass.seen[0][2]["Authorization"] == "tok"
    finally:
        server.shutdown()


def test_container_token_file_is_reread_and_line_breaks_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first")
    with ContainerCredentialsServer(KEYS, token="first") as ecs:
        env = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.full_uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ignored: the file wins",
        }
        source = c.plan(env, home=str(tmp_path))
        assert source.fetch(None).token == KEYS["Token"]
        token_file.write_text("second")
        ecs.token = "second"
        assert source.fetch(None).secret_key == KEYS["SecretAccessKey"]
        assert [r.header("authorization") for r in ecs.requests] == ["first", "second"]
        token_file.write_text(CANARY + "\n")  # botocore refuses a token with a line break
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert "line break" in str(raised.value) and ecs.count == 2
        no_leak(str(raised.value))
        token_file.unlink()
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (FileNotFoundError)" in str(raised.value)


def test_container_retries_and_never_shows_the_answer() -> None:
    server = serve(answer=(500, json.dumps({"Message": CANARY}).encode()))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c"
        source = cs.Container(url, variable="AWS_CONTAINER_CREDENTIALS_FULL_URI", token_file=None, token=None)
        started = time.monotonic()
        with pytest.raises(t.TransportError) as raised:
            source.fetch(t.Deadline(1.5))  # room for two attempts and one pause of 1 s
        assert len(server.RequestHandlerClass.seen) == 2
        assert time.monotonic() - started < 1.5
        assert raised.value.reason == t.CREDENTIAL_RETRIEVAL
        assert f"127.0.0.1:{server.server_address[1]} answered HTTP 500" in str(raised.value)
        no_leak(str(raised.value))
        server.RequestHandlerClass.answer = (200, json.dumps({"Message": CANARY}).encode())
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert "without complete credentials" in str(raised.value)
        no_leak(str(raised.value))
    finally:
        server.shutdown()


def test_container_slow_answer_is_bounded_by_the_deadline() -> None:
    server = serve(answer=container_answer(), delay=3)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c"
        source = cs.Container(url, variable="x", token_file=None, token=None)
        started = time.monotonic()
        with pytest.raises(t.TransportError) as raised:
            source.fetch(t.Deadline(0.3))
        assert time.monotonic() - started < 1.0
        assert raised.value.reason == t.TIMEOUT
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- IMDS


def imds_env(imds: ImdsServer, **more: str) -> dict[str, str]:
    return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, **more}


def test_imds_v2() -> None:
    with ImdsServer(KEYS, role="app-role") as imds:
        source = c.plan(imds_env(imds), home="/nonexistent")
        creds = source.fetch(None)
        assert (creds.access_key, creds.token, creds.source) == (
            "ASIACANARYKEYID",
            KEYS["Token"],
            c.INSTANCE_METADATA,
        )
        assert creds.expires is not None and creds.expires > time.time() + 5 * 3600
        assert [(r.method, r.path) for r in imds.requests] == [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/iam/security-credentials/"),
            ("GET", "/latest/meta-data/iam/security-credentials/app-role"),
        ]
        assert imds.token_ttls == [21600]
        no_leak(repr(source) + repr(creds))


def test_imds_v1_fallback_and_v1_disabled() -> None:
    with ImdsServer(KEYS, v1_allowed=True) as imds:
        imds.fail_next(1, 404)  # the token endpoint says no: IMDSv1
        assert c.plan(imds_env(imds), home="/nonexistent").fetch(None).source == c.INSTANCE_METADATA
        assert [r.header("x-aws-ec2-metadata-token") for r in imds.requests[1:]] == [None, None]
        imds.fail_next(1, 403)
        source = c.plan(imds_env(imds, AWS_EC2_METADATA_V1_DISABLED="true"), home="/nonexistent")
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert raised.value.reason == t.NO_CREDENTIALS and "IMDSv1 is disabled" in str(raised.value)


def test_imds_token_request_refused_with_400_gives_no_credentials() -> None:
    with ImdsServer(KEYS) as imds:
        imds.fail_next(1, 400)
        with pytest.raises(t.TransportError) as raised:
            c.plan(imds_env(imds), home="/nonexistent").fetch(None)
        assert "HTTP 400" in str(raised.value) and imds.count == 1


def test_imds_token_read_timeout_falls_back_to_v1() -> None:
    server = serve(answer=(200, b"role"), delay=1.3)  # longer than the 1 s timeout
    try:
        env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        source = c.plan(env, home="/nonexistent")
        with pytest.raises(t.TransportError):
            source.fetch(t.Deadline(2.0))
        methods = [m for m, *_ in server.RequestHandlerClass.seen]
        assert methods[:2] == ["PUT", "GET"]  # the GET came without a token
        assert "X-aws-ec2-metadata-token" not in server.RequestHandlerClass.seen[1][2]
    finally:
        server.shutdown()


def test_imds_attempts_and_no_role() -> None:
    with ImdsServer(KEYS) as imds:
        imds.disabled = True
        source = c.plan(imds_env(imds, AWS_METADATA_SERVICE_NUM_ATTEMPTS="2"), home="/nonexistent")
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert "gave no role name after 2 attempt(s) (HTTP 404)" in str(raised.value)
        imds.disabled = False
        imds.fail_next(2, 500)  # both token attempts fail: botocore goes on with IMDSv1
        imds.v1_allowed = True
        assert source.fetch(None).source == c.INSTANCE_METADATA


def test_imds_stale_credentials_are_extended_as_botocore_does() -> None:
    found = c.Credentials("a", "b", "c", 1000.0 + 60, c.INSTANCE_METADATA)
    extended = cs._extend_if_stale(found, 1000.0)
    assert extended.expires is not None and 1000 + 15 * 60 + 120 <= extended.expires <= 1000 + 15 * 60 + 600
    fresh = c.Credentials("a", "b", "c", 1000.0 + 3600, c.INSTANCE_METADATA)
    assert cs._extend_if_stale(fresh, 1000.0) is fresh


@pytest.mark.parametrize(
    ("env", "base"),
    [
        ({}, "169.254.169.254:80"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, "[fd00:ec2::254]:80"),
        ({"AWS_IMDS_USE_IPV6": "true"}, "[fd00:ec2::254]:80"),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ipv4", "AWS_IMDS_USE_IPV6": "true"},
            "169.254.169.254:80",
        ),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://10.0.0.1:8/", "AWS_IMDS_USE_IPV6": "true"},
            "10.0.0.1:8",
        ),
    ],
)
def test_imds_endpoint_choice(env: dict[str, str], base: str) -> None:
    assert repr(c.plan(env, home="/nonexistent")) == f"<credentials source iam-role at {base}>"


# ----------------------------------------------------------------------------- web identity


def sts_answer(expires: str = "2099-01-01T00:00:00Z") -> bytes:
    return (
        '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        "<AssumeRoleWithWebIdentityResult><Credentials>"
        f"<SessionToken>{KEYS['Token']}</SessionToken><SecretAccessKey>{KEYS['SecretAccessKey']}</SecretAccessKey>"
        f"<Expiration>{expires}</Expiration><AccessKeyId>ASIACANARYKEYID</AccessKeyId>"
        "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
    ).encode()


def test_web_identity_request_and_token_reread(tmp_path: Path) -> None:
    server = serve(answer=(200, sts_answer()))
    token_file = tmp_path / "token"
    token_file.write_text("jwt-one")
    try:
        env = {
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/app",
            "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{server.server_address[1]}",
        }
        source = c.plan(env, home=str(tmp_path))
        creds = source.fetch(None)
        assert creds == c.Credentials(
            "ASIACANARYKEYID", KEYS["SecretAccessKey"], KEYS["Token"], 4070908800.0, c.WEB_IDENTITY
        )
        token_file.write_text("jwt-two")
        source.fetch(None)
        forms = [urllib.parse.parse_qs(body.decode()) for *_, body in server.RequestHandlerClass.seen]
        assert [f["WebIdentityToken"] for f in forms] == [["jwt-one"], ["jwt-two"]]
        assert forms[0]["Action"] == ["AssumeRoleWithWebIdentity"] and forms[0]["Version"] == ["2011-06-15"]
        name = forms[0]["RoleSessionName"][0]
        assert name.startswith("botocore-session-") and forms[1]["RoleSessionName"] == [name]
        assert "Authorization" not in server.RequestHandlerClass.seen[0][2]  # unsigned
        env["AWS_ROLE_SESSION_NAME"] = "mine"
        c.plan(env, home=str(tmp_path)).fetch(None)
        assert urllib.parse.parse_qs(server.RequestHandlerClass.seen[-1][3].decode())["RoleSessionName"] == [
            "mine"
        ]
    finally:
        server.shutdown()


def test_web_identity_errors_name_the_code_never_the_message_or_token(tmp_path: Path) -> None:
    error = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
        f"<Message>bad token {CANARY}</Message></Error></ErrorResponse>"
    ).encode()
    server = serve(answer=(400, error))
    token_file = tmp_path / "token"
    token_file.write_text(CANARY)
    try:
        env = {
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
        }
        source = c.plan(env, home=str(tmp_path))
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert raised.value.reason == t.INVALID_CREDENTIALS
        assert "answered InvalidIdentityToken (HTTP 400)" in str(raised.value)
        assert len(server.RequestHandlerClass.seen) == 1  # not retried
        no_leak(str(raised.value) + repr(source))
        server.RequestHandlerClass.answer = (200, b"<not xml " + CANARY.encode())
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        no_leak(str(raised.value))
        token_file.unlink()
        with pytest.raises(t.TransportError) as raised:
            source.fetch(None)
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" in str(raised.value)
    finally:
        server.shutdown()


def test_web_identity_against_moto_sts(moto_endpoint: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")
    env = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/app",
        "AWS_ROLE_SESSION_NAME": "secretboot-test",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
    }
    source = c.plan(env, home=str(tmp_path))
    assert source.name == c.WEB_IDENTITY
    creds = c.cache_for(source).get(t.Deadline(10))
    assert creds.access_key.startswith("ASIA") and creds.secret_key and creds.token
    assert creds.expires is not None and creds.expires > time.time() + 600
    assert c.cache_for(c.plan(env, home=str(tmp_path))).get() is creds  # a second plan reuses them


def test_epoch_agrees_with_datetime_and_refuses_impossible_dates() -> None:
    import datetime
    import random

    rng = random.Random(15)
    for _ in range(3000):
        moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
            seconds=rng.randrange(0, 150 * 365 * 86400)
        )
        offset = rng.choice(["Z", "z", "+05:30", "-08:00", "+0100", ""])
        text = moment.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(["", ".123"]) + offset
        expected = datetime.datetime.fromisoformat(text.replace("z", "+00:00").replace("Z", "+00:00"))
        if expected.tzinfo is None:
            expected = expected.replace(tzinfo=datetime.timezone.utc)
        assert cs.epoch(text) == float(int(expected.timestamp())), text
    for impossible in (
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-01-01T24:00:00Z",
    ):
        assert cs.epoch(impossible) is None, impossible
    assert cs.epoch("2024-02-29T23:59:59Z") == 1709251199.0


def test_sts_answer_reads_the_fields_and_refuses_markup_inside_them() -> None:
    answer = (
        b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>"
        b"<SecretAccessKey>a+b/c&amp;d</SecretAccessKey><SessionToken>t</SessionToken>"
        b"<Expiration>2026-12-03T16:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>"
        b"</AssumeRoleWithWebIdentityResponse>"
    )
    fields = cs._sts_answer(answer)
    assert fields is not None and fields["SecretAccessKey"] == "a+b/c&d" and fields["AccessKeyId"] == "ASIA1"
    assert cs._sts_answer(b"<a><AccessKeyId>&#65;</AccessKeyId></a>") is None
    assert cs._sts_answer(b"\xff") is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[default]\nregion = us-east-1\n", False),
        ("[default]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:9\n", True),
        ("[default]\nservices = local\n\n[services local]\nkms =\n  endpoint_url = x\n", True),
    ],
)
def test_a_profile_with_endpoints_is_left_to_boto3(config: str, expected: bool, tmp_path: Path) -> None:
    from secretboot._fast import plan as fast_plan

    write(tmp_path / ".aws" / "config", config)
    env = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert c.profile_endpoints(env) is expected
    chosen = fast_plan(env)
    assert isinstance(chosen, str) is expected
    if expected:
        assert "endpoint_url or services" in str(chosen)
    ignored = {**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert not c.profile_endpoints(ignored)
