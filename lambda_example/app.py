"""The example function: secrets resolved once per cold start, used on every invocation.

Its environment (template.yaml) holds references, never plaintext:

    SECRET_KEY=kms:AQICAH...              a Fernet key, wrapped by `secretboot migrate`
    API_TOKEN=ssm:/secretboot-example/api-token
    POWERTOOLS_SERVICE_NAME=secretboot-example

The handler signs the event with SECRET_KEY and tags the request with an HMAC keyed by
API_TOKEN. It calls nothing external.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from cryptography.fernet import Fernet

import secretboot

logger = Logger()  # JSON lines; the service name comes from POWERTOOLS_SERVICE_NAME
# Mask every resolved secret in what this logger writes: message, args, extra fields, exceptions.
logger.addFilter(secretboot.SecretFilter())
# ... and in what every other logger writes through the Lambda runtime's root handler.
for _handler in logging.getLogger().handlers:
    _handler.addFilter(secretboot.SecretFilter())
# secretboot's one INFO line: counts per kind, API calls, milliseconds (never a value).
logging.getLogger("secretboot").setLevel(logging.INFO)

# Module level: once per cold start (and again after a SnapStart restore). A failure raises
# BootstrapError naming every variable that could not be resolved, which fails INIT.
secrets = secretboot.bootstrap()
logger.info("secrets resolved", extra={"resolved": {n: r.kind for n, r in secrets.references.items()}})


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Read the keyring on every call instead of keeping Fernet(...) at module level: after a
    # SnapStart restore the keyring holds freshly resolved values; a module-level copy would
    # have been frozen into the snapshot.
    token = Fernet(secrets["SECRET_KEY"]).encrypt(json.dumps(event, sort_keys=True).encode())
    tag = hmac.new(secrets["API_TOKEN"].encode(), context.aws_request_id.encode(), hashlib.sha256)
    if event.get("demo") == "careless-logging":
        _log_carelessly(secrets["SECRET_KEY"])
    logger.info("signed event", extra={"token_bytes": len(token)})
    return {"request_id": context.aws_request_id, "token": token.decode(), "request_tag": tag.hexdigest()}


def _log_carelessly(key: str) -> None:
    """Log the key everywhere a value can sit in a log record; SecretFilter masks each one.

    Never do this; the tests and run_local.py do it on purpose (event {"demo": "careless-logging"}).
    """
    plain = logging.getLogger("app.plain")  # standard logging, through the runtime's root handler
    logger.info(f"message holding {key}")
    logger.info("argument holding %s", key)
    logger.info("extra field", extra={"key_in_extra": key, "nested": {"list": [key]}})
    plain.warning("plain argument holding %s", key)
    try:
        raise ValueError(f"exception holding {key}")
    except ValueError:
        logger.exception("exception from Powertools")
        plain.exception("exception from plain logging")
