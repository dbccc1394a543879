"""The boto3 transport: one session, one client per service, built on first use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from secretboot import _retry
from secretboot import _transport as t

# At DEBUG botocore logs request parameters and response bodies (ciphertext going
# out, plaintext coming back: botocore.endpoint, botocore.parsers), the canonical
# request with its X-Amz-Security-Token header (botocore.auth), bodies being
# rewound (botocore.awsrequest), handlers' arguments (botocore.hooks,
# botocore.handlers), and more as it changes. So for our calls every DEBUG record
# of every botocore, boto3 and urllib3 logger is dropped, not a list of known
# offenders; their warnings and errors still go through.
_LIBRARY_LOGGERS = ("botocore", "boto3", "urllib3")
_calling = threading.local()


class _DropOurDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or not getattr(_calling, "active", False)


_filter = _DropOurDebug()


def _guard_loggers() -> None:
    """Put the filter on every library logger there is (a filter is not inherited).

    Called once a client is built: by then botocore has imported the modules its
    calls use, and so created their loggers. ``addFilter`` is idempotent.
    """
    loggers = logging.Logger.manager.loggerDict
    for name in list(loggers):
        logger = loggers.get(name)
        if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in _LIBRARY_LOGGERS:
            logger.addFilter(_filter)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).addFilter(_filter)


class Boto3Transport:
    """``Transport`` over boto3. Clients are thread-safe; building them is not."""

    name = "boto3"

    def __init__(
        self,
        aws: Mapping[str, str],
        *,
        max_pool_connections: int,
        deadline: t.Deadline | None = None,
        adaptive: bool = False,
    ) -> None:
        # ``aws`` holds the AWS_* variables of the environment being booted, so
        # a mapping passed to bootstrap(environ=...) or a .env file governs
        # region, endpoint and credentials just as os.environ would.
        self._aws = aws
        self._pool = max_pool_connections
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._deadline = deadline
        # botocore makes one attempt; the retries are ours, bounded by the deadline.
        self._policy = _retry.RetryPolicy(deadline)
        self._adaptive = adaptive

    @property
    def retries(self) -> int:
        return self._policy.retries

    @property
    def waited(self) -> float:
        return self._policy.waited

    def _client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._build(service)
                self._clients[service] = client
        return client

    def _build(self, service: str) -> Any:
        import boto3.session
        from botocore.config import Config

        aws = self._aws
        if self._session is None:
            self._session = boto3.session.Session(
                aws_access_key_id=aws.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=aws.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=aws.get("AWS_SESSION_TOKEN"),
                region_name=aws.get("AWS_REGION") or aws.get("AWS_DEFAULT_REGION"),
                profile_name=aws.get("AWS_PROFILE") if "AWS_ACCESS_KEY_ID" not in aws else None,
            )
        # Short socket timeouts keep a thread that resolve() stopped waiting for brief.
        left = self._deadline.remaining() if self._deadline is not None else t.READ_TIMEOUT
        config = Config(
            connect_timeout=max(0.1, min(t.CONNECT_TIMEOUT, left)),
            read_timeout=max(0.1, min(t.READ_TIMEOUT, left)),
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=self._pool,
        )
        client = self._session.client(service, config=config, endpoint_url=t.endpoint_url(aws, service))
        _guard_loggers()
        # botocore reads every answer whole; its HTTP session is wrapped to stop at
        # MAX_ANSWER. Endpoint.http_session is botocore's, not public API: where a
        # release lacks it, answers go unbounded (tests/test_fast.py would say so).
        endpoint = getattr(client, "_endpoint", None)
        if endpoint is not None and hasattr(endpoint, "http_session"):
            endpoint.http_session = _BoundedSession(endpoint.http_session)
        return client

    def _invoke(self, service: str, operation: str, kwargs: Mapping[str, Any]) -> Any:
        """Call ``operation``; botocore's errors come out as ``TransportError``.

        The error is raised after the except block, with no cause or context:
        botocore's exceptions can quote the request (ciphertext, a value to store).
        """
        name = "".join(word.capitalize() for word in operation.split("_"))  # decrypt -> Decrypt
        limiter = None
        if self._adaptive:
            aws = self._aws
            where = (
                t.endpoint_url(aws, service) or aws.get("AWS_REGION") or aws.get("AWS_DEFAULT_REGION") or ""
            )
            limiter = _retry.limiter(service, where)

        def attempt() -> Any:
            _calling.active = True  # this thread's botocore body logs are dropped
            try:
                return getattr(self._client(service), operation)(**kwargs)
            except Exception as exc:
                error = _translated(exc, self._aws)
                if error is None:
                    raise
            finally:
                _calling.active = False
            raise error

        return self._policy.run(name, attempt, limiter)

    def decrypt(
        self, ciphertext: bytes, *, context: Mapping[str, str] | None, key_id: str | None
    ) -> tuple[bytes, str]:
        kwargs: dict[str, Any] = {"CiphertextBlob": ciphertext}
        if context:
            kwargs["EncryptionContext"] = dict(context)
        if key_id:
            kwargs["KeyId"] = key_id
        answer = self._invoke("kms", "decrypt", kwargs)
        return answer["Plaintext"], str(answer.get("KeyId", ""))

    def get_parameters(self, names: Sequence[str]) -> t.Parameters:
        answer = self._invoke("ssm", "get_parameters", {"Names": list(names), "WithDecryption": True})
        found = [t.Parameter(p["Name"], p.get("ARN", ""), p["Value"]) for p in answer.get("Parameters", ())]
        return t.Parameters(found, list(answer.get("InvalidParameters", ())))

    def get_secret_values(self, secret_ids: Sequence[str]) -> t.Secrets:
        answer = self._invoke("secretsmanager", "batch_get_secret_value", {"SecretIdList": list(secret_ids)})
        found = [_secret(s) for s in answer.get("SecretValues", ())]
        errors = [
            t.SecretError(e["SecretId"], str(e.get("ErrorCode", "")), str(e.get("Message", "")))
            for e in answer.get("Errors", ())
        ]
        return t.Secrets(found, errors)

    def get_secret_value(
        self, secret_id: str, *, version_stage: str | None, version_id: str | None
    ) -> t.Secret:
        kwargs = {"SecretId": secret_id}
        if version_stage:
            kwargs["VersionStage"] = version_stage
        if version_id:
            kwargs["VersionId"] = version_id
        return _secret(self._invoke("secretsmanager", "get_secret_value", kwargs))


class _AnswerTooLarge(Exception):
    """An answer longer than ``MAX_ANSWER``; the message names the operation, nothing else."""


# Answers are read this much at a time, so an endless one costs at most
# MAX_ANSWER and one chunk before it is refused.
_CHUNK = 64 << 10


class _BoundedSession:
    """botocore's HTTP session, reading no answer past ``MAX_ANSWER`` bytes.

    botocore's ``send`` reads the whole body unless the request streams its output;
    this marks the request so, then reads the body itself, in chunks, after checking
    any Content-Length. What a request streams by its own nature is left alone (no
    operation secretboot calls does).
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def send(self, request: Any) -> Any:
        if request.stream_output:
            return self._session.send(request)
        request.stream_output = True
        response = self._session.send(request)
        response._content = _bounded_body(response, request)  # what AWSResponse.content returns
        return response


