"""A local Lambda Runtime API, and a helper to run the real ``awslambdaric`` against it.

    emulator = RuntimeEmulator(function_name="my-fn")
    emulator.start()
    runtime = start_runtime(emulator, "app.handler", env={...})
    runtime.wait_ready(timeout=30)          # spawn to first /invocation/next: the cold start
    status, body = emulator.invoke({"hello": "world"}, timeout=10)
    runtime.stop()
    emulator.stop()

It speaks the parts of the Runtime API the runtime interface client uses: the invocation
long poll and its ``Lambda-Runtime-*`` headers, the response and error posts, the init error,
and SnapStart's restore lifecycle (``restore/next``, ``restore/error``). With
``hold_restore=True`` a ``restore/next`` is answered only after ``release_restore()``: the
time between is "the snapshot", in which a test can change the world the restored process
wakes up in.

Container credentials, as Lambda serves them to SnapStart functions (which get no key
variables): with ``container_credentials=`` (a mapping with ``AccessKeyId``,
``SecretAccessKey`` and ``Token``, or a callable returning one, asked on every request) the
emulator answers ``GET /2021-04-23/credentials`` on its own address with
``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}``, but only to a request whose
``Authorization`` header is ``credentials_token`` (401 without it, 403 with another value).
``runtime_environment(..., container_credentials=True)`` sets
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` to match::

    emulator = RuntimeEmulator(hold_restore=True, container_credentials=keys)
    runtime = start_runtime(emulator, "app.handler", snap_start=True, container_credentials=True)
    emulator.wait_for_restore_next(30)
    emulator.container_credentials = rotated        # or refuse_credentials(403)
    emulator.release_restore()
    emulator.credential_requests()                   # {"init": 1, "restore": 1}

Requests are counted by phase: ``"init"`` until a ``restore/next`` is answered (or, without
SnapStart, until the first ``/invocation/next``), ``"restore"`` from then until the first
``/invocation/next``, ``"invoke"`` after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.keepalive import KeepAliveHandler, KeepAliveServer

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_EXAMPLE = ROOT / "lambda_example"
API = "/2018-06-01/runtime"
ACCOUNT = "123456789012"
# Lambda's container credentials endpoint, on the Runtime API's own host and port (the Lambda
# runtime interface emulator builds AWS_CONTAINER_CREDENTIALS_FULL_URI the same way).
CREDENTIALS_PATH = "/2021-04-23/credentials"
CREDENTIALS_LIFETIME = 6 * 3600.0  # seconds: the Expiration served unless the keys carry one
ISO_Z = "%Y-%m-%dT%H:%M:%SZ"

Keys = Mapping[str, str]

# How often waiting handler threads look up to see whether the emulator is stopping.
_POLL = 0.05
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass(frozen=True)
class Posted:
    """An error the runtime posted: ``Lambda-Runtime-Function-Error-Type`` and the JSON body."""

    error_type: str
    body: dict[str, Any]
    at: float  # time.monotonic()


@dataclass(frozen=True)
class CredentialRequest:
    """One ``GET`` of the credentials path: the phase it came in and the status answered."""

    phase: str  # "init", "restore" or "invoke"
    status: int
    at: float  # time.monotonic()


@dataclass
class _Invocation:
    request_id: str
    body: bytes
    done: threading.Event = field(default_factory=threading.Event)
    status: str = ""
    result: bytes = b""


class RuntimeEmulator:
    """A Runtime API on 127.0.0.1 for one function and one execution environment.

    Start one runtime process per emulator: ``wait_for_next`` reports the first
    ``/invocation/next`` the emulator ever saw.
    """

    def __init__(
        self,
        *,
        function_name: str = "secretboot-example",
        region: str = "us-east-1",
        deadline: float = 30.0,
        hold_restore: bool = False,
        container_credentials: Keys | Callable[[], Keys] | None = None,
        credentials_token: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.region = region
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{function_name}"
        self.deadline = deadline
        self.hold_restore = hold_restore
        # What GET CREDENTIALS_PATH serves (None: 404, as for a function without SnapStart);
        # settable while running, e.g. during a held restore to rotate the keys.
        self.container_credentials = container_credentials
        self.credentials_token = credentials_token or "Bearer " + secrets.token_urlsafe(24)
        self._credentials_refusal: int | None = None
        self._credential_log: list[CredentialRequest] = []
        self._restored = False  # a restore/next has been answered
        self.init_errors: list[Posted] = []
        self.restore_errors: list[Posted] = []
        self.next_calls = 0  # /invocation/next requests received
        self.restore_calls = 0  # /restore/next requests received
        self._lock = threading.Lock()
        self._pending: queue.Queue[_Invocation] = queue.Queue()
        self._invocations: dict[str, _Invocation] = {}
        self._first_next: float | None = None
        self._next_seen = threading.Event()
        self._restore_seen = threading.Event()
        self._restore_released = threading.Event()
        self._stopping = threading.Event()
        self._server: _Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port``, as ``AWS_LAMBDA_RUNTIME_API`` wants it (no scheme)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return self._server.host_port

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        server = _Server(_Handler)
        server.emulator = self
        self._server = server
        server.start("lambda-runtime", poll_interval=_POLL)

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # long polls and held restores give up within _POLL
        self._server.stop()
        self._server = None

    def __enter__(self) -> RuntimeEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- driving it --------------------------------------------------------------------------

    def invoke(self, event: Mapping[str, Any], timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """Queue ``event``, wait for the function's answer: ``("ok" | "error", JSON body)``."""
        invocation = _Invocation(str(uuid.uuid4()), json.dumps(event).encode())
        with self._lock:
            self._invocations[invocation.request_id] = invocation
        self._pending.put(invocation)
        if not invocation.done.wait(timeout):
            raise TimeoutError(f"no answer to invocation {invocation.request_id} within {timeout:g} s")
        return invocation.status, json.loads(invocation.result or b"null")

    def wait_for_next(self, timeout: float) -> float:
        """``time.monotonic()`` of the first ``/invocation/next``: when INIT ended."""
        if not self._next_seen.wait(timeout):
            raise TimeoutError(f"the runtime did not ask for an invocation within {timeout:g} s")
        assert self._first_next is not None
        return self._first_next

    def wait_for_restore_next(self, timeout: float) -> None:
        """Wait until the runtime has asked for ``restore/next`` (its before-snapshot hooks ran)."""
        if not self._restore_seen.wait(timeout):
            raise TimeoutError(f"the runtime did not ask for restore/next within {timeout:g} s")

    def release_restore(self) -> None:
        """Answer a held ``restore/next``: the snapshot is restored."""
        self._restore_released.set()

    # -- container credentials -----------------------------------------------------------------

    @property
    def credentials_uri(self) -> str:
        """``AWS_CONTAINER_CREDENTIALS_FULL_URI``: the credentials path on the emulator's address."""
        return f"http://{self.address}{CREDENTIALS_PATH}"

    def refuse_credentials(self, status: int | None = 403) -> None:
        """Answer every credentials request from now on with ``status`` (``None``: serve again)."""
        if status is not None and not 400 <= status <= 599:
            raise ValueError("a 4xx or 5xx status, or None")
        with self._lock:
            self._credentials_refusal = status

    @property
    def credential_log(self) -> list[CredentialRequest]:
        with self._lock:
            return list(self._credential_log)

    def credential_requests(self, *, status: int | None = 200) -> dict[str, int]:
        """Credentials requests per phase answered ``status`` (``None``: whatever the answer)."""
        counts: dict[str, int] = {}
        for seen in self.credential_log:
            if status is None or seen.status == status:
                counts[seen.phase] = counts.get(seen.phase, 0) + 1
        return counts

    def _phase(self) -> str:
        if self._first_next is not None:
            return "invoke"
        return "restore" if self._restored else "init"

    def _credentials(self, authorization: str | None) -> tuple[int, dict[str, str]]:
        """The status and JSON document for one credentials request."""
        with self._lock:
            phase = self._phase()
            refusal = self._credentials_refusal
        source = self.container_credentials
        document: dict[str, str] = {}
        if source is None:
            status = 404
        elif authorization is None:
            status = 401
        elif not secrets.compare_digest(authorization.encode(), self.credentials_token.encode()):
            status = 403
        elif refusal is not None:
            status = refusal
        else:
            keys = source() if callable(source) else source
            expiration = time.strftime(ISO_Z, time.gmtime(time.time() + CREDENTIALS_LIFETIME))
            document = {
                "AccessKeyId": keys["AccessKeyId"],
                "SecretAccessKey": keys["SecretAccessKey"],
                "Token": keys["Token"],
                "Expiration": keys.get("Expiration", expiration),
            }
            status = 200
        with self._lock:
            self._credential_log.append(CredentialRequest(phase, status, time.monotonic()))
        return status, document

    # -- the server's side -------------------------------------------------------------------

    def _next_invocation(self) -> _Invocation | None:
        with self._lock:
            self.next_calls += 1
            if self._first_next is None:
                self._first_next = time.monotonic()
                self._next_seen.set()
        while not self._stopping.is_set():
            try:
                return self._pending.get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def _restore_next(self) -> bool:
        with self._lock:
            self.restore_calls += 1
        self._restore_seen.set()
        if not self.hold_restore:
            self._mark_restored()
            return True
        while not self._stopping.is_set():
            if self._restore_released.wait(_POLL):
                self._mark_restored()
                return True
        return False

    def _mark_restored(self) -> None:
        with self._lock:
            self._restored = True

    def _finish(self, request_id: str, status: str, body: bytes) -> bool:
        with self._lock:
            invocation = self._invocations.pop(request_id, None)
        if invocation is None:
            return False
        invocation.status = status
        invocation.result = body
        invocation.done.set()
        return True


