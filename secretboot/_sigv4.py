"""AWS Signature Version 4 with the standard library only.

Self-contained on purpose (no package imports), so it costs only ``hashlib``
and ``hmac`` to import and the benchmark's standard-library floor can load it
by path. Checked against botocore's ``SigV4Auth`` and AWS's published vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"

# Headers botocore leaves out of the signature (hop-by-hop and user-agent).
_UNSIGNED = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

_keys: dict[tuple[str, str, str, str], bytes] = {}


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day, region and service (cached: it changes daily)."""
    cache_key = (secret_key, date, region, service)
    key = _keys.get(cache_key)
    if key is None:
        key = _hmac(("AWS4" + secret_key).encode(), date)
        for part in (region, service, "aws4_request"):
            key = _hmac(key, part)
        if len(_keys) > 16:
            _keys.clear()
        _keys[cache_key] = key
    return key


def sign(
    *,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    region: str,
    service: str,
    query: Mapping[str, str] | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """Return ``headers`` plus ``Host``, ``X-Amz-Date``, the token and ``Authorization``.

    ``host`` is the Host header as sent (with ``:port`` unless it is the
    scheme's default). ``now`` (seconds since the epoch) defaults to the clock.
    """
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    signed = dict(headers)
    signed["Host"] = host
    signed["X-Amz-Date"] = amz_date
    if session_token:
        signed["X-Amz-Security-Token"] = session_token
    canonical = {}
    for name, value in signed.items():
        lower = name.lower()
        if lower not in _UNSIGNED:
            canonical[lower] = " ".join(value.split())
    names = sorted(canonical)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        (
            method,
            quote(path or "/", safe="/~"),
            _canonical_query(query or {}),
            "".join(f"{name}:{canonical[name]}\n" for name in names),
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = signing_key(secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
    return signed


def _canonical_query(query: Mapping[str, str]) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
