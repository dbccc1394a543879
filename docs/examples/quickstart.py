"""The README's quick start, end to end, against a local AWS endpoint it starts itself.

Run: python docs/examples/quickstart.py
It starts moto's server on 127.0.0.1, creates a KMS key and SSM SecureStrings,
sets the README's environment, boots it with secretboot and prints what was
resolved (names and kinds, never values). It stops the server it started.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/localaws.py


def main() -> int:
    from tests.localaws import moto_server

    with moto_server() as endpoint:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
            }
        )
        os.environ.update(_provision(endpoint))
        return _boot()


def _provision(endpoint: str) -> dict[str, str]:
    """Create the README's secrets; return the environment that refers to them."""
    import boto3

    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint)
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=endpoint)
    key_id = kms.create_key(Description="secretboot quick start")["KeyMetadata"]["KeyId"]

    def wrap(plaintext: bytes) -> str:
        return base64.b64encode(kms.encrypt(KeyId=key_id, Plaintext=plaintext)["CiphertextBlob"]).decode()

    ssm.put_parameter(Name="/myapp/prod/api-token", Value=os.urandom(16).hex(), Type="SecureString")
    for _ in range(3):
        ssm.put_parameter(
            Name="/myapp/prod/signing-key", Value=os.urandom(16).hex(), Type="SecureString", Overwrite=True
        )
    return {
        "DB_PASSWORD": "kms:" + wrap(os.urandom(12).hex().encode()),
        "API_TOKEN": "{{resolve:ssm-secure:/myapp/prod/api-token}}",
        "SIGNING_KEY": "ssm:/myapp/prod/signing-key:3",
        # moto's ciphertext lacks the AWS header the console's values carry,
        # so the bare form is declared here rather than detected.
        "LEGACY_KEY": wrap(os.urandom(12).hex().encode()),
        "SECRETBOOT_KMS_VARS": "LEGACY_KEY",
        "API_URL": "https://example.com",
    }


def _boot() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    import secretboot

    secrets = secretboot.bootstrap()  # the README's snippet
    db_password = secrets["DB_PASSWORD"]
    api_url = secretboot.getenv("API_URL")

    for name, ref in sorted(secrets.references.items()):
        print(f"resolved {name:<12} {ref.kind}  {ref.target}")
    print(f"DB_PASSWORD holds {len(db_password)} characters; API_URL = {api_url}")
    print(secrets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
