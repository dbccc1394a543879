"""The seam between resolvers and AWS: decrypt one blob, get parameters and secrets.

Resolvers speak only this interface, so a faster transport can replace boto3
without touching them. Transports raise ``TransportError`` with a normalised
reason code and a message already scrubbed of anything that looks like data.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import Protocol

# Both transports: explicit timeouts, so a dead endpoint cannot eat the whole
# Lambda init phase. Retries are bounded by the deadline (``_retry``); without
# one (the CLI's one-off calls) by a count, as botocore's standard mode does.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
TOTAL_MAX_ATTEMPTS = 3

# The largest answer either transport reads. The largest legitimate one is a
# BatchGetSecretValue of 20 secrets of 64 KiB each: JSON escapes a control
# character as 6 bytes ("\u0001"), so at worst 20 x 6 x 64 KiB = 7.5 MiB plus
# names and metadata. Everything else is far smaller: GetParameters answers 10
# values of at most 8 KB (advanced tier), under 0.5 MiB escaped; Decrypt at most
# 4 KB of plaintext in base64. 16 MiB is twice the worst case, and still bounds
# what a broken or hostile endpoint can make a process hold.
MAX_ANSWER = 16 << 20

# Reasons, normalised across transports. Values are what users see in errors.
ACCESS_DENIED = "AccessDenied"
INVALID_CREDENTIALS = "InvalidCredentials"
NO_CREDENTIALS = "NoCredentials"
CREDENTIAL_RETRIEVAL = "CredentialRetrievalError"  # a credentials endpoint failed (botocore's name)
NO_REGION = "NoRegion"
INVALID_CIPHERTEXT = "InvalidCiphertext"
INCORRECT_KEY = "IncorrectKey"
KEY_UNAVAILABLE = "KeyUnavailable"
NOT_FOUND = "NotFound"
PARAMETER_NOT_FOUND = "ParameterNotFound"
THROTTLED = "Throttled"
TIMEOUT = "Timeout"
CONNECTION_ERROR = "ConnectionError"
SERVICE_ERROR = "ServiceError"
INVALID_REQUEST = "InvalidRequest"
ANSWER_TOO_LARGE = "AnswerTooLarge"

# AWS error codes (and moto's XML 403) mapped to the reasons above.
_CODES: Mapping[str, str] = {
    "AccessDeniedException": ACCESS_DENIED,
    "AccessDenied": ACCESS_DENIED,
    "403": ACCESS_DENIED,
    "UnrecognizedClientException": INVALID_CREDENTIALS,
    "InvalidClientTokenId": INVALID_CREDENTIALS,
    "InvalidSignatureException": INVALID_CREDENTIALS,
    "SignatureDoesNotMatch": INVALID_CREDENTIALS,
    "ExpiredTokenException": INVALID_CREDENTIALS,
    "ExpiredToken": INVALID_CREDENTIALS,
    "InvalidCiphertextException": INVALID_CIPHERTEXT,
    "IncorrectKeyException": INCORRECT_KEY,
    "DisabledException": KEY_UNAVAILABLE,
    "KMSInvalidStateException": KEY_UNAVAILABLE,
    "KeyUnavailableException": KEY_UNAVAILABLE,
    "InvalidKeyUsageException": KEY_UNAVAILABLE,
    "NotFoundException": NOT_FOUND,
    "ResourceNotFoundException": NOT_FOUND,
    "DecryptionFailure": KEY_UNAVAILABLE,
    "InvalidRequestException": INVALID_REQUEST,
    "InvalidParameterException": INVALID_REQUEST,
    "ParameterNotFound": PARAMETER_NOT_FOUND,
    "ParameterVersionNotFound": PARAMETER_NOT_FOUND,
    "ThrottlingException": THROTTLED,
    "Throttling": THROTTLED,
    "TooManyRequestsException": THROTTLED,
    "RequestLimitExceeded": THROTTLED,
    "ValidationException": INVALID_REQUEST,
    "InvalidParameterValue": INVALID_REQUEST,
    "InternalFailure": SERVICE_ERROR,
    "InternalServerError": SERVICE_ERROR,
    "ServiceUnavailable": SERVICE_ERROR,
    "DependencyTimeoutException": SERVICE_ERROR,
    "KMSInternalException": SERVICE_ERROR,
}

# Runs of base64-ish characters long enough to be data. Words that are ARNs
# (key and parameter names users need to debug) survive; anything else
# blob-like does not.
# Patterns are strings compiled on first use (re caches them): errors are rare.
_DATA_LIKE = r"[A-Za-z0-9+/=_\-]{40,}"
_ARN = r"arn:aws[a-z\-]*:[a-z0-9\-]+:[a-z0-9\-]*:[0-9]{0,12}:[A-Za-z0-9_.:/\-]+"
_MAX_DETAIL = 300


# The SDKs name a service's endpoint variable after its service id, spaces as "_".
_ENDPOINT_VARIABLES = {
    "kms": "AWS_ENDPOINT_URL_KMS",
    "ssm": "AWS_ENDPOINT_URL_SSM",
    "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "lambda": "AWS_ENDPOINT_URL_LAMBDA",  # the CLI's migrate --apply
}


def endpoint_url(aws: Mapping[str, str], service: str) -> str | None:
    """The endpoint from ``AWS_ENDPOINT_URL_<SERVICE_ID>`` or ``AWS_ENDPOINT_URL``, if set."""
    if aws.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return aws.get(_ENDPOINT_VARIABLES[service]) or aws.get("AWS_ENDPOINT_URL") or None


def reason_for_code(code: str) -> str:
    if code in _CODES:
        return _CODES[code]
    if code.isdecimal() and code.startswith("5"):
        return SERVICE_ERROR
    return code or SERVICE_ERROR


def scrub(message: str) -> str:
    """Make an AWS error message safe to show: no data-like runs, bounded size."""
    words = []
    for word in message.split():
        arn = re.search(_ARN, word)
        if arn is None:
            words.append(re.sub(_DATA_LIKE, "[redacted]", word))
        else:
            head, tail = word[: arn.start()], word[arn.end() :]
            words.append(
                re.sub(_DATA_LIKE, "[redacted]", head) + arn[0] + re.sub(_DATA_LIKE, "[redacted]", tail)
            )
    return " ".join(words)[:_MAX_DETAIL]


class Deadline:
    """The time budget of one resolution (``SECRETBOOT_TIMEOUT``), shared by every request.

    It also says when the outcome is decided: once one variable has failed for good,
    the start fails closed whatever the others do, so ``decide()`` ends every pause
    early and no request is retried after it.
    """

    __slots__ = ("_clock", "_decided", "at", "seconds")

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.at = clock() + seconds
        self._decided = threading.Event()

    def left(self) -> float:
        """Seconds until the deadline: negative once it has passed."""
        return self.at - self._clock()

    def remaining(self) -> float:
        """Seconds until the deadline, never below zero."""
        return max(0.0, self.left())

    def decide(self) -> None:
        """The outcome is decided (a failure no retry can undo): stop retrying."""
        self._decided.set()

    @property
    def decided(self) -> bool:
        return self._decided.is_set()

    def wait(self, seconds: float) -> bool:
        """Pause ``seconds``, or less if the outcome is decided meanwhile; returns ``decided``."""
        return self._decided.wait(seconds) if seconds > 0 else self._decided.is_set()


class TransportError(Exception):
    """A request failed. ``reason`` is one of this module's reason codes.

    ``backoff`` is the base of the pause before trying again (``_retry``), or ``None``
    if the same request would meet the same answer.
    """

    def __init__(self, reason: str, detail: str = "", *, backoff: float | None = None) -> None:
        self.reason = reason
        self.backoff = backoff
        self.detail = scrub(detail)
        super().__init__(f"{reason}: {self.detail}" if self.detail else reason)


class Parameter:
    """One entry of a ``GetParameters`` answer. Its ``repr`` leaves the value out."""

    __slots__ = ("arn", "name", "value")

    def __init__(self, name: str, arn: str, value: str) -> None:
        self.name = name
        self.arn = arn
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Parameter):
            return NotImplemented
        return (self.name, self.arn, self.value) == (other.name, other.arn, other.value)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r})"


class Secret:
    """One secret value from Secrets Manager: text or binary. Its ``repr`` leaves both out."""

    __slots__ = ("arn", "binary", "name", "string")

    def __init__(self, name: str, arn: str, *, string: str | None, binary: bytes | None) -> None:
        self.name = name
        self.arn = arn
        self.string = string
        self.binary = binary

    def __repr__(self) -> str:
        return f"Secret({self.name!r})"


class SecretError:
    """A per-secret failure inside a ``BatchGetSecretValue`` answer."""

    __slots__ = ("detail", "reason", "secret_id")

    def __init__(self, secret_id: str, code: str, message: str) -> None:
        self.secret_id = secret_id
        self.reason = reason_for_code(code)
        self.detail = scrub(message)


class Secrets:
    """A ``BatchGetSecretValue`` answer: secrets found, and per-secret errors."""

    __slots__ = ("errors", "found")

    def __init__(self, found: Sequence[Secret], errors: Sequence[SecretError]) -> None:
        self.found = found
        self.errors = errors


class Parameters:
    """A ``GetParameters`` answer: what was found, and the names it called invalid."""

    __slots__ = ("found", "invalid")

    def __init__(self, found: Sequence[Parameter], invalid: Sequence[str]) -> None:
        self.found = found
        self.invalid = invalid


if TYPE_CHECKING:

    class Transport(Protocol):
        name: str  # for the log line: "fast" or "boto3"

        @property
        def retries(self) -> int:
            """Requests retried so far (throttling, 5xx, connection errors), for the log line."""
            ...

        @property
        def waited(self) -> float:
            """The longest time one request spent paused (backoff, rate limit), in seconds."""
            ...

        def decrypt(
            self, ciphertext: bytes, *, context: Mapping[str, str] | None, key_id: str | None
        ) -> tuple[bytes, str]:
            """Decrypt one KMS blob: (plaintext, the key's ARN); raise ``TransportError``."""
            ...

        def get_parameters(self, names: Sequence[str]) -> Parameters:
            """One ``GetParameters`` call (at most 10 names, with decryption)."""
            ...

        def get_secret_values(self, secret_ids: Sequence[str]) -> Secrets:
            """One ``BatchGetSecretValue`` call (at most 20 ids; current versions)."""
            ...

        def get_secret_value(
            self, secret_id: str, *, version_stage: str | None, version_id: str | None
        ) -> Secret:
            """One ``GetSecretValue`` call, at a version stage or id if given."""
            ...
