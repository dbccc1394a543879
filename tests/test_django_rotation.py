"""A rotated database password, with a real PostgreSQL and a real server: no restart needed.

The demo project (``demo.settings_postgres``) runs under gunicorn on 127.0.0.1 with its database
password in Secrets Manager (moto), as JSON like an RDS-rotated secret
(``secretsmanager:demo/db#password``), and ``ENGINE: secretboot.contrib.django.postgresql``.
Each test rotates it as a rotation Lambda does: the new version staged ``AWSPENDING``,
``ALTER ROLE ... PASSWORD`` as the superuser, then ``AWSCURRENT`` moved to the new version.
The app's next request must succeed:

- through ``refresh_now`` on the refused login (one connection per request), and
- through ``max_age`` alone (a persistent connection, closed and reopened after the refresh,
  with no refused login at all),

with one worker, and with ``--preload`` and two workers (each worker's next request).
PostgreSQL comes from ``tests/postgres.py``; when it is not installed these tests fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from secretboot._reference import is_reference
from tests.conftest import moto_api
from tests.localaws import CREDENTIALS, REGION, client
from tests.postgres import Postgres, free_port, postgres_cluster

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "django_project"
SECRET_ID = "demo/db"
MOTO_ACCOUNT = "123456789012"  # moto's default account
ROLE = "app"
START_TIMEOUT = 60
REFRESHED = re.compile(r"pid=(\d+) INFO secretboot\.contrib\.django: secretboot refreshed [^\n]*DB_PASSWORD")
RETRIED = "refused the password in DB_PASSWORD; connecting again with the refreshed one"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as pg:
        yield pg


class Rotation:
    """The role ``app`` and its secret, both with the same password, rotated together."""

    def __init__(self, pg: Postgres, endpoint: str) -> None:
        moto_api(endpoint, "reset")
        self.pg = pg
        self.sm: Any = client(endpoint, "secretsmanager")
        pg.execute("DROP DATABASE IF EXISTS app WITH (FORCE)")
        pg.execute("DROP ROLE IF EXISTS app")
        self.passwords = [secrets.token_urlsafe(24)]
        pg.create_role(ROLE, self.passwords[0], database="app")
        self.sm.create_secret(Name=SECRET_ID, SecretString=self._document(self.passwords[0]))
        self._log_start = len(pg.log())

    def auth_failures(self) -> int:
        """Refused logins of the role since this test began (the cluster serves the whole module)."""
        return self.pg.log()[self._log_start :].count(f'password authentication failed for user "{ROLE}"')

    def _document(self, password: str) -> str:
        return json.dumps({"engine": "postgres", "username": ROLE, "password": password})

    def stage_pending(self) -> str:
        """createSecret: the new version under AWSPENDING only."""
        password = secrets.token_urlsafe(24)
        self.passwords.append(password)
        self.pending = self.sm.put_secret_value(
            SecretId=SECRET_ID, SecretString=self._document(password), VersionStages=["AWSPENDING"]
        )["VersionId"]
        return password

    def set_in_database(self) -> None:
        """setSecret: the database takes the new password; the old one no longer logs in."""
        self.pg.set_password(ROLE, self.passwords[-1])

    def finish(self) -> None:
        """finishSecret: AWSCURRENT moves to the new version."""
        current = next(
            version["VersionId"]
            for version in self.sm.list_secret_version_ids(SecretId=SECRET_ID)["Versions"]
            if "AWSCURRENT" in version.get("VersionStages", [])
        )
        self.sm.update_secret_version_stage(
            SecretId=SECRET_ID,
            VersionStage="AWSCURRENT",
            MoveToVersionId=self.pending,
            RemoveFromVersionId=current,
        )
        _moto_default_follows_awscurrent(SECRET_ID)

    def rotate(self) -> None:
        self.stage_pending()
        self.set_in_database()
        self.finish()


def _moto_default_follows_awscurrent(name: str) -> None:
    """Do in moto what AWS does itself: a read with no stage follows the AWSCURRENT label.

    moto moves the labels on UpdateSecretVersionStage but keeps answering unstaged reads
    (GetSecretValue, BatchGetSecretValue) with the old version (tests/test_rotation.py pins
    the gap). The server runs in this process; this changes no label.
    """
    from moto.secretsmanager.models import secretsmanager_backends

    secret = secretsmanager_backends[MOTO_ACCOUNT][REGION].secrets[name]
    (current,) = [vid for vid, v in secret.versions.items() if "AWSCURRENT" in v["version_stages"]]
    secret.set_default_version_id(current)


@pytest.fixture
def rotation(postgres: Postgres, moto_endpoint: str) -> Rotation:
    return Rotation(postgres, moto_endpoint)


class Server:
    """gunicorn serving the demo on 127.0.0.1, its output in a file, stopped by PID."""

    def __init__(self, env: dict[str, str], workers: int, preload: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = Path(tempfile.mkstemp(prefix="secretboot-gunicorn-", suffix=".log")[1])
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(PROJECT),
            "--bind",
            f"127.0.0.1:{self.port}",
        ]
        command += ["--workers", str(workers), "--timeout", "30", "--graceful-timeout", "2"]
        command += ["--no-control-socket"]  # else a socket in ~/.gunicorn, shared by every server
        command += ["--preload"] if preload else []
        with self.output.open("wb") as sink:
            self.process = subprocess.Popen(
                [*command, "demo.wsgi:application"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the workers go with the master
            )

    def wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n{self.log()}")
            try:
                status, _ = self.get("/health/")
            except OSError:
                status = 0
            if status == 200 and self.log().count("Booting worker") >= workers:
                return
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def db_from_each_worker(self, workers: int) -> list[tuple[int, Any]]:
        """As many concurrent /db/ requests as workers, each held 0.5 s: every worker serves one."""
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda _: self.get("/db/?hold=0.5"), range(workers)))

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the master by PID; SIGKILL to its process group if it lingers."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.output.unlink(missing_ok=True)


def _env(pg: Postgres, endpoint: str, conn_max_age: str, **extra: str) -> dict[str, str]:
    env = _env_base(endpoint)
    env.update(
        DJANGO_SETTINGS_MODULE="demo.settings_postgres",
        SECRET_KEY=secrets.token_urlsafe(40),
        DB_HOST=pg.host,
        DB_PORT=str(pg.port),
        DB_PASSWORD=f"secretsmanager:{SECRET_ID}#password",
        DB_CONN_MAX_AGE=conn_max_age,
        **extra,
    )
    return env


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Server] = []

    def start(env: dict[str, str], *, workers: int = 1, preload: bool = False) -> Server:
        server = Server(env, workers, preload)
        started.append(server)
        server.wait_ready(workers)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _served(server: Server, answer: tuple[int, Any]) -> Any:
    """The answer's body, after checking the database answered as the role."""
    status, body = answer
    ok = status == 200 and isinstance(body, dict) and body["user"] == ROLE
    assert ok, f"{status} {str(body)[:300]}\n{server.log()}"
    return body


