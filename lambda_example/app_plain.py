"""The same function for code that cannot call secretboot: it reads plaintext from os.environ.

Run it behind the exec wrapper (AWS_LAMBDA_EXEC_WRAPPER=/opt/secretboot-exec-wrapper), which
resolves SECRET_KEY and API_TOKEN before the runtime starts and puts the plaintext in its
environment. This module never imports secretboot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from typing import Any

from cryptography.fernet import Fernet


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = Fernet(os.environ["SECRET_KEY"]).encrypt(json.dumps(event, sort_keys=True).encode())
    tag = hmac.new(os.environ["API_TOKEN"].encode(), context.aws_request_id.encode(), hashlib.sha256)
    return {
        "request_id": context.aws_request_id,
        "token": token.decode(),
        "request_tag": tag.hexdigest(),
        "secretboot_imported": "secretboot" in sys.modules,
    }
