"""A plain boto3 loop in a fleet of cold starts (bench/fleet.py): one call per secret, in turn.

boto3's default configuration (here: the legacy retry mode, 5 attempts in all, backoff
``rand * 2 ** (attempt - 1)`` seconds on throttling), no deadline. The clients are built before
the common start, as in fleet_secretboot.py. Like most code, it stops at the first exception;
that start has failed. Retries are the sum of every answer's ``ResponseMetadata.RetryAttempts``,
the failed one's included.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

import boto3
from _common import references
from _fleet import digest, emit, wait_for_start
from botocore.exceptions import BotoCoreError, ClientError

kms_refs, ssm_refs = references(os.environ)
kms = boto3.client("kms")
ssm = boto3.client("ssm")

woke = wait_for_start()
values: dict[str, str] = {}
retries = calls = 0
failures: dict[str, int] = {}


def retried(answer: Mapping[str, Any]) -> int:
    return int(answer.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


try:
    for name, blob in kms_refs.items():
        calls += 1
        decrypted = kms.decrypt(CiphertextBlob=base64.b64decode(blob))
        retries += retried(decrypted)
        values[name] = decrypted["Plaintext"].decode()
    for name, parameter in ssm_refs.items():
        calls += 1
        fetched = ssm.get_parameter(Name=parameter, WithDecryption=True)
        retries += retried(fetched)
        values[name] = fetched["Parameter"]["Value"]
except ClientError as exc:
    retries += retried(dict(exc.response))
    failures[str(exc.response.get("Error", {}).get("Code", "ClientError"))] = 1
except BotoCoreError as exc:
    failures[type(exc).__name__] = 1
emit(
    ok=not failures,
    woke=woke,
    retries=retries,
    calls=calls,
    transport="boto3",
    failures=failures,
    digest=digest(values) if not failures else "",
)