class _Server(KeepAliveServer):
    emulator: RuntimeEmulator


class _Handler(KeepAliveHandler):
    server: _Server

    def do_GET(self) -> None:
        emulator = self.server.emulator
        if self.path == f"{API}/invocation/next":
            invocation = emulator._next_invocation()
            if invocation is None:  # stopping: drop the long poll
                self.close_connection = True
                return
            deadline_ms = int((time.time() + emulator.deadline) * 1000)
            root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
            trace = f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=0"
            self._send(
                200,
                invocation.body,
                {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": emulator.function_arn,
                    "Lambda-Runtime-Trace-Id": trace,
                },
            )
        elif self.path == f"{API}/restore/next":
            if not emulator._restore_next():
                self.close_connection = True
                return
            self._send(200, b"")
        elif self.path == CREDENTIALS_PATH:
            status, document = emulator._credentials(self.headers.get("Authorization"))
            body = json.dumps(document).encode() if status == 200 else b'{"message": "refused"}'
            self._send(status, body, {"Content-Type": "application/json"})
        else:
            self._send(404, b'{"errorType": "NotFound"}')

    def do_POST(self) -> None:
        emulator = self.server.emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parts = self.path.removeprefix(API + "/").split("/")
        if parts[:1] == ["invocation"] and len(parts) == 3 and parts[2] in ("response", "error"):
            status = "ok" if parts[2] == "response" else "error"
            found = emulator._finish(parts[1], status, body)
            self._send(202 if found else 400, b'{"status": "OK"}' if found else b"{}")
        elif parts in (["init", "error"], ["restore", "error"]):
            posted = Posted(
                self.headers.get("Lambda-Runtime-Function-Error-Type", ""),
                json.loads(body or b"{}"),
                time.monotonic(),
            )
            with emulator._lock:
                (emulator.init_errors if parts[0] == "init" else emulator.restore_errors).append(posted)
            self._send(202, b'{"status": "OK"}')
        else:
            self._send(404, b'{"errorType": "NotFound"}')

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response_only(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)
        self.wfile.flush()


