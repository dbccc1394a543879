"""The credential sources that need the network: STS web identity, containers, EC2 metadata.

Split from ``_credentials`` (the chain, the files and the refresh) to keep each module
small. Each source follows botocore 1.44's provider of the same name for hosts, headers,
timeouts, attempts and answers, and says what went wrong by provider and host:port only:
tokens, keys and answer bodies never reach a message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlencode, urlsplit

from secretboot import _http, _retry
from secretboot import _transport as t
from secretboot._credentials import (
    CONTAINER,
    INSTANCE_METADATA,
    WEB_IDENTITY,
    Credentials,
    _Unsupported,
)

# A credentials answer is a few kilobytes; anything past this is not one.
_MAX_ANSWER = 64 << 10
_ISO = r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.\d+)?\s*(Z|z|[+-]\d\d:?\d\d)?"


def epoch(text: str) -> float | None:
    """An ISO 8601 time (as AWS writes them) in epoch seconds; no offset means UTC.

    Computed here rather than with datetime, whose import costs 3 ms of every restore.
    """
    found = re.fullmatch(_ISO, text.strip())
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(x) for x in found.groups()[:6])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in_month = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not (1 <= month <= 12 and 1 <= day <= days_in_month[month - 1] and hour < 24 and minute < 60):
        return None
    if second > 59:
        return None
    # Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    offset = found[7] or "Z"
    delta = 0 if offset in "Zz" else int(offset[1:3]) * 3600 + int(offset[-2:]) * 60
    delta = -delta if offset[0] == "-" else delta
    return float(days * 86400 + hour * 3600 + minute * 60 + second - delta)


class _NetError(t.TransportError):
    """No answer (connection refused, reset, timed out): ``read_timeout`` if it was sent."""

    read_timeout = False


class _Endpoint:
    """A URL cut once, so the host checked is the host connected to."""

    __slots__ = ("host", "https", "label", "path", "port")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)  # ValueError on a bad port, as .port is read here
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # host:port for messages: no user:password@, path or query (they may hold a token)
        self.label = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _budget(limit: float, deadline: t.Deadline | None, what: str) -> float:
    if deadline is None:
        return limit
    left = deadline.remaining()
    if left <= 0:
        raise t.TransportError(t.TIMEOUT, f"SECRETBOOT_TIMEOUT ran out before {what} could answer")
    return min(limit, left)


def request(
    endpoint: _Endpoint,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    timeout: float,
    deadline: t.Deadline | None,
    what: str,
    ca_bundle: str | None = None,
    standard: bool = False,
) -> tuple[int, bytes]:
    """One request on its own connection (credentials are fetched rarely): (status, body).

    ``timeout`` bounds the connection and then the answer, each cut to the deadline's rest.
    HTTPS uses the process's TLS context (``_http``); ``standard`` marks an AWS endpoint
    secretboot named itself, which may verify through the on-demand trust directory.
    """
    import http.client

    where = f"{what} at {endpoint.label}"
    conn: http.client.HTTPConnection | None = None
    try:
        budget = _budget(timeout, deadline, what)
        try:
            if endpoint.https:
                conn = _http.connect(
                    lambda context: http.client.HTTPSConnection(
                        endpoint.host, endpoint.port, timeout=budget, context=context
                    ),
                    ca_bundle,
                    standard=standard,
                    where=where,
                )
            else:
                conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=budget)
                conn.connect()
        except TimeoutError:
            raise _NetError(
                t.TIMEOUT, f"{where}: no connection in time", backoff=_retry.TRANSIENT_BASE
            ) from None
        except OSError as exc:
            raise _NetError(
                t.CONNECTION_ERROR, f"{where}: {type(exc).__name__}", backoff=_retry.TRANSIENT_BASE
            ) from None
        assert conn is not None
        if conn.sock is not None:
            conn.sock.settimeout(_budget(timeout, deadline, what))
        try:
            conn.request(method, path, body, dict(headers))
            response = conn.getresponse()
            data = response.read(_MAX_ANSWER + 1)
        except TimeoutError:
            late = _NetError(t.TIMEOUT, f"{where}: no answer in time", backoff=_retry.TRANSIENT_BASE)
            late.read_timeout = True
            raise late from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _NetError(
                t.CONNECTION_ERROR, f"{where}: {type(exc).__name__}", backoff=_retry.TRANSIENT_BASE
            ) from None
        if len(data) > _MAX_ANSWER:
            raise t.TransportError(t.ANSWER_TOO_LARGE, f"{where}: the answer is larger than any credentials")
        return response.status, data
    finally:
        if conn is not None:
            conn.close()


def _read_token(path: str, variable: str, what: str) -> str:
    """The token file's text, read at every fetch (Kubernetes rotates it in place)."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        problem = type(exc).__name__
    raise t.TransportError(t.NO_CREDENTIALS, f"{what}: cannot read the file named by {variable} ({problem})")


