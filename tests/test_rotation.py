"""Secrets Manager rotation: values follow AWSCURRENT, AWSPENDING is never served,
AWSPREVIOUS and version ids keep reading what they name.

A rotation is done as a rotation function does it: ``PutSecretValue`` of the new version
staged ``AWSPENDING`` (createSecret), then ``UpdateSecretVersionStage`` moving ``AWSCURRENT``
to it (finishSecret), which moves ``AWSPREVIOUS`` to the version that was current.

moto (5.2.5) labels the versions as AWS does, but its ``UpdateSecretVersionStage`` does not
move the version that ``GetSecretValue`` without a stage and ``BatchGetSecretValue`` return:
they keep answering with the old version, now labelled ``AWSPREVIOUS``. AWS answers both with
the version labelled ``AWSCURRENT``. ``test_moto_gap_...`` pins that difference, and
``finish_rotation`` makes moto's default read follow the label again, as AWS's does.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import secretboot
from secretboot import BootstrapError, ReferenceSyntaxError, SecretsManagerReference, parse_reference
from tests.awsproxy import ProxyRequest, ProxyResponse
from tests.conftest import moto_api
from tests.localaws import REGION, client
from tests.test_bootstrap import assert_no_leak
from tests.test_secretsmanager import (
    BATCH,
    GET,
    SmProxy,
    all_texts,
    assert_logged_by_the_transport,
    debug_logging,
    failures_of,
    sm_counts,
    via,
)

ACCOUNT = "123456789012"  # moto's default account
VID = "0123abcd-4567-89ef-0123-456789abcdef"

# One distinctive password per version: any of them in a log line or an error is a leak.
V0 = "rot-canary-v0-5f1c"
V1 = "rot-canary-v1-a83d"
V2 = "rot-canary-v2-0e97"
V3 = "rot-canary-v3-c2b4"
PENDING_ONLY = "rot-canary-pending-71aa"  # staged AWSPENDING and never promoted
CANARIES = (V0, V1, V2, V3, PENDING_ONLY)


T = TypeVar("T")


def doc(password: str) -> str:
    return json.dumps({"username": "app", "password": password})


def logged(caplog: pytest.LogCaptureFixture, logs: list[str], call: Callable[[], T]) -> T:
    """Run ``call`` with everything captured at DEBUG (botocore's wire logging included) and
    keep what it logged. The tests' own set-up calls send the values on purpose, so only
    secretboot's calls are captured."""
    debug_logging(caplog)  # clears what came before
    try:
        return call()
    finally:
        logs.append(caplog.text)


# =========================================================================== rotation helpers


def stages(sm: Any, name: str) -> dict[str, list[str]]:
    """Version id -> its staging labels (sorted), for versions that still have one."""
    answer = sm.describe_secret(SecretId=name)
    return {vid: sorted(labels) for vid, labels in answer["VersionIdsToStages"].items() if labels}


def holder(sm: Any, name: str, stage: str) -> str:
    (vid,) = [vid for vid, labels in stages(sm, name).items() if stage in labels]
    return vid


def start_rotation(sm: Any, name: str, value: str) -> str:
    """createSecret: the new version, staged AWSPENDING only. Returns its version id."""
    answer = sm.put_secret_value(SecretId=name, SecretString=value, VersionStages=["AWSPENDING"])
    return str(answer["VersionId"])


def finish_rotation(sm: Any, name: str, pending: str) -> str:
    """finishSecret: move AWSCURRENT to ``pending``. Returns the version that was current."""
    current = holder(sm, name, "AWSCURRENT")
    sm.update_secret_version_stage(
        SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=pending, RemoveFromVersionId=current
    )
    # The labels as AWS leaves them: AWSPREVIOUS moved to the old version by the service,
    # AWSPENDING still on the new one (a rotation function's finishSecret leaves it there).
    assert stages(sm, name)[current] == ["AWSPREVIOUS"]
    assert stages(sm, name)[pending] == ["AWSCURRENT", "AWSPENDING"]
    _moto_default_follows_awscurrent(name)
    return current


def rotate(sm: Any, name: str, value: str) -> tuple[str, str]:
    """A whole rotation; returns (the old current version id, the new one)."""
    pending = start_rotation(sm, name, value)
    return finish_rotation(sm, name, pending), pending


def _moto_default_follows_awscurrent(name: str) -> None:
    """Do in moto what AWS does itself: the unstaged read follows the AWSCURRENT label.

    moto tracks the version read by default apart from the labels and moves it only on
    PutSecretValue and RotateSecret (see ``test_moto_gap_...``). The server runs in this
    process, so its backend is reachable; this changes no label.
    """
    from moto.secretsmanager.models import FakeSecret, secretsmanager_backends

    secret = secretsmanager_backends[ACCOUNT][REGION].secrets[name]
    assert isinstance(secret, FakeSecret)
    (current,) = [vid for vid, v in secret.versions.items() if "AWSCURRENT" in v["version_stages"]]
    secret.set_default_version_id(current)


class RotationProxy(SmProxy):
    """An ``SmProxy`` that also keeps the labels of every version a batch answer carried."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.batch_stages: list[list[str]] = []

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        answer = super().handle(request)
        if request.target == BATCH and answer.status == 200:
            for secret in json.loads(answer.body).get("SecretValues", []):
                self.batch_stages.append(sorted(secret.get("VersionStages", [])))
        return answer

    def asked_for_pending(self) -> bool:
        """Did any Secrets Manager request secretboot made name AWSPENDING, in any field?"""
        with self._bodies_lock:
            return any("AWSPENDING" in json.dumps(body) for _, body in self._bodies)


@pytest.fixture
def sm(aws_env: dict[str, str]) -> Any:
    return client(aws_env["AWS_ENDPOINT_URL"], "secretsmanager")


@pytest.fixture
def proxy(aws_env: dict[str, str], moto_endpoint: str) -> Iterator[RotationProxy]:
    running = RotationProxy(moto_endpoint)
    with running:
        yield running


# =========================================================================== moto against AWS


def test_moto_gap_update_secret_version_stage_leaves_the_unstaged_read_behind(moto_endpoint: str) -> None:
    """moto moves the labels as AWS does but keeps answering unstaged reads with the old version.

    If this fails, moto has been fixed: drop ``_moto_default_follows_awscurrent``.
    """
    moto_api(moto_endpoint, "reset")
    sm = client(moto_endpoint, "secretsmanager")
    first = sm.create_secret(Name="gap", SecretString=V0)["VersionId"]
    pending = start_rotation(sm, "gap", V1)
    assert stages(sm, "gap") == {first: ["AWSCURRENT"], pending: ["AWSPENDING"]}
    sm.update_secret_version_stage(
        SecretId="gap", VersionStage="AWSCURRENT", MoveToVersionId=pending, RemoveFromVersionId=first
    )
    # Labels: as AWS.
    assert stages(sm, "gap") == {first: ["AWSPREVIOUS"], pending: ["AWSCURRENT", "AWSPENDING"]}
    assert sm.get_secret_value(SecretId="gap", VersionStage="AWSCURRENT")["SecretString"] == V1
    # Unstaged reads: AWS answers V1 (AWSCURRENT); moto still answers V0, labelled AWSPREVIOUS.
    assert sm.get_secret_value(SecretId="gap")["SecretString"] == V0
    (batch,) = sm.batch_get_secret_value(SecretIdList=["gap"])["SecretValues"]
    assert (batch["SecretString"], batch["VersionStages"]) == (V0, ["AWSPREVIOUS"])
    # With the workaround, moto answers as AWS does.
    _moto_default_follows_awscurrent("gap")
    assert sm.get_secret_value(SecretId="gap")["SecretString"] == V1
    (batch,) = sm.batch_get_secret_value(SecretIdList=["gap"])["SecretValues"]
    assert (batch["SecretString"], sorted(batch["VersionStages"])) == (V1, ["AWSCURRENT", "AWSPENDING"])


# =========================================================================== AWSCURRENT is followed


def test_values_follow_awscurrent_never_awspending(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Through two rotations, with a refresh after each step: the current readers (batched)
    change only when AWSCURRENT moves; AWSPREVIOUS readers give the version before it; a
    version id keeps its version, even once it has no label left."""
    v0 = sm.create_secret(Name="app/db", SecretString=doc(V0))["VersionId"]
    v1 = sm.put_secret_value(SecretId="app/db", SecretString=doc(V1))["VersionId"]
    assert stages(sm, "app/db") == {v0: ["AWSPREVIOUS"], v1: ["AWSCURRENT"]}
    env = via(
        proxy,
        aws_env,
        WHOLE="secretsmanager:app/db",
        PASSWORD="secretsmanager:app/db#password",
        PASSWORD_DYNAMIC="{{resolve:secretsmanager:app/db::password}}",
        OLD_PASSWORD="{{resolve:secretsmanager:app/db:SecretString:password:AWSPREVIOUS}}",
        OLD_WHOLE="{{resolve:secretsmanager:app/db:SecretString::AWSPREVIOUS}}",
        PINNED=f"{{{{resolve:secretsmanager:app/db:SecretString:password::{v1}}}}}",
    )

    def expect(current: str, previous: str) -> dict[str, str]:
        return {
            "WHOLE": doc(current),
            "PASSWORD": current,
            "PASSWORD_DYNAMIC": current,
            "OLD_PASSWORD": previous,
            "OLD_WHOLE": doc(previous),
            "PINNED": V1,
        }

    logs: list[str] = []

    def refresh() -> secretboot.Keyring:
        return logged(caplog, logs, lambda: secretboot.bootstrap(environ=env, refresh=True))

    keyring = refresh()
    assert dict(keyring) == expect(V1, V0)

    # createSecret: V2 staged AWSPENDING. Nothing changes, however often it is refreshed.
    pending = start_rotation(sm, "app/db", doc(V2))
    for _ in range(2):
        assert refresh() is keyring
        assert dict(keyring) == expect(V1, V0)

    # finishSecret: AWSCURRENT moves to V2, AWSPREVIOUS to V1.
    assert finish_rotation(sm, "app/db", pending) == v1
    refresh()
    assert dict(keyring) == expect(V2, V1)

    # A second rotation: V1 loses its last label; the pinned id still reads it.
    rotate(sm, "app/db", doc(V3))
    assert v1 not in stages(sm, "app/db")
    refresh()
    assert dict(keyring) == expect(V3, V2)

    # Current readers share one batch per resolution; each answer carried AWSCURRENT.
    resolutions = 5
    assert sm_counts(proxy) == {BATCH: resolutions, GET: 2 * resolutions}
    assert proxy.bodies(BATCH) == [{"SecretIdList": ["app/db"]}] * resolutions
    assert len(proxy.batch_stages) == resolutions
    assert all("AWSCURRENT" in labels for labels in proxy.batch_stages)
    # No request ever named AWSPENDING: stages asked for are AWSPREVIOUS, or a version id.
    assert not proxy.asked_for_pending()
    assert {json.dumps(body, sort_keys=True) for body in proxy.bodies(GET)} == {
        json.dumps({"SecretId": "app/db", "VersionStage": "AWSPREVIOUS"}, sort_keys=True),
        json.dumps({"SecretId": "app/db", "VersionId": v1}, sort_keys=True),
    }
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak("".join(logs), *CANARIES)


def test_an_abandoned_rotation_is_never_served(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation that fails after createSecret leaves a version staged AWSPENDING for good
    (a password that may exist nowhere): refreshes keep the current value, and the next
    rotation, staged over it, is what gets served."""
    sm.create_secret(Name="api", SecretString=V0)
    env = via(proxy, aws_env, TOKEN="secretsmanager:api")
    logs: list[str] = []

    def refresh() -> secretboot.Keyring:
        return logged(caplog, logs, lambda: secretboot.bootstrap(environ=env, refresh=True))

    keyring = refresh()
    abandoned = start_rotation(sm, "api", PENDING_ONLY)
    refresh()
    assert dict(keyring) == {"TOKEN": V0}

    # The next rotation stages AWSPENDING on a new version (the label leaves the abandoned
    # one, in moto as in AWS) and completes.
    pending = start_rotation(sm, "api", V1)
    assert abandoned not in stages(sm, "api")
    refresh()
    assert dict(keyring) == {"TOKEN": V0}
    finish_rotation(sm, "api", pending)
    refresh()
    assert dict(keyring) == {"TOKEN": V1}
    assert not proxy.asked_for_pending()
    assert_no_leak("".join(logs), *CANARIES)


def test_batch_denied_fallback_reads_awscurrent_too(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy
) -> None:
    """A role with only GetSecretValue: the per-secret fallback asks for no stage (AWSCURRENT)."""
    sm.create_secret(Name="db", SecretString=doc(V0))
    proxy.deny_batch = True
    env = via(proxy, aws_env, PASSWORD="secretsmanager:db#password")
    keyring = secretboot.bootstrap(environ=env)
    start = start_rotation(sm, "db", doc(V1))
    secretboot.bootstrap(environ=env, refresh=True)
    assert dict(keyring) == {"PASSWORD": V0}
    finish_rotation(sm, "db", start)
    secretboot.bootstrap(environ=env, refresh=True)
    assert dict(keyring) == {"PASSWORD": V1}
    assert proxy.bodies(GET) == [{"SecretId": "db"}] * 3
    assert not proxy.asked_for_pending()


# =========================================================================== AWSPREVIOUS as a fallback


def test_awsprevious_before_any_rotation_fails_closed_naming_the_stage(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret with one version has no AWSPREVIOUS: the fallback reference fails (NotFound),
    naming the variable and the stage, never falling back to the current value."""
    sm.create_secret(Name="db", SecretString=doc(V0))
    env = via(
        proxy,
        aws_env,
        PASSWORD="secretsmanager:db#password",
        OLD_PASSWORD="{{resolve:secretsmanager:db::password:AWSPREVIOUS}}",
    )
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"OLD_PASSWORD": "NotFound"}
    (failure,) = info.value.failures
    assert failure.target == "db#password (stage AWSPREVIOUS)"
    assert failure.detail.endswith("a secret has an AWSPREVIOUS version only once it has been rotated")
    assert_no_leak(all_texts(info.value) + caplog.text, *CANARIES)

    # After the first rotation the same environment resolves: OLD_PASSWORD is the first value.
    rotate(sm, "db", doc(V1))
    secretboot.reset()
    assert dict(secretboot.bootstrap(environ=env)) == {"PASSWORD": V1, "OLD_PASSWORD": V0}


# =========================================================================== AWSPENDING is refused


PENDING_REFERENCES = [
    "{{resolve:secretsmanager:db:SecretString:password:AWSPENDING}}",
    "{{resolve:secretsmanager:db:::AWSPENDING}}",
    "{{resolve:secretsmanager:db::password:AWSPENDING:}}",
    f"{{{{resolve:secretsmanager:db:SecretString:password:AWSPENDING:{VID}}}}}",
    f"{{{{resolve:secretsmanager:arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db-AbCdEf:::AWSPENDING}}}}",
]


@pytest.mark.parametrize("value", PENDING_REFERENCES)
def test_a_reference_naming_awspending_does_not_parse(value: str) -> None:
    with pytest.raises(ReferenceSyntaxError) as info:
        parse_reference(value, variable="DB_PASSWORD")
    error = info.value
    assert (error.variable, error.kind) == ("DB_PASSWORD", "dynamic")
    assert error.reason == (
        "version stage AWSPENDING is a rotation in progress and is never served; "
        "read AWSCURRENT (the default) or AWSPREVIOUS"
    )
    assert str(error) == f"DB_PASSWORD: malformed reference: {error.reason}"
    assert error.__cause__ is None and error.__suppress_context__  # shown without the value


def test_no_reference_object_can_name_awspending() -> None:
    """Refused in the constructor, so no code path can build (or unpickle) one and ask for it."""
    with pytest.raises(ReferenceSyntaxError, match="AWSPENDING is a rotation in progress"):
        SecretsManagerReference("db", version_stage="AWSPENDING")
    with pytest.raises(ReferenceSyntaxError, match="AWSPENDING is a rotation in progress"):
        SecretsManagerReference("db", json_key="k", version_stage="AWSPENDING", version_id=VID)
    # A pickle of another stage of the same length, edited: unpickling runs the constructor.
    forged = pickle.dumps(SecretsManagerReference("db", version_stage="AWSPENDINX")).replace(
        b"AWSPENDINX", b"AWSPENDING"
    )
    with pytest.raises(ReferenceSyntaxError, match="AWSPENDING is a rotation in progress"):
        pickle.loads(forged)


@pytest.mark.parametrize("stage", ["AWSCURRENT", "AWSPREVIOUS", "awspending", "AWSPENDING2", "MYPENDING"])
def test_other_stages_still_parse(stage: str) -> None:
    """Only the exact label AWSPENDING is refused; stage labels are case-sensitive."""
    ref = parse_reference(f"{{{{resolve:secretsmanager:db::password:{stage}}}}}")
    assert ref == SecretsManagerReference("db", json_key="password", version_stage=stage)


def test_awspending_reference_fails_before_any_call_and_the_rest_is_named(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """In bootstrap(), the refusal is a Malformed failure with the reason; no request names
    AWSPENDING, the pending value stays unread, and nothing leaks."""
    sm.create_secret(Name="db", SecretString=doc(V0))
    start_rotation(sm, "db", doc(PENDING_ONLY))
    env = via(
        proxy,
        aws_env,
        PASSWORD="secretsmanager:db#password",
        NEXT_PASSWORD="{{resolve:secretsmanager:db::password:AWSPENDING}}",
    )
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"NEXT_PASSWORD": "Malformed"}
    (failure,) = info.value.failures
    assert "AWSPENDING is a rotation in progress and is never served" in failure.detail
    assert "NEXT_PASSWORD" in str(info.value)
    assert sm_counts(proxy).get(GET, 0) == 0
    assert not proxy.asked_for_pending()
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(all_texts(info.value) + caplog.text, *CANARIES)


# =========================================================================== refresh API (issue 17)


def test_refresh_now_follows_awscurrent(
    aws_env: dict[str, str],
    sm: Any,
    proxy: RotationProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """refresh_now() while a version is pending changes nothing; once AWSCURRENT moves it
    returns the changed names, and the hooks hear of them."""
    sm.create_secret(Name="app/db", SecretString=doc(V0))
    monkeypatch.setenv("SECRETBOOT_REFRESH_MIN_INTERVAL", "0")
    env = via(
        proxy,
        aws_env,
        SECRETBOOT_REFRESH_MIN_INTERVAL="0",
        PASSWORD="secretsmanager:app/db#password",
        USERNAME="secretsmanager:app/db#username",
    )
    logs: list[str] = []
    keyring = logged(caplog, logs, lambda: secretboot.bootstrap(environ=env))
    heard: list[frozenset[str]] = []
    unregister = secretboot.on_refresh(lambda _ring, names: heard.append(frozenset(names)))
    try:
        pending = start_rotation(sm, "app/db", doc(V1))
        assert logged(caplog, logs, secretboot.refresh_now) == frozenset()
        assert dict(keyring) == {"PASSWORD": V0, "USERNAME": "app"}
        finish_rotation(sm, "app/db", pending)
        assert logged(caplog, logs, lambda: secretboot.refresh_now(["PASSWORD"])) == {"PASSWORD"}
        assert dict(keyring) == {"PASSWORD": V1, "USERNAME": "app"}
        assert heard and heard[-1] == {"PASSWORD"}
    finally:
        unregister()
    assert not proxy.asked_for_pending()
    assert_no_leak("".join(logs), *CANARIES)


def test_max_age_follows_awscurrent_in_the_background(
    aws_env: dict[str, str], sm: Any, proxy: RotationProxy
) -> None:
    """With max_age, background refreshes keep the old value while a version is pending and
    pick up the new one once AWSCURRENT moves, in the same keyring."""
    sm.create_secret(Name="app/db", SecretString=doc(V0))
    env = via(proxy, aws_env, PASSWORD="secretsmanager:app/db#password")
    keyring = secretboot.bootstrap(environ=env, max_age=1.0)
    pending = start_rotation(sm, "app/db", doc(V1))
    deadline = time.monotonic() + 10
    while sm_counts(proxy).get(BATCH, 0) < 3 and time.monotonic() < deadline:  # two refreshes
        time.sleep(0.05)
    assert sm_counts(proxy).get(BATCH, 0) >= 3
    assert keyring["PASSWORD"] == V0
    finish_rotation(sm, "app/db", pending)
    while keyring["PASSWORD"] != V1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keyring["PASSWORD"] == V1
    assert not proxy.asked_for_pending()
