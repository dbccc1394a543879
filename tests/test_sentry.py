"""Error reporters: a real sentry-sdk, capturing every frame's locals as it does by default, never
receives a secret from any error secretboot raises.

Sentry serializes the locals of every frame in the traceback (and of every chained exception),
reprs strings and walks any ``Mapping`` item by item unless its type has ``__sentry_repr__``.
So the error must leave from frames whose locals hold no plaintext, no reference or ciphertext
and no keyring. Each test drives one error path with canary secrets in the environment (and in
``.env`` files), hands the exception to ``sentry_sdk.capture_exception`` with an in-process
transport, and searches the whole serialized envelope for every canary.

Sentry keeps at most 10 items of a mapping and 5 levels, so a leak past the tenth variable of
``os.environ`` would slip by: each test also walks the locals of secretboot's own frames with no
limits, as a reporter without a ``__sentry_repr__`` hook (Rollbar's traverse) would. The
application's frames (here, the test's) may hold the keyring: Sentry shows it by its repr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.threading import ThreadingIntegration
from sentry_sdk.transport import Transport

import secretboot
from secretboot import BootstrapError, ConfigurationError, SecretbootError, StaleError, _lifecycle
from tests.awsproxy import AwsProxy, delay
from tests.test_canary import Canaries, World, _full_house, _HookThatQuotes, _new_world, until

ROOT = Path(__file__).resolve().parent.parent
DJANGO_PROJECT = ROOT / "tests" / "django_project"
PACKAGE = Path(secretboot.__file__).parent
# What is tested happens after the requests or without any: one transport is enough.
pytestmark = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)


@pytest.fixture(name="world")
def _world_fixture(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    """test_canary's world: moto, a KMS key, canary secrets; the AWS secret key is one too."""
    canaries = Canaries()
    aws_secret = canaries.text("AWS-SECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    return _new_world(canaries, tmp_path, {**aws_env, "AWS_SECRET_ACCESS_KEY": aws_secret})


class _Capture(Transport):
    """Keeps every envelope in memory: nothing leaves the process."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


@pytest.fixture
def sentry() -> Iterator[_Capture]:
    transport = _Capture()
    sentry_sdk.init(
        dsn="https://public@127.0.0.1/1",
        transport=transport,
        default_integrations=False,
        include_local_variables=True,  # the default, spelled out: it is what is under test
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: a disabled client for whatever runs next


def _caught(function: Callable[..., object], *args: Any, **kwargs: Any) -> BaseException:
    """The exception ``function`` raises. This frame is the traceback's first: it holds no secret."""
    try:
        function(*args, **kwargs)
    except Exception as exc:
        return exc
    pytest.fail(f"{function!r} raised nothing")


def _walk(value: object, depth: int, seen: set[int]) -> Iterator[str]:
    """Everything a serializer that walks mappings and collections without limits would show."""
    if id(value) in seen or depth > 12:
        return
    seen.add(id(value))
    if isinstance(value, str | bytes):
        yield repr(value)
    elif isinstance(value, Mapping):
        for key, item in list(value.items()):
            yield repr(key)
            yield from _walk(item, depth + 1, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in list(value):
            yield from _walk(item, depth + 1, seen)
    else:
        yield repr(value)


def _frames_locals(exc: BaseException) -> str:
    """The locals of secretboot's frames in ``exc`` and every exception chained to it, walked."""
    parts: list[str] = []
    pending: list[BaseException | None] = [exc]
    seen_errors: set[int] = set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen_errors:
            continue
        seen_errors.add(id(error))
        pending += [error.__cause__, error.__context__]
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            ours = Path(code.co_filename).is_relative_to(PACKAGE)
            for name, value in tb.tb_frame.f_locals.items() if ours else ():
                text = "\n".join(_walk(value, 0, set()))
                parts.append(f"{code.co_filename}:{code.co_name} {name} = {text}")
            tb = tb.tb_next
    return "\n".join(parts)


def assert_reported_clean(sentry: _Capture, canaries: Canaries, exc: BaseException) -> dict[str, Any]:
    """Report ``exc`` to Sentry; no canary in what it would send, nor in any frame's locals."""
    before = len(sentry.envelopes)
    sentry_sdk.capture_exception(exc)
    sent = sentry.envelopes[before:]
    assert len(sent) == 1, "sentry sent no event"
    event = sent[0].get_event()
    assert event is not None
    # Sentry did capture locals: else this test proves nothing.
    frames = [f for v in event["exception"]["values"] for f in v.get("stacktrace", {}).get("frames", [])]
    assert any(frame.get("vars") for frame in frames), "sentry captured no frame locals"
    canaries.assert_absent(
        {
            "sentry envelope": sent[0].serialize(),
            "sentry event as JSON": json.dumps(event),
            "secretboot's frame locals, walked without limits": _frames_locals(exc),
        }
    )
    return event


def _environ(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _env_file(world: World, lines: list[str]) -> Path:
    path = world.folder / ".env"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# -- bootstrap() -----------------------------------------------------------------------------

BOOT_FAILURES = [
    "unresolvable",
    "malformed",
    "not-allowed",
    "kms-vars-missing",
    "configuration",
    "env-file-set-twice",
    "env-file-built-reference",
    "env-file-unexportable-name",
]


@pytest.mark.parametrize("case", BOOT_FAILURES)
def test_bootstrap_failures(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    # Every kind of reference resolves next to the failure: the resolution's values are plaintext.
    _environ(monkeypatch, _full_house(world))
    file_lines = [f"FILE_PLAIN={world.plain('FILE-PLAIN')}", f"FILE_KMS={world.kms('FILE-KMS')}"]
    options: dict[str, Any] = {"env_file": _env_file(world, file_lines)}
    expected: type[SecretbootError] = BootstrapError
    failing = [case.upper()]
    if case == "unresolvable":
        monkeypatch.setenv("UNRESOLVABLE", "ssm:/canary/missing")
    elif case == "malformed":
        monkeypatch.setenv("MALFORMED", f"kms:{world.plain('MALFORMED')}!")
    elif case == "not-allowed":
        monkeypatch.setenv("SECRETBOOT_SSM_PATHS", "/elsewhere/*")
        failing = ["OK_SSM"]
    elif case == "kms-vars-missing":
        monkeypatch.setenv("SECRETBOOT_KMS_VARS", "OK_KMS,ABSENT")
        failing = ["ABSENT"]
    elif case == "configuration":
        monkeypatch.setenv("SECRETBOOT_EXPORT", "maybe")
        expected = ConfigurationError
    elif case == "env-file-set-twice":
        file_lines.append(f"FILE_PLAIN={world.plain('FILE-PLAIN-2')}")
        options["env_file"] = _env_file(world, file_lines)
        expected = ConfigurationError
    elif case == "env-file-built-reference":
        monkeypatch.setenv("KMS_BODY", world.kms("BUILT")[4:])
        file_lines.append("BUILT=kms:${KMS_BODY}")
        options["env_file"] = _env_file(world, file_lines)
        expected = ConfigurationError
    elif case == "env-file-unexportable-name":
        file_lines.append(f"'NAME={world.plain('IN-A-NAME')}'=1")
        options["env_file"] = _env_file(world, file_lines)
        options["export"] = True
        failing = ["NAME..."]
    before = dict(os.environ)
    exc = _caught(secretboot.bootstrap, **options)
    assert isinstance(exc, expected), repr(exc)
    if isinstance(exc, BootstrapError):
        assert list(exc.variables) == failing
    assert dict(os.environ) == before
    assert_reported_clean(sentry, world.canaries, exc)


def test_getenv_that_bootstraps_and_fails(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environ(monkeypatch, {**_full_house(world), "MISSING": "ssm:/canary/missing"})
    exc = _caught(secretboot.getenv, "OK_KMS")
    assert isinstance(exc, BootstrapError) and exc.variables == ("MISSING",)
    assert_reported_clean(sentry, world.canaries, exc)


def test_getenv_of_a_reference_set_after_bootstrap(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environ(monkeypatch, _full_house(world))
    secretboot.bootstrap()
    monkeypatch.setenv("LATE", world.kms("LATE"))
    exc = _caught(secretboot.getenv, "LATE")
    assert isinstance(exc, BootstrapError) and exc.variables == ("LATE",)
    assert_reported_clean(sentry, world.canaries, exc)


def test_an_environ_argument_stays_out_of_secretboots_frames(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's own frames may hold what it passed; secretboot's frames must not.
    env = {**_full_house(world), "MISSING": "ssm:/canary/missing"}
    exc = _caught(secretboot.bootstrap, environ=env)
    assert isinstance(exc, BootstrapError)
    sentry_sdk.capture_exception(exc)
    event = sentry.envelopes[-1].get_event()
    assert event is not None
    ours = [
        frame
        for value in event["exception"]["values"]
        for frame in value["stacktrace"]["frames"]
        if frame.get("module", "").startswith("secretboot")
    ]
    assert ours, "no frame of secretboot in the event"
    world.canaries.assert_absent({"secretboot's frames": json.dumps(ours)})


def test_a_failed_after_restore_with_an_environ_argument(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SnapStart hook boots again with the caller's environ: neither its frame nor the
    # restore thread's may send that mapping (references, ciphertext) to a reporter.
    from secretboot import _snapstart

    env = _full_house(world)
    secretboot.bootstrap(environ=env)
    _snapstart.before_snapshot()
    world.client("ssm").delete_parameter(Name=env["OK_SSM"].removeprefix("ssm:"))
    exc = _caught(_snapstart.after_restore)
    del env
    assert isinstance(exc, BootstrapError) and exc.variables == ("OK_SSM",)
    event = assert_reported_clean(sentry, world.canaries, exc)
    frames = [f for v in event["exception"]["values"] for f in v["stacktrace"]["frames"]]
    assert any(f.get("function") == "after_restore" for f in frames)


# -- the refresh lifecycle (issue 17) --------------------------------------------------------


def _booted_for_refresh(world: World, monkeypatch: pytest.MonkeyPatch, **settings: str) -> secretboot.Keyring:
    _environ(monkeypatch, {**_full_house(world), **settings})
    keyring = secretboot.bootstrap(max_age=1)  # the default deadline: boto3 builds its clients
    monkeypatch.setenv("SECRETBOOT_TIMEOUT", "0.5")  # read again by each refresh: failures are quick
    return keyring


def _delete_ssm(world: World) -> None:
    world.client("ssm").delete_parameter(Name="/canary/ok-ssm")


def test_refresh_now_failure(world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = _booted_for_refresh(world, monkeypatch, SECRETBOOT_REFRESH_MIN_INTERVAL="0")
    _delete_ssm(world)
    exc = _caught(secretboot.refresh_now, ["OK_SSM", "OK_KMS"])
    assert isinstance(exc, BootstrapError) and exc.variables == ("OK_SSM",), repr(exc)
    assert keyring["OK_SSM"].startswith("CANARY-OK-SSM-")  # kept
    assert_reported_clean(sentry, world.canaries, exc)


STALE_READS: dict[str, Callable[[secretboot.Keyring], object]] = {
    "getenv": lambda keyring: secretboot.getenv("OK_SSM"),
    "getitem": lambda keyring: keyring["OK_KMS"],
    "get": lambda keyring: keyring.get("OK_SM"),
    "as-bytes": lambda keyring: keyring.as_bytes("OK_SEALED"),
}


@pytest.mark.parametrize("read", list(STALE_READS))
def test_stale_reads(world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    keyring = _booted_for_refresh(world, monkeypatch, SECRETBOOT_MAX_STALE="0")
    _delete_ssm(world)  # every refresh fails from now on
    until(lambda: keyring._stale)
    exc = _caught(STALE_READS[read], keyring)
    assert isinstance(exc, StaleError) and "is stale" in str(exc), repr(exc)
    assert_reported_clean(sentry, world.canaries, exc)


def test_prefetch_join_failure(world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    _environ(monkeypatch, {**_full_house(world), "MISSING": "ssm:/canary/missing"})
    secretboot.prefetch()
    exc = _caught(secretboot.bootstrap)
    assert isinstance(exc, BootstrapError) and exc.variables == ("MISSING",), repr(exc)
    assert_reported_clean(sentry, world.canaries, exc)


def _stack_locals(frame: FrameType | None) -> dict[str, str]:
    """The locals of secretboot's frames on a stack, walked without limits, by frame."""
    walked: dict[str, str] = {}
    while frame is not None:
        code = frame.f_code
        if Path(code.co_filename).is_relative_to(PACKAGE):
            for name, value in frame.f_locals.items():
                text = "\n".join(_walk(value, 0, set()))
                walked[f"{Path(code.co_filename).name}:{code.co_name} {name}"] = text
        frame = frame.f_back
    return walked


class _StackAtLogTime(logging.Handler):
    """At each secretboot record of WARNING and above, what a reporter that attaches the
    logging thread's stack to log events would read there (Sentry's ``attach_stacktrace``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.walks: list[tuple[str, dict[str, str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        where = f"{record.threadName}: {record.levelname} {record.getMessage()}"
        self.walks.append((where, _stack_locals(sys._getframe())))


@pytest.fixture
def sentry_with_threads(caplog: pytest.LogCaptureFixture) -> Iterator[_Capture]:
    """Sentry as an application may set it up for a long-running process: log records become
    breadcrumbs (INFO) and events (WARNING and above: the default is ERROR) with the logging
    thread's stack and its locals, and an exception that ends a thread is reported."""
    caplog.set_level(logging.INFO, logger="secretboot")
    transport = _Capture()
    sentry_sdk.init(
        dsn="https://public@127.0.0.1/1",
        transport=transport,
        default_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=logging.WARNING),
            ThreadingIntegration(),
        ],
        attach_stacktrace=True,
        include_local_variables=True,
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()


def _events(capture: _Capture) -> list[dict[str, Any]]:
    return [event for event in (envelope.get_event() for envelope in capture.envelopes) if event]


def _message(event: dict[str, Any]) -> str:
    entry = event.get("logentry", {})
    return str(entry.get("formatted") or entry.get("message", ""))


# Where the on_refresh callbacks are called from, the keyring they are handed is a local
# (Sentry shows it by __sentry_repr__: names only).
HOOK_FRAMES = ("_refresh.py:fire keyring", "_lifecycle.py:_fire keyring", "_lifecycle.py:_refresh_all ")


def test_what_the_background_threads_report(
    world: World, sentry_with_threads: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    walker = _StackAtLogTime()
    logging.getLogger("secretboot").addHandler(walker)
    hook = _HookThatQuotes()
    unregister = secretboot.on_refresh(hook)
    try:
        keyring = _booted_for_refresh(world, monkeypatch, SECRETBOOT_MAX_STALE="0")
        _delete_ssm(world)  # the refresh thread fails (WARNING), marks the values stale (ERROR)
        until(lambda: keyring._stale)
        world.client("ssm").put_parameter(
            Name="/canary/ok-ssm", Value=world.plain("OK-SSM-2"), Type="SecureString"
        )
        until(lambda: not keyring._stale and bool(hook.calls))  # served again; the hook raises
        secretboot.reset()
        monkeypatch.setenv("MISSING", "ssm:/canary/missing")
        secretboot.prefetch()  # fails on its thread (ERROR), never joined
        job = _lifecycle._state.prefetch
        assert job is not None
        job.thread.join(10)
        secretboot.reset()
    finally:
        unregister()
        logging.getLogger("secretboot").removeHandler(walker)
    events = _events(sentry_with_threads)
    messages = [_message(event) for event in events]
    # Nothing escaped a thread (the threading integration would have reported it, with the
    # frames' locals); the WARNINGs and ERRORs are events with the logging thread's stack.
    assert not [event for event in events if "exception" in event], messages
    for expected in (
        "could not refresh OK_SSM",
        "no longer served",
        "raised ValueError",
        "prefetch() could not",
    ):
        assert any(expected in message for message in messages), (expected, messages)
    for event in events:
        frames = [f for v in event["threads"]["values"] for f in v["stacktrace"]["frames"]]
        assert any(f.get("vars") for f in frames), "sentry attached no locals"
    surfaces: dict[str, str | bytes] = {
        f"envelope {i}": envelope.serialize() for i, envelope in enumerate(sentry_with_threads.envelopes)
    }
    # Walked without limits (a reporter that ignores __sentry_repr__): nothing at any record,
    # but the keyring where the callbacks are called.
    for where, walked in walker.walks:
        for frame, text in walked.items():
            if not ("raised ValueError" in where and frame.startswith(HOOK_FRAMES)):
                surfaces[f"{where} / {frame}"] = text
    world.canaries.assert_absent(surfaces)
    hook_walks = [walked for where, walked in walker.walks if "raised ValueError" in where]
    assert hook_walks and any(world.canaries.found(text) for text in hook_walks[0].values())


def test_a_prefetch_failure_logged_with_its_stack_holds_no_environment_copy(
    world: World, sentry_with_threads: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prefetch() with an env file copies os.environ (references, ciphertext, the AWS secret key)
    # for the file's ${VAR} expansion; the frame that logs the failure must not still hold it.
    # A Lambda's environment is small: Sentry's ten items of a mapping reach the AWS keys.
    walker = _StackAtLogTime()
    logging.getLogger("secretboot").addHandler(walker)
    env_file = world.folder / ".env"
    env_file.write_text(f"FILE_KMS={world.kms('FILE-KMS')}\n", encoding="utf-8")
    os.environ.clear()  # restored by conftest's _clean_state
    os.environ.update({**world.env, "OK_KMS": world.kms("OK-KMS"), "MISSING": "ssm:/canary/missing"})
    try:
        secretboot.prefetch(env_file=env_file)
        job = _lifecycle._state.prefetch
        assert job is not None
        job.thread.join(10)
    finally:
        logging.getLogger("secretboot").removeHandler(walker)
    events = _events(sentry_with_threads)
    assert [_message(event) for event in events] == [
        "prefetch() could not resolve MISSING (ParameterNotFound); the next bootstrap() or getenv() raises it"
    ]
    surfaces: dict[str, str | bytes] = {"envelope": sentry_with_threads.envelopes[-1].serialize()}
    surfaces.update(
        {f"{where} / {frame}": text for where, walked in walker.walks for frame, text in walked.items()}
    )
    world.canaries.assert_absent(surfaces)


def test_the_refresh_threads_frames_while_it_waits_on_the_network(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sampling profiler, a hang dump (faulthandler, py-spy --locals) or a SnapStart snapshot
    # taken while a refresh waits for AWS sees the refresh thread's frames. What they hold is
    # what the resolution needs (the references, the AWS credentials): never the plaintext
    # the keyring already holds, nor any plaintext before an answer arrives.
    env = _full_house(world)
    with AwsProxy(world.endpoint) as proxy:
        _environ(monkeypatch, {**env, "AWS_ENDPOINT_URL": proxy.url, "SECRETBOOT_TIMEOUT": "5"})
        keyring = secretboot.bootstrap(max_age=1)
        refresher = _lifecycle._state.refresher
        assert refresher is not None and refresher.thread is not None
        ident = refresher.thread.ident
        proxy.add_fault(delay(1.5))

        def waiting() -> dict[str, str]:
            frame = sys._current_frames().get(ident or 0)
            walked = _stack_locals(frame)
            return walked if any(":resolve " in name for name in walked) else {}

        walked: dict[str, str] = {}
        until(lambda: bool(walked.update(waiting()) or walked), 10)
        found = {name: world.canaries.found(text) for name, text in walked.items()}
        proxy.clear_faults()
    plaintext = {"OK-KMS", "OK-SSM", "SM-PASSWORD", "SM-NOTE", "OK-SEALED", "DATA-KEY-raw"}
    held = {name: labels & plaintext for name, labels in found.items() if labels & plaintext}
    assert held == {}, held
    # The inputs are there, as they must be to make the requests: the test would see a leak.
    assert set().union(*found.values()) >= {"AWS-SECRET", "OK-KMS-ct"}, found
    assert len(keyring) == 5


# -- the keyring -------------------------------------------------------------------------------


def _keyring_with_fernet_keys(world: World, monkeypatch: pytest.MonkeyPatch) -> secretboot.Keyring:
    from cryptography.fernet import Fernet

    key = world.canaries.text("FERNET-KEY", Fernet.generate_key().decode())
    world.client("ssm").put_parameter(Name="/canary/fernet", Value=key, Type="SecureString")
    _environ(monkeypatch, {**_full_house(world), "FERNET_KEY": "ssm:/canary/fernet"})
    return secretboot.bootstrap()


KEYRING_MISUSE: dict[str, Callable[[secretboot.Keyring], object]] = {
    "missing": lambda keyring: keyring["ABSENT"],
    "as-bytes-missing": lambda keyring: keyring.as_bytes("ABSENT"),
    "fernet-missing": lambda keyring: keyring.fernet("ABSENT"),
    "fernet-bad-key": lambda keyring: keyring.fernet("OK_KMS"),
    "fernet-bad-fallback": lambda keyring: keyring.fernet("FERNET_KEY", fallbacks=["OK_SSM"]),
    "fernet-fallbacks-str": lambda keyring: keyring.fernet("FERNET_KEY", fallbacks="OK_SSM"),
}


@pytest.mark.parametrize("case", list(KEYRING_MISUSE))
def test_keyring_misuse(world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    keyring = _keyring_with_fernet_keys(world, monkeypatch)
    exc = _caught(KEYRING_MISUSE[case], keyring)
    assert isinstance(exc, KeyError | ValueError | TypeError), repr(exc)
    assert_reported_clean(sentry, world.canaries, exc)


def _application_code(keyring: secretboot.Keyring) -> None:
    """An application's frame holding the keyring and its views when something else fails."""
    names, values, items = keyring.keys(), keyring.values(), keyring.items()
    snapshot = [names, values, items]
    raise RuntimeError(f"the application failed with {len(snapshot)} views in hand")


def test_a_keyring_and_its_views_in_an_applications_frame(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = _keyring_with_fernet_keys(world, monkeypatch)
    exc = _caught(_application_code, keyring)
    sentry_sdk.capture_exception(exc)
    event = sentry.envelopes[-1].get_event()
    assert event is not None
    shown = json.dumps(event)
    # Sentry shows the names (they help), never the values; a walker that ignores
    # __sentry_repr__ would still walk the keyring itself, which is the application's frame.
    assert "FERNET_KEY" in shown and "OK_SSM" in shown
    envelope = sentry.envelopes[-1].serialize()
    world.canaries.assert_absent({"sentry event as JSON": shown, "envelope": envelope})


# -- Flask -------------------------------------------------------------------------------------

FLASK_FAILURES = ["names-missing", "unresolvable", "unresolved-secret-key", "flask-setting", "prefix-empty"]


@pytest.mark.parametrize("case", FLASK_FAILURES)
def test_flask_extension_failures(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    from flask import Flask

    from secretboot.contrib.flask import SecretBoot

    _environ(monkeypatch, _full_house(world))
    monkeypatch.setenv("SECRET_KEY", world.kms("FLASK-KEY"))
    app = Flask("canary")
    extension = SecretBoot()
    expected: type[SecretbootError] = BootstrapError
    if case == "names-missing":
        extension = SecretBoot(names=["SECRET_KEY", "OK_SSM", "NOT_SET"])
    elif case == "unresolvable":
        monkeypatch.setenv("MISSING", "ssm:/canary/missing")
    elif case == "unresolved-secret-key":
        # The ciphertext is the test's own input here: it is registered, so it must not show either.
        app.config["SECRET_KEY"] = world.kms("PRESET-KEY")
        extension = SecretBoot(names=["OK_SSM"])
    elif case == "flask-setting":
        monkeypatch.setenv("SESSION_COOKIE_NAME", world.kms("COOKIE-NAME"))
        expected = ConfigurationError
    elif case == "prefix-empty":
        monkeypatch.setenv("OK_", world.kms("PREFIX-ONLY"))
        extension = SecretBoot(prefix="OK_")
        expected = ConfigurationError
    exc = _caught(extension.init_app, app)
    assert isinstance(exc, expected), repr(exc)
    assert_reported_clean(sentry, world.canaries, exc)


# -- Django ------------------------------------------------------------------------------------


def test_django_fallbacks_of_a_late_reference(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secretboot.contrib.django import fallbacks

    _environ(monkeypatch, {**_full_house(world), "OLD_KEY": world.kms("OLD-KEY")})
    secretboot.bootstrap()
    monkeypatch.setenv("OLDER_KEY", world.kms("LATE-KEY"))
    exc = _caught(fallbacks, "OK_SSM", "OLD_KEY", "OLDER_KEY")
    assert isinstance(exc, BootstrapError) and exc.variables == ("OLDER_KEY",)
    assert_reported_clean(sentry, world.canaries, exc)


def test_django_settings_that_cannot_resolve(
    world: World, sentry: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo project's settings module, imported in this process as Django imports it."""
    from django.conf import LazySettings

    _environ(monkeypatch, _full_house(world))
    monkeypatch.setenv("SECRET_KEY", world.kms("DJANGO-KEY"))
    monkeypatch.setenv("SECRET_KEY_FALLBACK", world.kms("DJANGO-OLD-KEY"))
    monkeypatch.setenv("DB_PASSWORD", "ssm:/canary/missing")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "demo.settings")
    monkeypatch.syspath_prepend(str(DJANGO_PROJECT))
    loaded = set(sys.modules)
    try:
        exc = _caught(getattr, LazySettings(), "SECRET_KEY")  # a fresh LazySettings: not Django's own
    finally:
        for name in set(sys.modules) - loaded:
            if name == "demo" or name.startswith("demo."):
                del sys.modules[name]
    assert isinstance(exc, BootstrapError) and exc.variables == ("DB_PASSWORD",), repr(exc)
    assert_reported_clean(sentry, world.canaries, exc)


def test_the_scan_finds_a_leak_in_a_frame(world: World, sentry: _Capture) -> None:
    # The checks above must be able to fail: a frame holding plaintext is found.
    secret = world.plain(f"LOCAL-{uuid.uuid4().hex[:6]}")

    def leaky() -> None:
        kept = {"PASSWORD_COPY": secret}
        raise RuntimeError(f"failed with {len(kept)} values")

    exc = _caught(leaky)
    with pytest.raises(AssertionError, match="canaries leaked"):
        assert_reported_clean(sentry, world.canaries, exc)


def test_the_unlimited_walk_reads_secretboots_frames(world: World) -> None:
    # A mismatched Keyring(...) raises from frames holding the values the caller passed in.
    secret = world.plain("CONSTRUCTED")
    mismatched = {f"NAME_{i}": "x" for i in range(20)} | {"LAST": secret}
    exc = _caught(secretboot.Keyring, mismatched, {})
    assert isinstance(exc, ValueError)
    assert world.canaries.found(_frames_locals(exc)) == {"CONSTRUCTED"}
