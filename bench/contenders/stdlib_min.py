"""The standard-library floor: SigV4-signed JSON over http.client, one thread per request.

No retries and no checks beyond what is needed: the least any client can do. The signer is
secretboot's self-contained ``_sigv4.py``, loaded by path so the package is not imported.

Over HTTPS it does the TLS work a careful hand-written client does: one ``SSLContext``
(verification on, ``AWS_CA_BUNDLE`` or the system roots), its trust loaded once in the main
thread before any request, shared by every connection.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import ssl
import threading
from urllib.parse import urlsplit

from _common import references, report

BATCH = 10  # GetParameters' limit
SIGV4 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "secretboot", "_sigv4.py")

spec = importlib.util.spec_from_file_location("_sigv4", SIGV4)
assert spec is not None and spec.loader is not None
sigv4 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sigv4)

endpoint = urlsplit(os.environ["AWS_ENDPOINT_URL"])
host = endpoint.netloc
region = os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"]
access_key = os.environ["AWS_ACCESS_KEY_ID"]
secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
session_token = os.environ.get("AWS_SESSION_TOKEN") or None
tls: ssl.SSLContext | None = None
if endpoint.scheme == "https":
    tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)


def connect() -> http.client.HTTPConnection:
    if tls is not None:
        return http.client.HTTPSConnection(endpoint.hostname or "", endpoint.port, timeout=10, context=tls)
    return http.client.HTTPConnection(endpoint.hostname or "", endpoint.port, timeout=10)


def call(service: str, target: str, payload: object) -> dict[str, object]:
    body = json.dumps(payload).encode()
    headers = sigv4.sign(
        method="POST",
        host=host,
        path="/",
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
        body=body,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        region=region,
        service=service,
    )
    conn = connect()
    try:
        conn.request("POST", "/", body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"{target}: HTTP {answer.status}: {data[:200]!r}")
    result: dict[str, object] = json.loads(data)
    return result


values: dict[str, str] = {}
errors: list[BaseException] = []
lock = threading.Lock()


def decrypt(name: str, blob: str) -> None:
    try:
        plaintext = call("kms", "TrentService.Decrypt", {"CiphertextBlob": blob})["Plaintext"]
        with lock:
            values[name] = base64.b64decode(str(plaintext)).decode()
    except BaseException as exc:  # re-raised in the main thread
        errors.append(exc)


def fetch(batch: dict[str, list[str]]) -> None:
    try:
        answer = call("ssm", "AmazonSSM.GetParameters", {"Names": list(batch), "WithDecryption": True})
        if answer.get("InvalidParameters"):
            raise LookupError(f"missing parameters: {answer['InvalidParameters']}")
        parameters = answer["Parameters"]
        assert isinstance(parameters, list)
        with lock:
            for parameter in parameters:
                for name in batch[parameter["Name"]]:
                    values[name] = parameter["Value"]
    except BaseException as exc:  # re-raised in the main thread
        errors.append(exc)


kms_refs, ssm_refs = references(os.environ)
by_parameter: dict[str, list[str]] = {}
for variable, parameter in ssm_refs.items():
    by_parameter.setdefault(parameter, []).append(variable)
names = list(by_parameter)
threads = [threading.Thread(target=decrypt, args=item) for item in kms_refs.items()]
threads += [
    threading.Thread(target=fetch, args=({n: by_parameter[n] for n in names[i : i + BATCH]},))
    for i in range(0, len(names), BATCH)
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if errors:
    raise errors[0]
report(values)
