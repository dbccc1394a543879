"""Powertools for AWS Lambda: get_parameters_by_name for SSM, plus a boto3 loop for KMS."""

from __future__ import annotations

import base64
import os

import boto3
from _common import references, report
from aws_lambda_powertools.utilities.parameters import get_parameters_by_name

kms_refs, ssm_refs = references(os.environ)
values: dict[str, str] = {}
if ssm_refs:
    found = get_parameters_by_name(parameters={p: {} for p in ssm_refs.values()}, decrypt=True)
    values.update({name: str(found[parameter]) for name, parameter in ssm_refs.items()})
if kms_refs:
    kms = boto3.client("kms")
    for name, blob in kms_refs.items():
        values[name] = kms.decrypt(CiphertextBlob=base64.b64decode(blob))["Plaintext"].decode()
report(values)
