"""Run the example function locally, end to end, under the real Lambda runtime client.

    .venv/bin/python lambda_example/run_local.py

1. Starts moto's server on 127.0.0.1 as the local AWS, and a counting proxy in front of it.
2. Creates a KMS key, writes a temporary .env holding a plaintext SECRET_KEY (a Fernet key)
   and wraps it in place with the real `secretboot migrate ... --lambda-function`.
3. Stores API_TOKEN as an SSM SecureString with `secretboot encrypt --ssm` (plaintext on stdin).
4. Starts app.handler under awslambdaric, driven by the local Runtime API emulator
   (tests/lambda_runtime.py), with the migrated environment: references only.
5. Invokes it a few times and checks every answer, then prints what was resolved (names and
   kinds), the init duration (process spawn to first /invocation/next), the invoke times, the
   AWS calls made, and how the log filter masked a deliberately careless log call.

It prints no secret value (every line it prints is checked, and so is everything the runtime
wrote), stops everything it started, and exits non-zero on any failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets as random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ holds the emulator and the proxy the tests use too

from tests.awsproxy import AwsProxy  # noqa: E402
from tests.lambda_runtime import RuntimeEmulator, RuntimeProcess, start_runtime  # noqa: E402
from tests.localaws import moto_server  # noqa: E402

FUNCTION = "secretboot-example"
REGION = "us-east-1"
KEY_ALIAS = "alias/secretboot-example"
SSM_PARAM = "/secretboot-example/api-token"
WARM_INVOKES = 4
TIMEOUT = 30.0  # bound on every wait: start-up, each invoke, each command


class Failed(Exception):
    """A step did not do what it should; the message says which (never with a value)."""


class Output:
    """Prints rows; a line holding a secret value is withheld, and the run fails."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.withheld = 0

    def row(self, label: str, text: str) -> None:
        self.line(f"{label:<24}{text}")

    def line(self, text: str, stream: TextIO | None = None) -> None:
        if any(value in text for value in self.secrets):
            self.withheld += 1
            text = "(line withheld: it held a secret value)"
        print(text, file=stream or sys.stdout, flush=True)


def main() -> int:
    out = Output()
    out.line("secretboot's example function under the real Lambda runtime client, against a local AWS")
    try:
        with ExitStack() as stack:
            _run(stack, out)
    except Exception as exc:  # every failure ends here, as one line and exit status 1
        detail = str(exc) if isinstance(exc, Failed) else f"{type(exc).__name__}: {exc}"
        out.line(f"FAILED: {detail}", stream=sys.stderr)
        return 1
    return 1 if out.withheld else 0