def _credentials(answer: object, names: tuple[str, str, str, str], source: str, where: str) -> Credentials:
    """Keys from a decoded answer, or an error naming the source (never the answer)."""
    values = [answer.get(name) if isinstance(answer, dict) else None for name in names]
    expires = epoch(values[3]) if isinstance(values[3], str) else None
    if not all(isinstance(v, str) and v for v in values[:3]) or expires is None:
        raise t.TransportError(t.NO_CREDENTIALS, f"{where} answered without complete credentials")
    return Credentials(str(values[0]), str(values[1]), str(values[2]), expires, source)


# ----------------------------------------------------------------------------- web identity

# botocore's args.py: with sts_regional_endpoints=legacy these regions use the global endpoint.
_LEGACY_GLOBAL_STS_REGIONS = frozenset(
    {
        *("ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "aws-global"),
        *("ca-central-1", "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3"),
        *("sa-east-1", "us-east-1", "us-east-2", "us-west-1", "us-west-2"),
    }
)
_STANDARD_REGION = r"(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-[0-9]+"
_STS_GLOBAL = "https://sts.amazonaws.com"


def sts_endpoint(
    env: Mapping[str, str],
    region: str | None,
    setting: Callable[[str, str], str | None],
    profile: Mapping[str, str],
) -> str:
    """STS's URL as botocore 1.44 picks it: configured URL, else regional (its default) or legacy."""
    if not _true(setting("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "ignore_configured_endpoint_urls")):
        if "endpoint_url" in profile or "services" in profile:  # their precedence is boto3's business
            raise _Unsupported("the profile sets endpoint_url or services: boto3 resolves STS's endpoint")
        url = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL")
        if url:
            return url
    for flag, key in (
        ("AWS_USE_FIPS_ENDPOINT", "use_fips_endpoint"),
        ("AWS_USE_DUALSTACK_ENDPOINT", "use_dualstack_endpoint"),
    ):
        if (setting(flag, key) or "").lower() == "true":
            raise _Unsupported(f"{flag} is set: boto3 picks those STS endpoints")
    mode = setting("AWS_STS_REGIONAL_ENDPOINTS", "sts_regional_endpoints") or "regional"
    if mode not in ("regional", "legacy"):
        raise _Unsupported("AWS_STS_REGIONAL_ENDPOINTS is neither regional nor legacy")
    if (
        region is None
        or region == "aws-global"
        or (mode == "legacy" and region in _LEGACY_GLOBAL_STS_REGIONS)
    ):
        return _STS_GLOBAL
    if re.fullmatch(_STANDARD_REGION, region):
        return f"https://sts.{region}.amazonaws.com"
    if re.fullmatch(r"cn-[a-z]+-[0-9]+", region):
        return f"https://sts.{region}.amazonaws.com.cn"
    raise _Unsupported("the region is outside the standard and China partitions: boto3 picks STS's endpoint")


# STS codes beyond _transport's table.
_STS_REASONS = {
    "InvalidIdentityToken": t.INVALID_CREDENTIALS,
    "IDPRejectedClaim": t.ACCESS_DENIED,
    "IDPCommunicationError": t.SERVICE_ERROR,
}


class WebIdentity:
    """STS AssumeRoleWithWebIdentity (EKS IRSA): an unsigned Query API call with the token."""

    name = WEB_IDENTITY

    def __init__(
        self,
        *,
        token_file: str,
        role_arn: str,
        session_name: str | None,
        endpoint: str,
        ca_bundle: str | None,
    ) -> None:
        self._token_file = token_file
        self._role_arn = role_arn
        # botocore's default name, made once per provider so refreshes reuse it.
        self._session_name = session_name or f"botocore-session-{int(time.time())}"
        self._endpoint = _Endpoint(endpoint)
        self._ca_bundle = ca_bundle
        # STS's own address (as sts_endpoint names it), not a configured one: see _http.
        self._standard = re.fullmatch(r"https://sts(\.[a-z0-9-]+)?\.amazonaws\.com/?", endpoint) is not None
        self.key: tuple[str, ...] = (
            WEB_IDENTITY,
            token_file,
            role_arn,
            session_name or "",
            endpoint,
            ca_bundle or "",
        )

    def __repr__(self) -> str:
        return f"<credentials source {self.name} at {self._endpoint.label}>"

    def fetch(self, deadline: t.Deadline | None) -> Credentials:
        what = "STS AssumeRoleWithWebIdentity"
        token = _read_token(self._token_file, "AWS_WEB_IDENTITY_TOKEN_FILE", what)
        fields = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": self._role_arn}
        fields |= {"RoleSessionName": self._session_name, "WebIdentityToken": token}
        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        headers["User-Agent"] = "secretboot/0.1.0 (fast transport)"

        def attempt() -> Credentials:
            status, data = request(
                self._endpoint,
                "POST",
                self._endpoint.path,
                headers,
                body,
                timeout=t.READ_TIMEOUT,
                deadline=deadline,
                what=what,
                ca_bundle=self._ca_bundle,
                standard=self._standard,
            )
            if status != 200:
                found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", data)
                code = found[1].decode() if found else str(status)
                reason = _STS_REASONS.get(code) or t.reason_for_code(code)
                backoff = (
                    _retry.TRANSIENT_BASE
                    if code == "IDPCommunicationError"
                    else _retry.base_for(code, status)
                )
                detail = f"{what} at {self._endpoint.label} answered {code} (HTTP {status})"
                raise t.TransportError(reason, detail, backoff=backoff)
            return _credentials(_sts_answer(data), _STS_NAMES, WEB_IDENTITY, what)

        return _retry.RetryPolicy(deadline).run(what, attempt)


_STS_NAMES = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")


_LEAF = re.compile(r"<(?:[\w.-]+:)?(\w+)(?:\s[^<>]*)?>([^<]*)</(?:[\w.-]+:)?\1\s*>")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _sts_answer(data: bytes) -> dict[str, str] | None:
    """The text elements of an STS XML answer by local name, whatever their namespace.

    STS's answer is a few flat elements; reading them with a pattern spares the cold start
    xml.etree's 8 ms import. A field holding anything but text and the five XML entities
    (markup, CDATA, character references) is not found, so the answer counts as malformed.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields = {}
    for name, value in _LEAF.findall(text):
        if "&#" in value:
            continue
        fields[name] = re.sub(r"&(amp|lt|gt|quot|apos);", lambda m: _ENTITIES[m[1]], value)
    return fields or None


# ----------------------------------------------------------------------------- containers

# botocore's ContainerMetadataFetcher: host for the relative URI, hosts allowed for the full
# one besides loopback addresses (and any https URL), timeout, attempts and pause.
CONTAINER_HOST = "169.254.170.2"
CONTAINER_HOSTS = frozenset({CONTAINER_HOST, "169.254.170.23", "fd00:ec2::23", "localhost"})
CONTAINER_TIMEOUT = 2.0
CONTAINER_ATTEMPTS = 3
CONTAINER_PAUSE = 1.0
_RELATIVE = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
_FULL = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # noqa: S105 (a variable's name)
_TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # noqa: S105


def container_refusal(url: str) -> str | None:
    """Why botocore would refuse to send container credentials' token to ``url``, or ``None``."""
    try:
        endpoint = _Endpoint(url)
    except ValueError:
        return "is not an http(s) URL with a host"
    if endpoint.https or endpoint.host in CONTAINER_HOSTS:
        return None
    import ipaddress

    try:
        if ipaddress.ip_address(endpoint.host).is_loopback:
            return None
    except ValueError:
        pass
    return f"names host {endpoint.host!r}, which is neither loopback nor one of ECS's and EKS's addresses"


def container(env: Mapping[str, str]) -> Container:
    """The container source for ``env`` (the relative URI wins over the full one, as in botocore)."""
    variable = _RELATIVE if _RELATIVE in env else _FULL
    url = f"http://{CONTAINER_HOST}{env[_RELATIVE]}" if variable == _RELATIVE else env[_FULL]
    refusal = container_refusal(url)
    if refusal is not None:
        raise _Unsupported(f"{variable} {refusal}: its token is never sent there")
    token_file = env.get(_TOKEN_FILE)
    token = env[_TOKEN] if token_file is None and _TOKEN in env else None
    return Container(url, variable=variable, token_file=token_file, token=token)


class Container:
    """ECS, Fargate, EKS Pod Identity, Lambda SnapStart: GET the URL, maybe with a token."""

    name = CONTAINER

    def __init__(self, url: str, *, variable: str, token_file: str | None, token: str | None) -> None:
        self._url = url
        self._variable = variable
        self._token_file = token_file
        self._token = token
        import hashlib

        digest = hashlib.sha256((token or "").encode()).hexdigest() if token is not None else ""
        self.key: tuple[str, ...] = (CONTAINER, url, token_file or "", digest)

    def __repr__(self) -> str:
        try:
            return f"<credentials source {self.name} at {_Endpoint(self._url).label}>"
        except ValueError:
            return f"<credentials source {self.name}>"

    def fetch(self, deadline: t.Deadline | None) -> Credentials:
        what = f"container credentials ({self._variable})"
        refusal = container_refusal(self._url)  # checked again: nothing is sent to a refused host
        if refusal is not None:
            raise t.TransportError(t.INVALID_REQUEST, f"{what} {refusal}: its token is never sent there")
        endpoint = _Endpoint(self._url)
        headers = {"Accept": "application/json", "User-Agent": "secretboot/0.1.0 (fast transport)"}
        token = (
            _read_token(self._token_file, _TOKEN_FILE, what) if self._token_file is not None else self._token
        )
        if token is not None:
            if "\r" in token or "\n" in token:  # botocore: "not a legal header value"
                origin = _TOKEN_FILE if self._token_file is not None else _TOKEN
                raise t.TransportError(t.INVALID_REQUEST, f"{what}: {origin} holds a line break; not sent")
            headers["Authorization"] = token
        where = f"{what} at {endpoint.label}"
        last: t.TransportError | None = None
        made = 0
        while made < CONTAINER_ATTEMPTS:
            if made:  # botocore pauses a second between attempts; never past the deadline
                if deadline is None:
                    time.sleep(CONTAINER_PAUSE)
                elif deadline.remaining() <= CONTAINER_PAUSE or deadline.wait(CONTAINER_PAUSE):
                    break
            made += 1
            try:
                status, data = request(
                    endpoint,
                    "GET",
                    endpoint.path,
                    headers,
                    None,
                    timeout=CONTAINER_TIMEOUT,
                    deadline=deadline,
                    what=what,
                )
            except _NetError as exc:
                last = exc
                continue
            if status == 200:
                import json

                try:
                    answer = json.loads(data)
                except ValueError:
                    last = t.TransportError(t.SERVICE_ERROR, f"{where} answered non-JSON")
                    continue
                return _credentials(answer, _CONTAINER_NAMES, CONTAINER, where)
            # Its own reason: the resolvers' sentences for AccessDenied blame the role's policy.
            last = t.TransportError(t.CREDENTIAL_RETRIEVAL, f"{where} answered HTTP {status}")
        assert last is not None
        raise t.TransportError(last.reason, f"{last.detail} (after {made} attempt(s))")


_CONTAINER_NAMES = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")

# ----------------------------------------------------------------------------- EC2 (IMDS)

# botocore's utils.py: METADATA_BASE_URL(_IPv6), IMDSFetcher._TOKEN_TTL, the defaults of
# metadata_service_timeout and metadata_service_num_attempts.
IMDS_IPV4 = "http://169.254.169.254/"
IMDS_IPV6 = "http://[fd00:ec2::254]/"
IMDS_TOKEN_TTL = "21600"  # noqa: S105 (seconds, a header value)
IMDS_TIMEOUT = 1
IMDS_ATTEMPTS = 1
_ROLE_PATH = "latest/meta-data/iam/security-credentials/"


# botocore's chain reaches instance metadata only when nothing before it had credentials.
_LAST_RESORT = "no AWS credentials in the environment, the shared files or a container, and "


def instance_metadata(env: Mapping[str, str], setting: Callable[[str, str], str | None]) -> InstanceMetadata:
    """The IMDS source, configured from the variables and the profile as botocore's session is."""
    if env.get("AWS_EC2_METADATA_DISABLED", "false").lower() == "true":
        raise _Unsupported("no credentials found, and AWS_EC2_METADATA_DISABLED rules out instance metadata")
    numbers = []
    for variable, key, default in (
        ("AWS_METADATA_SERVICE_TIMEOUT", "metadata_service_timeout", IMDS_TIMEOUT),
        ("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "metadata_service_num_attempts", IMDS_ATTEMPTS),
    ):
        value = setting(variable, key)
        try:
            numbers.append(default if value is None else int(value))
        except ValueError:
            raise _Unsupported(f"{variable} is not a whole number (boto3 refuses it too)") from None
        if numbers[-1] < 1:
            raise _Unsupported(f"{variable} is below 1: boto3 decides what that means")
    mode = setting("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "ec2_metadata_service_endpoint_mode")
    if mode is not None and mode.lower() not in ("ipv4", "ipv6"):
        raise _Unsupported("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE is neither IPv4 nor IPv6")
    ipv6 = (
        mode.lower() == "ipv6" if mode is not None else _true(setting("AWS_IMDS_USE_IPV6", "imds_use_ipv6"))
    )
    base = setting("AWS_EC2_METADATA_SERVICE_ENDPOINT", "ec2_metadata_service_endpoint") or (
        IMDS_IPV6 if ipv6 else IMDS_IPV4
    )
    try:
        _Endpoint(base)
    except ValueError:
        raise _Unsupported("AWS_EC2_METADATA_SERVICE_ENDPOINT is not an http(s) URL") from None
    v1_disabled = _true(setting("AWS_EC2_METADATA_V1_DISABLED", "ec2_metadata_v1_disabled"))
    return InstanceMetadata(base, timeout=numbers[0], attempts=numbers[1], v1_disabled=v1_disabled)


def _true(value: str | None) -> bool:
    return (value or "").lower() == "true"  # botocore's ensure_boolean


class InstanceMetadata:
    """EC2's IMDS: a session token (IMDSv2) first, then the role and its credentials."""

    name = INSTANCE_METADATA

    def __init__(self, base: str, *, timeout: float, attempts: int, v1_disabled: bool) -> None:
        self._endpoint = _Endpoint(base)
        self._prefix = self._endpoint.path if self._endpoint.path.endswith("/") else self._endpoint.path + "/"
        self._timeout = float(timeout)
        self._attempts = attempts
        self._v1_disabled = v1_disabled
        self.key: tuple[str, ...] = (INSTANCE_METADATA, base, str(timeout), str(attempts), str(v1_disabled))

    def __repr__(self) -> str:
        return f"<credentials source {self.name} at {self._endpoint.label}>"

    def _send(
        self, method: str, path: str, headers: dict[str, str], deadline: t.Deadline | None
    ) -> tuple[int, bytes]:
        headers["User-Agent"] = "secretboot/0.1.0 (fast transport)"
        return request(
            self._endpoint,
            method,
            self._prefix + path,
            headers,
            None,
            timeout=self._timeout,
            deadline=deadline,
            what="instance metadata",
        )

    def _session_token(self, deadline: t.Deadline | None) -> str | None:
        """IMDSv2's token, or ``None`` where botocore falls back to IMDSv1."""
        for _ in range(self._attempts):
            try:
                status, data = self._send(
                    "PUT",
                    "latest/api/token",
                    {"X-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL},
                    deadline,
                )
            except _NetError as exc:
                if exc.read_timeout:  # botocore: a read timeout means IMDSv1 only
                    return None
                continue
            if status == 200:
                return data.decode("utf-8", "replace")
            if status in (403, 404, 405):
                return None
            if status == 400:
                raise t.TransportError(
                    t.NO_CREDENTIALS,
                    f"instance metadata at {self._endpoint.label} refused the token request (HTTP 400)",
                )
        return None

    def _get(self, path: str, token: str | None, deadline: t.Deadline | None, what: str) -> bytes:
        """A GET retried (up to the attempts) on errors, non-200 and empty answers, as botocore does."""
        headers = {} if token is None else {"X-aws-ec2-metadata-token": token}
        problem = "no answer"
        for _ in range(self._attempts):
            try:
                status, data = self._send("GET", path, dict(headers), deadline)
            except _NetError as exc:
                problem = exc.reason
                continue
            if status == 200 and data:
                return data
            problem = f"HTTP {status}" if status != 200 else "an empty answer"
        where = f"{_LAST_RESORT}instance metadata at {self._endpoint.label}"
        raise t.TransportError(
            t.NO_CREDENTIALS, f"{where} gave no {what} after {self._attempts} attempt(s) ({problem})"
        )

    def fetch(self, deadline: t.Deadline | None) -> Credentials:
        token = self._session_token(deadline)
        if token is None and self._v1_disabled:
            raise t.TransportError(
                t.NO_CREDENTIALS,
                f"{_LAST_RESORT}instance metadata at {self._endpoint.label} gave no IMDSv2 token and "
                "IMDSv1 is disabled (AWS_EC2_METADATA_V1_DISABLED)",
            )
        role = self._get(_ROLE_PATH, token, deadline, "role name").decode("utf-8", "replace")
        import json

        data = self._get(_ROLE_PATH + role, token, deadline, "credentials")
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        found = _credentials(
            answer, _CONTAINER_NAMES, INSTANCE_METADATA, f"instance metadata at {self._endpoint.label}"
        )
        return _extend_if_stale(found, time.time())


def _extend_if_stale(found: Credentials, now: float) -> Credentials:
    """botocore's static stability: credentials IMDS serves near or past their expiry (during
    an outage of its credential service) are used 17 to 25 more minutes before the next try."""
    import random

    assert found.expires is not None
    offset = 15 * 60 + random.randint(120, 600)  # noqa: S311 (jitter, as botocore's)
    if now < found.expires - offset:
        return found
    return Credentials(found.access_key, found.secret_key, found.token, now + offset, found.source)