def _bounded_body(response: Any, request: Any) -> bytes:
    """The body of a botocore ``AWSResponse``, with the errors botocore's ``send`` would raise."""
    from botocore.exceptions import ConnectionClosedError, ReadTimeoutError
    from urllib3.exceptions import ProtocolError
    from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError

    target = request.headers.get("X-Amz-Target") or b""  # bytes once botocore has signed
    target = target.decode("ascii", "replace") if isinstance(target, bytes) else str(target)
    operation = target.rpartition(".")[2] or "the request"
    too_large = f"the {operation} answer is larger than {t.MAX_ANSWER >> 20} MiB, more than any real one"
    raw = response.raw
    length = str(response.headers.get("Content-Length", "") or "")
    if length.isdecimal() and int(length) > t.MAX_ANSWER:  # refused before anything is read
        raw.close()  # the connection is dropped, not reused with a body in it
        raise _AnswerTooLarge(too_large)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in raw.stream(_CHUNK):
            size += len(chunk)
            if size > t.MAX_ANSWER:
                break
            chunks.append(chunk)
    except Urllib3ReadTimeoutError as exc:
        raise ReadTimeoutError(endpoint_url=request.url, error=exc) from None
    except ProtocolError as exc:
        raise ConnectionClosedError(error=exc, request=request, endpoint_url=request.url) from None
    if size > t.MAX_ANSWER:
        raw.close()
        raise _AnswerTooLarge(too_large)
    return b"".join(chunks)