def _assert_served(answers: list[tuple[int, Any]], workers: int, server: Server) -> None:
    assert [status for status, _ in answers] == [200] * len(answers), server.log()
    assert all(body["user"] == ROLE for _, body in answers)
    assert len({body["worker"] for _, body in answers}) == workers, answers


def _assert_no_password(rotation: Rotation, *texts: str) -> None:
    for text in texts:
        for password in rotation.passwords:
            assert password not in text


def _wait_for(predicate: Any, what: str, server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s:\n{server.log()}")


def test_a_refused_login_fetches_the_rotated_password_and_the_request_succeeds(
    rotation: Rotation, moto_endpoint: str, serve: Any
) -> None:
    server = serve(_env(rotation.pg, moto_endpoint, "0", SECRETBOOT_REFRESH_MIN_INTERVAL="1"))
    assert server.get("/db/")[0] == 200
    time.sleep(1.1)  # refresh_now() asks again only a pacing interval after the start-up resolution
    rotation.rotate()

    _served(server, server.get("/db/"))  # the old password is refused; refresh_now; retried once
    assert rotation.auth_failures() == 1
    assert server.log().count(RETRIED) == 1
    # The hook put the new password into the settings: the next connection needs no retry.
    assert server.get("/db/")[0] == 200
    assert rotation.auth_failures() == 1
    assert server.log().count(RETRIED) == 1
    _assert_no_password(rotation, server.log())


def test_while_the_new_version_is_only_pending_the_old_password_is_kept_and_the_request_fails(
    rotation: Rotation, moto_endpoint: str, serve: Any
) -> None:
    server = serve(_env(rotation.pg, moto_endpoint, "0", SECRETBOOT_REFRESH_MIN_INTERVAL="1"))
    time.sleep(1.1)  # refresh_now() is allowed to ask: what it gets is still the old AWSCURRENT
    rotation.stage_pending()
    rotation.set_in_database()  # AWSCURRENT still holds the old password: AWSPENDING is never served

    status, body = server.get("/db/")
    assert status == 500
    assert rotation.auth_failures() == 1  # one login, no retry with the same password
    assert RETRIED not in server.log()
    assert "holds no newer one" in server.log()

    rotation.finish()
    time.sleep(1.1)  # past SECRETBOOT_REFRESH_MIN_INTERVAL: the next refused login asks again
    body = _served(server, server.get("/db/"))
    assert server.log().count(RETRIED) == 1
    _assert_no_password(rotation, server.log(), str(body))


def test_max_age_refreshes_the_password_and_reconnects_an_open_connection(
    rotation: Rotation, moto_endpoint: str, serve: Any
) -> None:
    server = serve(_env(rotation.pg, moto_endpoint, "none", SECRETBOOT_MAX_AGE="1"))
    status, before = server.get("/db/")
    assert status == 200
    assert rotation.pg.sessions(ROLE) == [before["backend"]]  # persistent: stays open
    rotation.rotate()

    _wait_for(lambda: REFRESHED.search(server.log()), "a refresh by age", server)
    after = _served(server, server.get("/db/"))
    assert after["backend"] != before["backend"]  # the old session was closed, a new one opened
    assert before["backend"] not in rotation.pg.sessions(ROLE)
    assert rotation.auth_failures() == 0  # the new password was there before the query
    assert RETRIED not in server.log()
    _assert_no_password(rotation, server.log())


def test_preload_two_workers_each_retries_its_refused_login(
    rotation: Rotation, moto_endpoint: str, serve: Any
) -> None:
    env = _env(rotation.pg, moto_endpoint, "0", SECRETBOOT_REFRESH_MIN_INTERVAL="1")
    server = serve(env, workers=2, preload=True)
    _assert_served(server.db_from_each_worker(2), 2, server)
    time.sleep(1.1)  # past the pacing interval since the master's start-up resolution
    rotation.rotate()

    answers = server.db_from_each_worker(2)
    _assert_served(answers, 2, server)
    assert rotation.auth_failures() == 2  # one per worker: each refreshed for itself
    retried = {int(pid) for pid in re.findall(r"pid=(\d+) WARNING [^\n]*" + re.escape(RETRIED), server.log())}
    assert retried == {body["worker"] for _, body in answers}
    _assert_no_password(rotation, server.log())


def test_preload_two_workers_each_refreshes_by_age(
    rotation: Rotation, moto_endpoint: str, serve: Any
) -> None:
    server = serve(_env(rotation.pg, moto_endpoint, "none", SECRETBOOT_MAX_AGE="1"), workers=2, preload=True)
    before = server.db_from_each_worker(2)
    _assert_served(before, 2, server)
    workers = {body["worker"] for _, body in before}
    mark = len(server.log())
    rotation.rotate()

    def refreshed_in_every_worker() -> bool:
        return workers <= {int(pid) for pid in REFRESHED.findall(server.log()[mark:])}

    _wait_for(refreshed_in_every_worker, "a refresh by age in each worker", server)
    after = server.db_from_each_worker(2)
    _assert_served(after, 2, server)
    assert {body["worker"] for _, body in after} == workers  # the same workers, not restarted
    assert not {body["backend"] for _, body in before} & {body["backend"] for _, body in after}
    assert rotation.auth_failures() == 0
    _assert_no_password(rotation, server.log())


# -- the settings a refresh updates, without a database server ----------------------------------

_FOLLOW = """
import json, logging, os, sys
import boto3, django
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
django.setup()
from django.conf import settings
from django.db import connections
import secretboot
ssm = boto3.client("ssm", region_name=os.environ["AWS_REGION"])
new = json.loads(sys.stdin.read())
for name, value in new.items():
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
changed = secretboot.refresh_now()
print(json.dumps({
    "changed": sorted(changed),
    "key": settings.SECRET_KEY,
    "fallbacks": settings.SECRET_KEY_FALLBACKS,
    "password": settings.DATABASES["default"]["PASSWORD"],
    "connection": connections["default"].settings_dict["PASSWORD"],
}))
"""


def _refresh_env(endpoint: str, **extra: str) -> tuple[dict[str, str], Any]:
    moto_api(endpoint, "reset")
    ssm: Any = client(endpoint, "ssm")
    env = _env_base(endpoint)
    for variable, name in (
        ("SECRET_KEY", "/demo/key"),
        ("SECRET_KEY_FALLBACK", "/demo/old"),
        ("DB_PASSWORD", "/demo/db"),
    ):
        ssm.put_parameter(Name=name, Value=secrets.token_urlsafe(24), Type="SecureString")
        env[variable] = f"ssm:{name}"
    env.update(DJANGO_SETTINGS_MODULE="demo.settings_refresh", SECRETBOOT_REFRESH_MIN_INTERVAL="0", **extra)
    return env, ssm


def _env_base(endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECRETBOOT_", "DJANGO_", "PG"))
        and not k.lower().endswith("_proxy")
        and not is_reference(v)
    }
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION, PYTHONPATH=str(ROOT), **CREDENTIALS)
    return env


