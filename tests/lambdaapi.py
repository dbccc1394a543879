"""Lambda functions on moto, and a proxy that gives moto's Lambda API real Lambda's revisions.

    config = create_function(moto_url, "app", {"DB_PASSWORD": "ssm:/app/db"}, kms_key_arn=None)
    function_variables(moto_url, "app")  # {"DB_PASSWORD": "ssm:/app/db"}, read from moto itself

moto's Lambda neither returns nor checks ``RevisionId``; real Lambda returns one with every
function configuration and refuses ``UpdateFunctionConfiguration`` with a stale one (412
``PreconditionFailedException``). ``LambdaRevisions`` is an ``AwsProxy`` that adds that, for the
requests passing through it (everything else, KMS and SSM included, is relayed unchanged)::

    with LambdaRevisions(moto_url) as proxy:
        lam = boto3.client("lambda", endpoint_url=proxy.url, ...)
        revision = lam.get_function_configuration(FunctionName="app")["RevisionId"]
        # Another writer changes the function between our read and our write:
        proxy.before_next_update(lambda: set_function_variables(moto_url, "app", {"X": "1"}))
        lam.update_function_configuration(FunctionName="app", RevisionId=revision, ...)  # 412
        proxy.updates()  # [("app", revision)]: what each UpdateFunctionConfiguration sent

- The proxy keeps one revision id (a uuid4 string) per function name. It is made up when the
  function is first seen and made up again after every successful change through the proxy
  (any 2xx PUT, POST or DELETE under ``/functions/{name}``) and when a ``before_next_update``
  callback has run. Changes made directly against moto are invisible to it: that is what the
  callback is for.
- It adds ``RevisionId`` to the answers of CreateFunction, GetFunctionConfiguration,
  UpdateFunctionConfiguration, UpdateFunctionCode (top level) and GetFunction (under
  ``Configuration``). Only ``$LATEST`` has revisions here: a request with another qualifier
  (``?Qualifier=1``, ``app:prod``) is relayed unchanged.
- UpdateFunctionConfiguration with a ``RevisionId`` other than the current one is answered 412
  without reaching moto; without a ``RevisionId`` it is forwarded, as Lambda does. Lambda function
  requests go to moto one at a time, so no other change can come between a check and its write.
- Latency and faults (``AwsProxy.add_fault``) apply first, as for any request; Lambda requests
  have no ``X-Amz-Target`` and count under ``""`` in ``counts()``.
"""

from __future__ import annotations

import functools
import io
import json
import threading
import uuid
import zipfile
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.awsproxy import AwsProxy, ProxyRequest, ProxyResponse
from tests.localaws import client

ROLE_NAME = "secretboot-test-lambda"
RUNTIME = "python3.13"
HANDLER_SOURCE = "def handler(event, context):\n    return None\n"
_FUNCTIONS = "/2015-03-31/functions"
PRECONDITION_FAILED = "PreconditionFailedException"
_STALE_MESSAGE = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
)


@functools.lru_cache(maxsize=16)
def _client(endpoint: str, service: str) -> Any:
    """One boto3 client per endpoint and service: building one costs about 100 ms."""
    return client(endpoint, service)


