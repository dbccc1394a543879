"""Local stand-ins for the credential endpoints botocore's default chain talks to.

    keys = moto_credentials(moto_endpoint)           # an IAM user moto really checks
    with ContainerCredentialsServer(keys, token="Bearer t0k") as ecs:
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = ecs.full_uri
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "Bearer t0k"
        ...
        ecs.count, ecs.requests[-1].header("authorization")
    with ImdsServer(keys, role="app-role") as imds:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.endpoint
    with moto_auth(moto_endpoint):                   # SigV4 checked, only IAM keys accepted
        ...

- ``ContainerCredentialsServer``: the ECS/EKS Pod Identity/Lambda container credentials API.
  ``GET <path>`` answers ``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}``
  (``Expiration`` ISO 8601 in UTC with a ``Z``), as botocore's ``ContainerMetadataFetcher``
  reads it. With ``token``, a request without ``Authorization`` gets 401 and one with another
  value 403. ``full_uri`` is the whole URL (for ``AWS_CONTAINER_CREDENTIALS_FULL_URI``),
  ``relative_uri`` the path (``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, which clients send
  to 169.254.170.2: tests redirect that host themselves).
- ``ImdsServer``: IMDSv2. ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds``
  (1 to 21600; otherwise 400) and returns a token valid that long; ``GET
  /latest/meta-data/iam/security-credentials/`` answers the role name and ``.../<role>`` the
  credentials JSON (``Code``, ``LastUpdated``, ``Type``, keys, ``Expiration``). A GET without a
  valid ``X-aws-ec2-metadata-token`` gets 401 unless ``v1_allowed``. ``disabled = True`` answers
  404 to everything (no IMDS role service, as with the token endpoint turned off).
  ``endpoint`` is the base URL for ``AWS_EC2_METADATA_SERVICE_ENDPOINT``.

Both count requests (``count``, ``requests``: method, path and headers as seen), sleep ``delay``
seconds before answering (settable while running), answer ``fail_next(n, status)`` requests
with that status, and serve ``expiration`` (a UTC datetime, settable). Keys are a mapping with
``AccessKeyId`` and ``SecretAccessKey`` and optionally ``Token`` (a made-up one is served
without it), as ``moto_credentials`` returns them.
"""

from __future__ import annotations

import datetime
import itertools
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.keepalive import KeepAliveHandler, KeepAliveServer
from tests.localaws import client

ISO_Z = "%Y-%m-%dT%H:%M:%SZ"
SESSION_TOKEN = "FwoGZXIvYXdzELocalSessionToken"  # served when the keys carry no Token
CONTAINER_PATH = "/v2/credentials/5b3c2f4e-secretboot-tests"
IMDS_TOKEN_PATH = "/latest/api/token"
IMDS_ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
IMDS_MAX_TTL = 21600


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class Seen:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"


class _Server(KeepAliveServer):
    owner: _CredentialServer


