"""Plain boto3, one call per secret, one after another: what most code does."""

from __future__ import annotations

import base64
import os

import boto3
from _common import references, report

kms_refs, ssm_refs = references(os.environ)
values: dict[str, str] = {}
if kms_refs:
    kms = boto3.client("kms")
    for name, blob in kms_refs.items():
        values[name] = kms.decrypt(CiphertextBlob=base64.b64decode(blob))["Plaintext"].decode()
if ssm_refs:
    ssm = boto3.client("ssm")
    for name, parameter in ssm_refs.items():
        values[name] = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
report(values)