def _secret(answer: Mapping[str, Any]) -> t.Secret:
    return t.Secret(
        str(answer["Name"]),
        str(answer.get("ARN", "")),
        string=answer.get("SecretString"),
        binary=answer.get("SecretBinary"),
    )


class Boto3Admin(Boto3Transport):
    """The one-time operations of the CLI: encrypt, re-encrypt, store a SecureString, rewrite a
    Lambda function's environment.

    boto3 here, not the fast transport: these run on a developer's machine or in a
    pipeline, where profiles, SSO and instance credentials must work.
    """

    def __init__(self, aws: Mapping[str, str]) -> None:
        super().__init__(aws, max_pool_connections=2)

    def encrypt(self, plaintext: bytes, *, key_id: str, context: Mapping[str, str] | None) -> bytes:
        kwargs: dict[str, Any] = {"KeyId": key_id, "Plaintext": plaintext}
        if context:
            kwargs["EncryptionContext"] = dict(context)
        answer = self._invoke("kms", "encrypt", kwargs)
        blob: bytes = answer["CiphertextBlob"]
        return blob

    def re_encrypt(
        self,
        ciphertext: bytes,
        *,
        source_context: Mapping[str, str] | None,
        key_id: str,
        context: Mapping[str, str] | None,
    ) -> tuple[bytes, str]:
        """``ReEncrypt``: the plaintext never leaves KMS. Returns (blob, new key ARN)."""
        kwargs: dict[str, Any] = {"CiphertextBlob": ciphertext, "DestinationKeyId": key_id}
        if source_context:
            kwargs["SourceEncryptionContext"] = dict(source_context)
        if context:
            kwargs["DestinationEncryptionContext"] = dict(context)
        answer = self._invoke("kms", "re_encrypt", kwargs)
        return answer["CiphertextBlob"], str(answer.get("KeyId", ""))

    def generate_data_key(self, *, key_id: str, context: Mapping[str, str] | None) -> tuple[bytes, bytes]:
        """A fresh AES-256 data key: (plaintext, KMS ciphertext)."""
        kwargs: dict[str, Any] = {"KeyId": key_id, "KeySpec": "AES_256"}
        if context:
            kwargs["EncryptionContext"] = dict(context)
        answer = self._invoke("kms", "generate_data_key", kwargs)
        return answer["Plaintext"], answer["CiphertextBlob"]

    def put_secure_string(self, name: str, value: str, *, key_id: str, overwrite: bool) -> None:
        self._invoke(
            "ssm",
            "put_parameter",
            dict(
                Name=name,
                Value=value,
                Type="SecureString",
                KeyId=key_id,
                Overwrite=overwrite,
                # Standard parameters hold at most 4 KB; larger values need the Advanced tier.
                Tier="Advanced" if len(value.encode("utf-8")) > 4096 else "Standard",
            ),
        )

    def function_environment(self, function: str) -> tuple[dict[str, str], str | None]:
        """A Lambda function's environment variables and the revision they belong to."""
        answer = self._invoke("lambda", "get_function_configuration", {"FunctionName": function})
        variables = answer.get("Environment", {}).get("Variables", {})
        return dict(variables), answer.get("RevisionId")

    def update_function_environment(
        self, function: str, variables: Mapping[str, str], *, revision: str | None
    ) -> None:
        """Replace the function's environment, only if it is still at ``revision``."""
        kwargs: dict[str, Any] = {"FunctionName": function, "Environment": {"Variables": dict(variables)}}
        if revision:
            kwargs["RevisionId"] = revision
        try:
            self._invoke("lambda", "update_function_configuration", kwargs)
            return
        except t.TransportError as exc:
            # Lambda's refusals can quote the environment sent (its 4 KB error quotes all of it).
            refused = t.TransportError(exc.reason, f"Lambda refused the new environment of {function}")
        raise refused