class _Handler(KeepAliveHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        answer = self.server.owner._handle(seen)
        self.send_response_only(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve


class _CredentialServer:
    """What both servers share: the thread, the request log, delays and injected failures."""

    name = "credserver"

    def __init__(self, credentials: Mapping[str, str], *, delay: float = 0.0) -> None:
        if "AccessKeyId" not in credentials or "SecretAccessKey" not in credentials:
            raise ValueError("credentials need AccessKeyId and SecretAccessKey")
        self.credentials = dict(credentials)
        self.delay = delay
        self.expiration = _utcnow() + datetime.timedelta(hours=6)
        self._lock = threading.Lock()
        self._requests: list[Seen] = []
        self._failures: list[int] = []
        self._server: _Server | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already running")
        server = _Server(_Handler)
        server.owner = self
        self._server = server
        server.start(self.name, poll_interval=0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("not running: call start() first")
        return f"http://{self._server.host_port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not running: call start() first")
        return int(self._server.server_address[1])

    # -- observation and faults -----------------------------------------------------------
    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()

    def fail_next(self, times: int, status: int = 500) -> None:
        """Answer the next ``times`` requests with ``status`` (and an empty body)."""
        if times < 1 or not 400 <= status <= 599:
            raise ValueError("times >= 1 and a 4xx/5xx status")
        with self._lock:
            self._failures.extend([status] * times)

    def _handle(self, seen: Seen) -> _Answer:
        with self._lock:
            self._requests.append(seen)
            failure = self._failures.pop(0) if self._failures else None
        if self.delay > 0:
            time.sleep(self.delay)
        if failure is not None:
            return _Answer(failure, b"injected failure")
        return self.answer(seen)

    def answer(self, seen: Seen) -> _Answer:
        raise NotImplementedError  # pragma: no cover (each server has its own)

    def _keys(self) -> dict[str, str]:
        return {
            "AccessKeyId": self.credentials["AccessKeyId"],
            "SecretAccessKey": self.credentials["SecretAccessKey"],
            "Token": self.credentials.get("Token", SESSION_TOKEN),
            "Expiration": self.expiration.strftime(ISO_Z),
        }


def _json(status: int, document: Mapping[str, Any]) -> _Answer:
    return _Answer(status, json.dumps(document).encode(), "application/json")


class ContainerCredentialsServer(_CredentialServer):
    """The container credentials endpoint (ECS task role, EKS Pod Identity, Lambda/SnapStart)."""

    name = "container-credentials"

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        token: str | None = None,
        delay: float = 0.0,
        path: str = CONTAINER_PATH,
    ) -> None:
        super().__init__(credentials, delay=delay)
        if not path.startswith("/"):
            raise ValueError("path starts with '/'")
        self.token = token
        self.path = path

    @property
    def full_uri(self) -> str:
        return self.base_url + self.path

    @property
    def relative_uri(self) -> str:
        return self.path

    def answer(self, seen: Seen) -> _Answer:
        if seen.method != "GET":
            return _Answer(405, b"method not allowed")
        if seen.path != self.path:
            return _Answer(404, b"not found")
        if self.token is not None:
            given = seen.header("authorization")
            if given is None:
                return _json(401, {"Message": "Authorization header is missing"})
            if given != self.token:
                return _json(403, {"Message": "Authorization token is not valid"})
        return _json(200, self._keys())


class ImdsServer(_CredentialServer):
    """The EC2 instance metadata service's IAM role credentials, IMDSv2 first."""

    name = "imds"

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        role: str = "app-role",
        v1_allowed: bool = False,
        delay: float = 0.0,
    ) -> None:
        super().__init__(credentials, delay=delay)
        self.role = role
        self.v1_allowed = v1_allowed
        self.disabled = False
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.token_ttls: list[int] = []  # the TTLs asked for, in order

    @property
    def endpoint(self) -> str:
        return self.base_url + "/"

    def answer(self, seen: Seen) -> _Answer:
        if self.disabled:
            return _Answer(404, b"Not Found")
        if seen.path == IMDS_TOKEN_PATH:
            return self._token(seen)
        if seen.method != "GET":
            return _Answer(405, b"Method Not Allowed")
        if not seen.path.startswith(IMDS_ROLE_PATH):
            return _Answer(404, b"Not Found")
        if not self._authorized(seen):
            return _Answer(401, b"Unauthorized")
        role = seen.path[len(IMDS_ROLE_PATH) :]
        if role == "":
            return _Answer(200, self.role.encode())
        if role != self.role:
            return _Answer(404, b"Not Found")
        document = {
            "Code": "Success",
            "LastUpdated": _utcnow().strftime(ISO_Z),
            "Type": "AWS-HMAC",
            **self._keys(),
        }
        return _json(200, document)

    def _token(self, seen: Seen) -> _Answer:
        if seen.method != "PUT":
            return _Answer(405, b"Method Not Allowed")
        ttl_text = seen.header("x-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(ttl_text or "")
        except ValueError:
            return _Answer(400, b"Bad Request")
        if not 1 <= ttl <= IMDS_MAX_TTL:
            return _Answer(400, b"Bad Request")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.token_ttls.append(ttl)
            self._tokens[token] = time.monotonic() + ttl
        return _Answer(200, token.encode())

    def _authorized(self, seen: Seen) -> bool:
        token = seen.header("x-aws-ec2-metadata-token")
        if token is None:
            return self.v1_allowed
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry


# -- moto with its signature checks on ------------------------------------------------------

_users = itertools.count(1)

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["kms:*", "ssm:*", "secretsmanager:*", "sts:GetCallerIdentity"],
            "Resource": "*",
        }
    ],
}


TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
}


def moto_user_keys(endpoint: str, *, user: str | None = None) -> dict[str, str]:
    """An IAM user on the local moto allowed kms/ssm/secretsmanager, and its new access key.

    Returns ``{"AccessKeyId", "SecretAccessKey"}`` (``AKIA...``, no token: moto refuses a user's
    key sent with a session token, as AWS does). Create users while moto's auth is off.
    """
    iam = client(endpoint, "iam")
    name = user or f"secretboot-user-{next(_users)}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="secretboot", PolicyDocument=json.dumps(POLICY))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def moto_credentials(endpoint: str, *, role: str | None = None) -> dict[str, str]:
    """Temporary credentials moto checks for real: an IAM role allowed kms/ssm/secretsmanager,
    assumed through moto's STS.

    Returns ``{"AccessKeyId", "SecretAccessKey", "Token", "RoleArn"}`` (``ASIA...`` keys; moto
    checks the signature and that the token is the one STS issued with them): what container
    endpoints and IMDS serve. Create them while moto's auth is off.
    """
    iam = client(endpoint, "iam")
    name = role or f"secretboot-role-{next(_users)}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="secretboot", PolicyDocument=json.dumps(POLICY))
    answer = client(endpoint, "sts").assume_role(RoleArn=arn, RoleSessionName="credservers")
    keys = answer["Credentials"]
    return {
        "AccessKeyId": keys["AccessKeyId"],
        "SecretAccessKey": keys["SecretAccessKey"],
        "Token": keys["SessionToken"],
        "RoleArn": arn,
    }


def set_moto_auth(endpoint: str, enforced: bool) -> None:
    """Turn moto's IAM checks on (every request from now on) or off.

    moto's ``POST /moto-api/reset-auth`` takes the number of requests to let through
    unchecked (a float): ``0`` checks from the next request, ``inf`` never.
    """
    body = b"0" if enforced else b"inf"
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


@contextmanager
def moto_auth(endpoint: str) -> Iterator[None]:
    """moto checks signatures and IAM policies inside the block; never after it."""
    set_moto_auth(endpoint, True)
    try:
        yield
    finally:
        set_moto_auth(endpoint, False)


def isolate(monkeypatch: Any, home: str, env: Mapping[str, str] = {}) -> None:
    """Give botocore (which reads os.environ and ~) a clean environment: ``home`` as HOME,
    no AWS_*/BOTO_* variables and no proxies, then ``env``. Undone by ``monkeypatch``."""
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "BOTO_", "SECRETBOOT_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", home)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