def test_a_refresh_updates_secret_key_its_fallbacks_and_the_database_password(moto_endpoint: str) -> None:
    env, _ = _refresh_env(moto_endpoint)
    new = {name: secrets.token_urlsafe(24) for name in ("/demo/key", "/demo/old", "/demo/db")}
    done = subprocess.run(
        [sys.executable, "-c", _FOLLOW],
        cwd=PROJECT,
        env=env,
        input=json.dumps(new),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "changed": ["DB_PASSWORD", "SECRET_KEY", "SECRET_KEY_FALLBACK"],
        "key": new["/demo/key"],
        "fallbacks": [new["/demo/old"]],
        "password": new["/demo/db"],
        "connection": new["/demo/db"],
    }
    assert "secretboot refreshed DB_PASSWORD, SECRET_KEY, SECRET_KEY_FALLBACK" in done.stderr
    for value in new.values():
        assert value not in done.stderr


def test_a_refresh_that_changes_nothing_followed_leaves_the_settings_alone(moto_endpoint: str) -> None:
    env, ssm = _refresh_env(moto_endpoint)
    done = subprocess.run(
        [sys.executable, "-c", _FOLLOW],
        cwd=PROJECT,
        env=env,
        input="{}",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["changed"] == []
    assert seen["key"] == ssm.get_parameter(Name="/demo/key", WithDecryption=True)["Parameter"]["Value"]
    assert "secretboot refreshed" not in done.stderr


def test_check_refuses_a_declaration_that_does_not_match_the_setting(moto_endpoint: str) -> None:
    env, ssm = _refresh_env(moto_endpoint, FOLLOW_KEY="DB_PASSWORD")  # SECRET_KEY "follows" the wrong one
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert (
        "(secretboot.E002) SECRET_KEY does not hold the value of the variable SECRETBOOT_REFRESH"
        in done.stderr
    )
    assert "DATABASES" not in done.stderr.split("secretboot.E002", 1)[1].split("\n", 1)[0]
    for name in ("/demo/key", "/demo/db"):
        assert ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"] not in done.stderr

    env.pop("FOLLOW_KEY")
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, "E002" in done.stderr) == (0, False), done.stderr