def _translated(exc: Exception, aws: Mapping[str, str] | None = None) -> t.TransportError | None:
    """botocore's exception as a ``TransportError`` with a reason code; ``None`` if not botocore's.

    ``aws`` is the environment's AWS variables, for saying where credentials were looked for.
    """
    from botocore import exceptions as be

    if isinstance(exc, _AnswerTooLarge):
        return t.TransportError(t.ANSWER_TOO_LARGE, str(exc))
    if isinstance(exc, be.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        backoff = _retry.base_for(code, status)
        return t.TransportError(t.reason_for_code(code), str(error.get("Message", "")), backoff=backoff)
    if isinstance(exc, (be.ConnectTimeoutError, be.ReadTimeoutError)):
        return t.TransportError(t.TIMEOUT, _at_endpoint(exc), backoff=_retry.TRANSIENT_BASE)
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectionClosedError, be.HTTPClientError)):
        return t.TransportError(t.CONNECTION_ERROR, _at_endpoint(exc), backoff=_retry.TRANSIENT_BASE)
    if isinstance(exc, be.NoCredentialsError):
        return t.TransportError(t.NO_CREDENTIALS, no_credentials(aws or {}))
    if isinstance(exc, be.NoRegionError):
        return t.TransportError(t.NO_REGION, "set AWS_REGION")
    if isinstance(exc, be.ParamValidationError):
        # botocore's message can quote the request; keep only the kind.
        return t.TransportError(t.INVALID_REQUEST, "request failed client-side validation")
    if isinstance(exc, be.CredentialRetrievalError):  # its message names the provider only
        return t.TransportError(t.CREDENTIAL_RETRIEVAL, f"{exc.kwargs.get('provider', 'a provider')} failed")
    if isinstance(exc, be.BotoCoreError):
        return t.TransportError(t.SERVICE_ERROR, type(exc).__name__)
    if isinstance(exc, UnicodeEncodeError):  # say, a credential with a non-ASCII character
        return t.TransportError(t.INVALID_REQUEST, "the request holds text that cannot be encoded")
    return None


def _at_endpoint(exc: Exception) -> str:
    """The kind of ``exc`` and the host:port it was talking to, when botocore says.

    Only the host and port of its ``endpoint_url``: never a path or query (a request's URL
    could carry one), nor a user:password@ part; never botocore's own text.
    """
    from urllib.parse import urlsplit

    kind = type(exc).__name__
    url = getattr(exc, "kwargs", {}).get("endpoint_url")
    if not isinstance(url, str):
        return kind
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        return kind
    if not host:
        return kind
    return f"{kind} at {f'[{host}]' if ':' in host else host}:{port}"


def no_credentials(aws: Mapping[str, str]) -> str:
    """Where boto3 looked for credentials (its default chain, in order) and what to set."""
    profile = aws.get("AWS_PROFILE") or "default"
    return (
        "no AWS credentials found; boto3 looked in: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
        f"profile {profile!r} (AWS_PROFILE) in ~/.aws/credentials and ~/.aws/config; "
        "AWS_WEB_IDENTITY_TOKEN_FILE; container and instance metadata. "
        "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    )
