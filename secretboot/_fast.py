"""The fast transport: KMS and SSM's JSON APIs over ``http.client`` with SigV4.

Importing botocore and building its clients costs far more than the requests
themselves on a cold start; this speaks the two calls secretboot needs with the
standard library. It keeps boto3's behaviour where it matters: retries with
exponential backoff and full jitter on throttling, 5xx and connection errors
(bounded by the deadline, see ``_retry``), optionally a client-side rate limit
per service after throttling (botocore's ``adaptive`` mode), connect and read timeouts,
TLS verified against the system's trust store (one context per process, ``_http``),
keep-alive connections reused per endpoint, the same reason codes, and the same identity:
credentials come from the source botocore's default chain would use (``_credentials``),
refreshed before they expire.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from urllib.parse import urlsplit

from secretboot import _credentials, _http, _retry, _sigv4
from secretboot import _transport as t

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import Any

    from secretboot._credentials import Source

_TARGETS = {"kms": "TrentService", "ssm": "AmazonSSM", "secretsmanager": "secretsmanager"}
_USER_AGENT = "secretboot/0.1.0 (fast transport)"

# Regions of the standard "aws" partition, whose endpoints are
# {service}.{region}.amazonaws.com. Anything else goes to boto3.
_STANDARD_REGION = r"(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-[0-9]+"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unsupported(env: Mapping[str, str], services: Collection[str] = tuple(_TARGETS)) -> str | None:
    """Why the fast transport cannot serve ``services`` in this environment, or ``None`` if it can."""
    chosen = plan(env, services)
    return chosen if isinstance(chosen, str) else None


def plan(env: Mapping[str, str], services: Collection[str] = tuple(_TARGETS)) -> tuple[Source, str] | str:
    """(the credentials source, the region) the fast transport would use, or why it cannot.

    The source is the one botocore's default chain would pick (``_credentials.plan``), so both
    transports sign as the same identity; where botocore would do what we do not (SSO,
    credential_process, role chains), the sentence says so and boto3 serves instead.
    """
    for flag in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        if env.get(flag, "").lower() == "true":
            return f"{flag} is set (the fast transport speaks to standard endpoints only)"
    proxy = next((name for name in _PROXY_VARIABLES if env.get(name)), None)
    if proxy is not None:  # named, never its value: a proxy URL can hold a password
        return f"{proxy} is set (the fast transport does not use proxies)"
    source = _credentials.plan(env)
    if isinstance(source, str):
        return source
    if _credentials.profile_endpoints(env):
        return (
            "the AWS profile sets endpoint_url or services (boto3 applies them; the fast transport does not)"
        )
    region = _credentials.region(env)
    if not region:
        return "no region is set (AWS_REGION, AWS_DEFAULT_REGION or the profile's region): set AWS_REGION"
    for service in services:
        url = t.endpoint_url(env, service)
        if url is None and not re.fullmatch(_STANDARD_REGION, region):
            return f"region {region!r} is outside the standard partition"
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            return f"the {service} endpoint is not an http(s) URL"
    return source, region


class FastTransport:
    """``Transport`` over ``http.client``. Thread-safe; connections pooled per endpoint."""

    name = "fast"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        services: Collection[str] = tuple(_TARGETS),
        deadline: t.Deadline | None = None,
        rand: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        adaptive: bool = False,
        planned: tuple[Source, str] | None = None,
    ) -> None:
        """``planned`` is ``plan(env, services)`` when the caller has it already.
        ``rand``, ``sleep`` and ``clock`` are injected for tests: ``rand`` draws the jitter
        (by default from the operating system), ``sleep`` replaces the pauses, and ``clock``
        gives this transport rate limiters of its own instead of the process's.
        ``adaptive=True`` paces retries with the process's rate limiter per service. It is off
        by default: measured, it made cold starts slower and less likely to succeed (see
        docs/reliability.md), since one start sends too few requests to overrun a quota alone.
        """
        chosen = plan(env, services) if planned is None else planned
        if isinstance(chosen, str):
            raise ValueError(f"the fast transport cannot be used: {chosen}")
        source, self._region = chosen
        # The process's cache: a second bootstrap() or a refresh reuses unexpired credentials.
        self._credentials = _credentials.cache_for(source)
        self._ca_bundle = env.get("AWS_CA_BUNDLE") or None
        self._deadline = deadline
        self._policy = _retry.RetryPolicy(deadline, rand=rand, sleep=sleep)
        configured = {service: t.endpoint_url(env, service) for service in _TARGETS}
        urls = {
            service: url or f"https://{service}.{self._region}.amazonaws.com"
            for service, url in configured.items()
        }
        # One TLS context per process (_http), shared by every pool; endpoints we name
        # ourselves may use the on-demand trust directory, configured ones never do.
        self._pools = {
            service: _Pool(url, self._ca_bundle, standard=configured[service] is None)
            for service, url in urls.items()
        }
        self._limiters: dict[str, _retry.RateLimiter] = {}
        if adaptive:
            for service, url in urls.items():
                self._limiters[service] = (
                    _retry.RateLimiter(service, clock=clock)
                    if clock is not None
                    else _retry.limiter(service, url)
                )

    @property
    def retries(self) -> int:
        return self._policy.retries

    @property
    def waited(self) -> float:
        return self._policy.waited

    def decrypt(
        self, ciphertext: bytes, *, context: Mapping[str, str] | None, key_id: str | None
    ) -> tuple[bytes, str]:
        payload: dict[str, Any] = {"CiphertextBlob": base64.b64encode(ciphertext).decode("ascii")}
        if context:
            payload["EncryptionContext"] = dict(context)
        if key_id:
            payload["KeyId"] = key_id
        answer = self._call("kms", "Decrypt", payload)
        try:
            return base64.b64decode(answer["Plaintext"], validate=True), str(answer.get("KeyId", ""))
        except (KeyError, TypeError, ValueError):
            raise t.TransportError(t.SERVICE_ERROR, "malformed Decrypt response") from None

    def get_parameters(self, names: Sequence[str]) -> t.Parameters:
        answer = self._call("ssm", "GetParameters", {"Names": list(names), "WithDecryption": True})
        try:
            found = [
                t.Parameter(p["Name"], p.get("ARN", ""), p["Value"]) for p in answer.get("Parameters", ())
            ]
            return t.Parameters(found, list(answer.get("InvalidParameters", ())))
        except (KeyError, TypeError, AttributeError):
            raise t.TransportError(t.SERVICE_ERROR, "malformed GetParameters response") from None

    def get_secret_values(self, secret_ids: Sequence[str]) -> t.Secrets:
        answer = self._call("secretsmanager", "BatchGetSecretValue", {"SecretIdList": list(secret_ids)})
        try:
            found = [_secret(s) for s in answer.get("SecretValues", ())]
            errors = [
                t.SecretError(e["SecretId"], str(e.get("ErrorCode", "")), str(e.get("Message", "")))
                for e in answer.get("Errors", ())
            ]
            return t.Secrets(found, errors)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise t.TransportError(t.SERVICE_ERROR, "malformed BatchGetSecretValue response") from None

    def get_secret_value(
        self, secret_id: str, *, version_stage: str | None, version_id: str | None
    ) -> t.Secret:
        payload = {"SecretId": secret_id}
        if version_stage:
            payload["VersionStage"] = version_stage
        if version_id:
            payload["VersionId"] = version_id
        answer = self._call("secretsmanager", "GetSecretValue", payload)
        try:
            return _secret(answer)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise t.TransportError(t.SERVICE_ERROR, "malformed GetSecretValue response") from None

    def _call(self, service: str, operation: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        pool = self._pools[service]
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"{_TARGETS[service]}.{operation}",
            "User-Agent": _USER_AGENT,
        }
        credentials = self._credentials.get(self._deadline)
        # AWS credentials are ASCII; anything else cannot be signed (nor shown: it is a key).
        if not (credentials.access_key + credentials.secret_key + (credentials.token or "")).isascii():
            raise t.TransportError(t.INVALID_CREDENTIALS, "the AWS credentials hold non-ASCII characters")
        connect_timeout, read_timeout = t.CONNECT_TIMEOUT, t.READ_TIMEOUT

        def attempt() -> dict[str, Any]:
            connect, read = connect_timeout, read_timeout
            if self._deadline is not None:
                left = self._deadline.remaining()
                connect, read = min(connect, left), min(read, left)
            signed = _sigv4.sign(
                method="POST",
                host=pool.host_header,
                path=pool.path,
                headers=headers,
                body=body,
                access_key=credentials.access_key,
                secret_key=credentials.secret_key,
                session_token=credentials.token,
                region=self._region,
                service=service,
            )
            try:
                status, answer_headers, data = pool.send(signed, body, connect, read)
            except _AnswerTooLarge:
                # Not retried: the same request would bring the same answer.
                raise t.TransportError(
                    t.ANSWER_TOO_LARGE,
                    f"the {operation} answer is larger than {t.MAX_ANSWER >> 20} MiB, more than any real one",
                ) from None
            except TimeoutError:
                raise t.TransportError(
                    t.TIMEOUT, f"{operation} timed out at {pool.endpoint}", backoff=_retry.TRANSIENT_BASE
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                # The kind and the endpoint's host:port, never the exception's text (or the URL).
                detail = f"{type(exc).__name__} at {pool.endpoint}"
                raise t.TransportError(t.CONNECTION_ERROR, detail, backoff=_retry.TRANSIENT_BASE) from None
            if status == 200:
                answer = _json(data)
                if answer is None:  # not raised in an except block: the error holds the body
                    raise t.TransportError(t.SERVICE_ERROR, f"{operation} answered non-JSON")
                return answer
            code, message = _error(status, answer_headers, data)
            raise t.TransportError(t.reason_for_code(code), message, backoff=_retry.base_for(code, status))

        return self._policy.run(operation, attempt, self._limiters.get(service))


def _json(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or ``None``."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _secret(answer: Mapping[str, Any]) -> t.Secret:
    binary = answer.get("SecretBinary")
    return t.Secret(
        str(answer["Name"]),
        str(answer.get("ARN", "")),
        string=answer.get("SecretString"),
        binary=base64.b64decode(binary, validate=True) if binary is not None else None,
    )


def _error(status: int, headers: Mapping[str, str], data: bytes) -> tuple[str, str]:
    """The AWS error code and message of a failed answer."""
    code = headers.get("x-amzn-errortype", "").split(":", 1)[0]
    message = ""
    try:
        parsed = json.loads(data)
    except ValueError:
        # Not JSON (moto's IAM denials are XML): report the status, as botocore
        # does, so both transports give the same reason.
        return code or str(status), ""
    if isinstance(parsed, dict):
        code = code or str(parsed.get("__type", "")).rsplit("#", 1)[-1]
        message = str(parsed.get("message") or parsed.get("Message") or "")
    return code or str(status), message


class _AnswerTooLarge(Exception):
    """An answer longer than ``MAX_ANSWER``: its connection is closed, the rest left unread."""


# Answers of unknown length (chunked, or ended by closing the connection) are read
# this much at a time, so an endless one costs at most MAX_ANSWER and one chunk.
_CHUNK = 64 << 10


def _read_bounded(response: http.client.HTTPResponse) -> bytes:
    """The whole body of ``response``, or ``_AnswerTooLarge`` past ``MAX_ANSWER`` bytes."""
    if response.length is not None:  # a Content-Length: checked before anything is read
        if response.length > t.MAX_ANSWER:
            raise _AnswerTooLarge
        return response.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > t.MAX_ANSWER:
            raise _AnswerTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _Pool:
    """Keep-alive connections to one endpoint; each request takes one exclusively."""

    def __init__(self, url: str, ca_bundle: str | None, *, standard: bool = False) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        default_port = 443 if self._https else 80
        self._port = parts.port or default_port
        host = f"[{self._host}]" if ":" in self._host else self._host  # IPv6 literal
        self.host_header = host if self._port == default_port else f"{host}:{self._port}"
        # host:port for error messages: urlsplit left out any user:password@, path and query.
        self.endpoint = f"{host}:{self._port}"
        self.path = parts.path or "/"
        self._ca_bundle = ca_bundle
        self._standard = standard
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(
        self, headers: Mapping[str, str], body: bytes, connect_timeout: float, read_timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(read_timeout)
                return self._exchange(conn, headers, body)
            except TimeoutError:
                raise
            except (OSError, http.client.BadStatusLine):
                # The server closed an idle connection (a reset, a broken pipe,
                # or a TLS EOF): not a failure of this request; use a fresh one.
                pass
        return self._exchange(self._connect(connect_timeout, read_timeout), headers, body)

    def _exchange(
        self, conn: http.client.HTTPConnection, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            conn.request("POST", self.path, body, dict(headers))
            response = conn.getresponse()
            data = _read_bounded(response)
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _connect(self, connect_timeout: float, read_timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = _http.connect(
                lambda context: http.client.HTTPSConnection(
                    self._host, self._port, timeout=connect_timeout, context=context
                ),
                self._ca_bundle,
                standard=self._standard,
                where=self.endpoint,
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
            conn.connect()
        # http.client has one timeout; connect with one, then read with the other.
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        return conn