_REFUSED = """
import json, os, sys
import django
from django.conf import settings
settings.configure(
    DATABASES={"default": {
        "ENGINE": "secretboot.contrib.django.postgresql", "HOST": os.environ["DB_HOST"],
        "PORT": os.environ["DB_PORT"], "NAME": "app", "USER": "app", "PASSWORD": os.environ["WRONG"],
    }},
    SECRETBOOT_REFRESH={"DATABASES": {"default": "DB_PASSWORD"}},
)
django.setup()
from django.db import OperationalError, connection
try:
    connection.ensure_connection()
except OperationalError as exc:
    cause = exc.__cause__
    print(json.dumps({"pgconn": repr(getattr(cause, "pgconn", None)), "cause": type(cause).__name__}))
"""


def test_a_refused_login_leaves_no_password_on_the_error(rotation: Rotation, moto_endpoint: str) -> None:
    """psycopg keeps the refused connection, password included, on its error: the backend drops it."""
    wrong = secrets.token_urlsafe(24)
    env = _env(rotation.pg, moto_endpoint, "0", WRONG=wrong)
    done = subprocess.run(
        [sys.executable, "-c", _REFUSED], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pgconn": "None", "cause": "OperationalError"}
    assert "refreshing it failed: SecretbootError" in done.stderr  # never booted: nothing to refresh
    assert wrong not in done.stdout + done.stderr


def test_the_docs_settings_declare_what_the_tested_settings_declare() -> None:
    import ast

    from secretboot.contrib.django._refresh import read_setting

    docs = (ROOT / "docs" / "django.md").read_text()
    block = docs.split("<!-- django-refresh -->\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(block)
    assigned = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    declared = ast.literal_eval(assigned["SECRETBOOT_REFRESH"])
    assert read_setting(declared) == read_setting(
        {
            "SECRET_KEY": "SECRET_KEY",
            "SECRET_KEY_FALLBACKS": ["SECRET_KEY_FALLBACK"],
            "DATABASES": {"default": "DB_PASSWORD"},
        }
    )
    assert '"ENGINE": "secretboot.contrib.django.postgresql"' in block
    settings = (PROJECT / "demo" / "settings_refresh.py").read_text()
    assert '"SECRET_KEY_FALLBACKS": ["SECRET_KEY_FALLBACK"],' in settings
    assert '"DATABASES": {"default": "DB_PASSWORD"},' in settings
    assert (
        '"ENGINE": "secretboot.contrib.django.postgresql"'
        in (PROJECT / "demo" / "settings_postgres.py").read_text()
    )