def _run(stack: ExitStack, out: Output) -> None:
    moto = stack.enter_context(moto_server())
    aws_env = {
        "AWS_ENDPOINT_URL": moto,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    out.row("local AWS (moto)", moto)

    import boto3
    from cryptography.fernet import Fernet
    from dotenv import dotenv_values

    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=moto,
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
    )
    key_arn = kms.create_key(Description="secretboot example")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=KEY_ALIAS, TargetKeyId=key_arn)
    out.row("KMS key", f"{KEY_ALIAS} -> {key_arn}")

    secret_key = Fernet.generate_key().decode()
    api_token = random.token_urlsafe(24)
    out.secrets += [secret_key, api_token]

    # The app's .env as it is before adopting secretboot: SECRET_KEY in plaintext.
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="secretboot-example-")))
    env_file = folder / ".env"
    env_file.touch(mode=0o600)
    env_file.write_text(f"# the app's settings\nSECRET_KEY={secret_key}\nLOG_LEVEL=INFO\n")
    migrated = _secretboot(
        [
            "migrate",
            "SECRET_KEY",
            "--key-id",
            KEY_ALIAS,
            "--lambda-function",
            FUNCTION,
            "--env-file",
            str(env_file),
        ],
        aws_env,
    )
    out.row("secretboot migrate", migrated.splitlines()[0])
    reference = _secretboot(["encrypt", "--key-id", KEY_ALIAS, "--ssm", SSM_PARAM], aws_env, stdin=api_token)
    out.row("secretboot encrypt", f"API_TOKEN stored as an SSM SecureString: {reference.strip()}")
    wrapped = str(dotenv_values(env_file).get("SECRET_KEY") or "")
    if not wrapped.startswith("kms:"):
        raise Failed("secretboot migrate did not leave SECRET_KEY=kms:... in the .env file")

    proxy = AwsProxy(moto)  # counts the function's AWS calls
    proxy.start()
    stack.callback(proxy.stop)
    emulator = RuntimeEmulator(function_name=FUNCTION, region=REGION)
    emulator.start()
    stack.callback(emulator.stop)
    runtime = start_runtime(
        emulator,
        "app.handler",
        env={
            **aws_env,
            "AWS_ENDPOINT_URL": proxy.url,
            "AWS_SESSION_TOKEN": "local",
            "SECRET_KEY": wrapped,  # kms:<base64>
            "API_TOKEN": reference.strip(),  # ssm:/secretboot-example/api-token
            "POWERTOOLS_SERVICE_NAME": FUNCTION,
        },
    )
    stack.callback(runtime.stop)
    out.row(
        "runtime", f"python -m awslambdaric app.handler, pid {runtime.pid}, Runtime API {emulator.address}"
    )
    try:
        init = runtime.wait_ready(TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        raise Failed(f"the function did not start: {exc}") from None
    init_calls = proxy.counts()
    # The runtime's output comes through a pipe read by another thread, which may lag the
    # first /invocation/next a little: wait for the two lines read below.
    try:
        runtime.wait_for_output('"message":"secrets resolved"', TIMEOUT)
        runtime.wait_for_output(" API call", TIMEOUT)
    except TimeoutError:
        pass  # reported by name just below

    resolved = _json_line(runtime, "secrets resolved")["resolved"]
    out.row("resolved", ", ".join(f"{name} ({kind})" for name, kind in sorted(resolved.items())))
    out.row("secretboot logged", _secretboot_line(runtime))
    out.row("init duration", f"{init * 1000:.0f} ms (process spawn to first /invocation/next)")
    out.row("AWS calls during init", _calls(init_calls))

    timings = []
    for number in range(1 + WARM_INVOKES):
        event = {"order": number, "amount": "12.50"}
        started = time.perf_counter()
        status, answer = emulator.invoke(event, TIMEOUT)
        timings.append((time.perf_counter() - started) * 1000)
        if status != "ok":
            raise Failed(f"invoke {number + 1}: {answer.get('errorType')}: {answer.get('errorMessage')}")
        _check_answer(answer, event, secret_key, api_token)
    out.row("first invoke", f"{timings[0]:.1f} ms (each answer checked: token decrypts, request tag matches)")
    out.row("warm invokes", ", ".join(f"{ms:.1f}" for ms in timings[1:]) + " ms")
    if proxy.counts() != init_calls:
        raise Failed(f"invocations called AWS: {_calls(proxy.counts())} in all")
    out.row("AWS calls while warm", "none")

    marker = len(runtime.output)
    status, answer = emulator.invoke({"demo": "careless-logging"}, TIMEOUT)
    if status != "ok":
        raise Failed("the careless-logging invoke failed")
    runtime.stop()  # by PID; waits for the last of its output
    output = runtime.output
    for name, value in (("SECRET_KEY", secret_key), ("API_TOKEN", api_token)):
        if value in output:
            raise Failed(f"the runtime's output holds the plaintext of {name}")
    masked = [line for line in output[marker:].splitlines() if "[masked:SECRET_KEY]" in line]
    if len(masked) < 5:
        raise Failed(f"expected at least 5 masked log lines, found {len(masked)}")
    out.row("log filter", f"{len(masked)} careless log lines held SECRET_KEY; each shows [masked:SECRET_KEY]")
    out.line("    " + _shorten(next(line for line in masked if "message holding" in line)))
    out.line("    " + _shorten(next(line for line in masked if "plain argument" in line)))
    out.row("secret values printed", "none (checked in everything the runtime wrote)")


def _secretboot(args: list[str], aws_env: dict[str, str], stdin: str | None = None) -> str:
    """Run the real command line (``python -m secretboot``); return its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env.update(aws_env)
    run = subprocess.run(  # noqa: S603 - our own interpreter running our own module
        [sys.executable, "-m", "secretboot", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if run.returncode != 0:
        raise Failed(f"secretboot {args[0]} exited {run.returncode}: {run.stderr.strip()}")
    return run.stdout


def _json_line(runtime: RuntimeProcess, message: str) -> dict[str, Any]:
    for line in runtime.output.splitlines():
        if line.startswith("{") and f'"message":"{message}"' in line:
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise Failed(f"the function did not log {message!r}")


def _secretboot_line(runtime: RuntimeProcess) -> str:
    for line in runtime.output.splitlines():
        text = line.rsplit("\t", 1)[-1]
        if text.startswith("resolved ") and " API call" in text:
            return text
    raise Failed("secretboot's INFO line is missing from the runtime's output")


def _check_answer(answer: dict[str, Any], event: dict[str, Any], secret_key: str, api_token: str) -> None:
    from cryptography.fernet import Fernet, InvalidToken

    try:
        signed = json.loads(Fernet(secret_key).decrypt(answer["token"].encode()))
    except (KeyError, InvalidToken, ValueError):
        raise Failed("the answer's token does not decrypt with SECRET_KEY") from None
    if signed != event:
        raise Failed("the answer's token does not hold the event")
    expected = hmac.new(api_token.encode(), str(answer.get("request_id")).encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), str(answer.get("request_tag"))):
        raise Failed("the request tag was not made with API_TOKEN")


def _calls(counts: dict[str, int]) -> str:
    return ", ".join(f"{target.split('.')[-1]} x{n}" for target, n in sorted(counts.items())) or "none"


def _shorten(line: str, width: int = 150) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