def _role_arn(endpoint: str) -> str:
    iam = _client(endpoint, "iam")
    try:
        return str(iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        pass
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    return str(role["Role"]["Arn"])


def _code_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", HANDLER_SOURCE)
    return buffer.getvalue()


def create_function(
    endpoint: str, name: str, variables: dict[str, str], *, kms_key_arn: str | None = None
) -> dict[str, Any]:
    """Create a python3.13 function ``name`` with these environment variables; return its configuration.

    The IAM role it needs is created on first use (and again after a moto reset). ``endpoint`` is
    moto's URL or a ``LambdaRevisions`` proxy's (whose answer then carries a ``RevisionId``).
    """
    options: dict[str, Any] = {"Environment": {"Variables": dict(variables)}}
    if kms_key_arn is not None:
        options["KMSKeyArn"] = kms_key_arn
    config = _client(endpoint, "lambda").create_function(
        FunctionName=name,
        Runtime=RUNTIME,
        Role=_role_arn(endpoint),
        Handler="handler.handler",
        Code={"ZipFile": _code_zip()},
        **options,
    )
    config.pop("ResponseMetadata", None)
    return dict(config)


def function_variables(endpoint: str, name: str) -> dict[str, str]:
    """The function's environment variables as ``endpoint`` (moto's URL, for the truth) has them."""
    config = _client(endpoint, "lambda").get_function_configuration(FunctionName=name)
    # moto leaves "Environment" out altogether when there are no variables.
    return dict(config.get("Environment", {}).get("Variables", {}))


def set_function_variables(endpoint: str, name: str, variables: dict[str, str]) -> None:
    """Replace the function's variables (no RevisionId): another writer, for ``before_next_update``."""
    _client(endpoint, "lambda").update_function_configuration(
        FunctionName=name, Environment={"Variables": dict(variables)}
    )


def _function_name(path: str) -> tuple[str, str | None] | None:
    """``(name, qualifier)`` for a path under /functions/{name}, else None.

    The name may be a name, ``name:qualifier``, a partial ARN or a full ARN, URL-encoded.
    """
    parts = urlsplit(path)
    rest = parts.path[len(_FUNCTIONS) :]
    if not parts.path.startswith(_FUNCTIONS + "/") or not rest.strip("/"):
        return None
    segments = unquote(rest.lstrip("/").split("/", 1)[0]).split(":")
    if "function" in segments:
        segments = segments[segments.index("function") + 1 :]
    qualifier = segments[1] if len(segments) > 1 else None
    qualifier = parse_qs(parts.query).get("Qualifier", [qualifier])[0]
    return segments[0], qualifier


def _json(response: ProxyResponse) -> dict[str, Any] | None:
    if not 200 <= response.status < 300 or not response.body:
        return None
    try:
        document = json.loads(response.body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _with_body(response: ProxyResponse, document: dict[str, Any]) -> ProxyResponse:
    body = json.dumps(document).encode()
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    return ProxyResponse(response.status, response.reason, headers, body)


class LambdaRevisions(AwsProxy):
    """An ``AwsProxy`` whose Lambda functions have revisions that ``UpdateFunctionConfiguration`` checks."""

    def __init__(self, upstream: str, **options: Any) -> None:
        super().__init__(upstream, **options)
        self._revisions: dict[str, str] = {}
        self._updates: list[tuple[str, str | None]] = []
        self._hook: Callable[[], object] | None = None
        self._function_lock = threading.Lock()  # serializes Lambda function requests

    def __enter__(self) -> LambdaRevisions:
        self.start()
        return self

    def revision(self, name: str) -> str:
        """The function's current revision id (made up now if it was never seen)."""
        with self._lock:
            return self._revisions.setdefault(name, str(uuid.uuid4()))

    def updates(self) -> list[tuple[str, str | None]]:
        """``(function name, RevisionId sent or None)`` per UpdateFunctionConfiguration received."""
        with self._lock:
            return list(self._updates)

    def before_next_update(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when the next UpdateFunctionConfiguration arrives, then change its revision.

        ``callback`` runs in the proxy's handler thread, before the revision check; it should talk
        to moto directly (not through this proxy). Set again to replace a callback not yet run.
        """
        with self._lock:
            self._hook = callback

    def forward(self, request: ProxyRequest) -> ProxyResponse:
        if request.path.rstrip("/").split("?")[0] == _FUNCTIONS and request.method == "POST":
            return self._create(request)
        target = _function_name(request.path)
        if target is None or target[1] not in (None, "$LATEST"):
            return super().forward(request)
        name = target[0]
        is_update = request.method == "PUT" and urlsplit(request.path).path.endswith("/configuration")
        sent = _revision_sent(request.body) if is_update else None
        if is_update:
            with self._lock:
                self._updates.append((name, sent))
                hook, self._hook = self._hook, None
            if hook is not None:
                try:
                    hook()
                except Exception as exc:  # a 4xx the SDKs do not retry, naming the exception's type
                    return _error(400, "CallbackFailed", f"before_next_update callback: {type(exc).__name__}")
                with self._lock:
                    self._revisions[name] = str(uuid.uuid4())
        with self._function_lock:
            if is_update and sent is not None and sent != self.revision(name):
                return _error(412, PRECONDITION_FAILED, _STALE_MESSAGE)
            response = super().forward(request)
            if request.method in ("PUT", "POST", "DELETE") and 200 <= response.status < 300:
                with self._lock:
                    self._revisions[name] = str(uuid.uuid4())
            return self._annotate(response, name)

    def _create(self, request: ProxyRequest) -> ProxyResponse:
        response = super().forward(request)
        document = _json(response)
        if document is None or "FunctionName" not in document:
            return response
        with self._lock:
            self._revisions[document["FunctionName"]] = str(uuid.uuid4())
        return self._annotate(response, document["FunctionName"])

    def _annotate(self, response: ProxyResponse, name: str) -> ProxyResponse:
        """Add the current ``RevisionId`` to a function configuration in a 2xx JSON answer."""
        document = _json(response)
        if document is None:
            return response
        if "FunctionArn" in document:
            document["RevisionId"] = self.revision(name)
        elif isinstance(document.get("Configuration"), dict):
            document["Configuration"]["RevisionId"] = self.revision(name)
        else:
            return response
        return _with_body(response, document)


def _revision_sent(body: bytes) -> str | None:
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return None
    revision = document.get("RevisionId") if isinstance(document, dict) else None
    return revision if isinstance(revision, str) else None


def _error(status: int, code: str, message: str) -> ProxyResponse:
    """A Lambda (REST-JSON) error answer: the code in ``x-amzn-ErrorType``, as Lambda sends it."""
    body = json.dumps({"Type": "User", "message": message}).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", code),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ]
    return ProxyResponse(status, "Precondition Failed" if status == 412 else "Bad Request", headers, body)