# -- the runtime process ---------------------------------------------------------------------


class RuntimeProcess:
    """A running ``awslambdaric`` (or a wrapper that execs it), its output collected."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, emulator: RuntimeEmulator):
        self.argv = list(argv)
        self.emulator = emulator
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name=f"runtime-{self.pid}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace"))
        stream.close()

    @property
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr, interleaved)."""
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, text: str, timeout: float) -> None:
        """Wait until ``text`` has been written (the reader thread may lag the process a little)."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not written within {timeout:g} s:\n{self.output}")
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for the end of INIT; return the cold start in seconds (spawn to first next).

        Raises ``RuntimeError`` with the output if the process exits first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.emulator.wait_for_next(_POLL) - self.spawned_at
            except TimeoutError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the runtime exited with {self.process.returncode} during INIT:\n{self.output}"
                    ) from None
        raise TimeoutError(f"no /invocation/next within {timeout:g} s:\n{self.output}")

    def wait_exit(self, timeout: float) -> int:
        """The exit status, once the process has ended by itself (``TimeoutExpired`` if not)."""
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds; return the exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(STOP_GRACE)
        self._reader.join(timeout=5)
        return self.process.returncode


def runtime_environment(
    emulator: RuntimeEmulator,
    handler: str,
    *,
    memory_mb: int = 512,
    snap_start: bool = False,
    task_root: Path = LAMBDA_EXAMPLE,
    container_credentials: bool = False,
) -> dict[str, str]:
    """The variables Lambda itself sets for a function (no endpoint).

    No credentials, unless ``container_credentials``: then the emulator's credentials URI
    and token, as Lambda gives SnapStart functions (no ``AWS_ACCESS_KEY_ID`` or secret).
    """
    interpreter_dir = str(Path(sys.executable).parent)
    env = {
        # The interpreter running us comes first, so "python3" (say, in an exec wrapper) is it.
        "PATH": os.pathsep.join([interpreter_dir, os.environ.get("PATH", os.defpath)]),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": str(task_root),
        "LAMBDA_TASK_ROOT": str(task_root),
        "_HANDLER": handler,
        "AWS_LAMBDA_RUNTIME_API": emulator.address,
        "AWS_LAMBDA_FUNCTION_NAME": emulator.function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_FORMAT": "Text",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{emulator.function_name}",
        "AWS_REGION": emulator.region,
        "AWS_DEFAULT_REGION": emulator.region,
    }
    if snap_start:
        # awslambdaric then runs the before-snapshot hooks, asks for restore/next, and runs the
        # after-restore hooks before its first /invocation/next.
        env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "snap-start"
    else:
        env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "on-demand"
    if container_credentials:
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = emulator.credentials_uri
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = emulator.credentials_token
    return env


def start_runtime(
    emulator: RuntimeEmulator,
    handler: str,
    *,
    env: Mapping[str, str] | None = None,
    snap_start: bool = False,
    wrapper: Sequence[str] = (),
    task_root: Path = LAMBDA_EXAMPLE,
    container_credentials: bool = False,
) -> RuntimeProcess:
    """Spawn ``python -m awslambdaric HANDLER`` in ``task_root`` against ``emulator``.

    ``env`` adds to (and overrides) Lambda's own variables: credentials, endpoint, the
    function's configuration. ``container_credentials`` points the function at the emulator's
    credentials endpoint (see ``runtime_environment``). ``wrapper`` is put in front of the
    command, as Lambda does with ``AWS_LAMBDA_EXEC_WRAPPER``.
    """
    full_env = runtime_environment(
        emulator,
        handler,
        snap_start=snap_start,
        task_root=task_root,
        container_credentials=container_credentials,
    )
    full_env.update(env or {})
    argv = [*wrapper, sys.executable, "-m", "awslambdaric", handler]
    return RuntimeProcess(argv, full_env, task_root, emulator)
