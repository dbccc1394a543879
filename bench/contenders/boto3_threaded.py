"""boto3 done well: KMS decrypts in parallel, SSM in parallel GetParameters batches of 10."""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor

import boto3
from _common import references, report
from botocore.config import Config

BATCH = 10  # GetParameters' limit

kms_refs, ssm_refs = references(os.environ)
names = list(dict.fromkeys(ssm_refs.values()))
batches = [names[i : i + BATCH] for i in range(0, len(names), BATCH)]
workers = max(1, len(kms_refs) + len(batches))  # one thread per request, as stdlib_min
# Clients are thread-safe but building them is not: build in this thread, share them.
config = Config(max_pool_connections=workers)
kms = boto3.client("kms", config=config) if kms_refs else None
ssm = boto3.client("ssm", config=config) if ssm_refs else None


def decrypt(blob: str) -> str:
    assert kms is not None
    return kms.decrypt(CiphertextBlob=base64.b64decode(blob))["Plaintext"].decode()


def fetch(batch: list[str]) -> dict[str, str]:
    assert ssm is not None
    answer = ssm.get_parameters(Names=batch, WithDecryption=True)
    if answer["InvalidParameters"]:
        raise LookupError(f"missing parameters: {answer['InvalidParameters']}")
    return {p["Name"]: p["Value"] for p in answer["Parameters"]}


with ThreadPoolExecutor(max_workers=workers) as pool:
    decrypted = {name: pool.submit(decrypt, blob) for name, blob in kms_refs.items()}
    fetched = [pool.submit(fetch, batch) for batch in batches]
    values = {name: future.result() for name, future in decrypted.items()}
    parameters: dict[str, str] = {}
    for future in fetched:
        parameters.update(future.result())
values.update({name: parameters[parameter] for name, parameter in ssm_refs.items()})
report(values)
