"""Cold start per credential source: the fast transport against boto3, side by side in one run.

    python bench/credentials.py              # 7 rounds (about a minute on 2 cores)
    python bench/credentials.py --quick      # 2 rounds (about 20 seconds)
    python bench/credentials.py --runs 5 --local-ms 1 --json /tmp/cred.json --markdown /tmp/cred.md

Starts moto's server on 127.0.0.1 behind the delay proxy (tests/awsproxy.py, ``--latency-ms``,
default 10 ms per request, as bench/run.py), creates bench/run.py's N=20 secret set (a quarter
KMS ciphertext, the rest SSM SecureStrings) and one assumed role's keys (moto's STS,
tests/credservers.moto_credentials). Then the same application (bench/contenders/secretboot_app.py)
starts cold once per credential source, each time with only that source configured:

- ``env``: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
- ``shared-credentials-file``: AWS_PROFILE's section in ~/.aws/credentials;
- ``config-file``: AWS_PROFILE's section in ~/.aws/config;
- ``web-identity``: AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN; STS is moto's, behind the
  same proxy and latency as KMS and SSM (one more AWS round trip);
- ``container-full-uri``: AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN
  (tests/credservers.ContainerCredentialsServer on 127.0.0.1);
- ``container-relative-uri``: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which both transports send
  to 169.254.170.2:80. Measured only inside a private network namespace (see below), where
  that address is on the namespace's own loopback and the same server class listens on it:
  neither transport's code is patched. Left out (and said so) where no namespace can be made;
- ``imds-v2``: AWS_EC2_METADATA_SERVICE_ENDPOINT at tests/credservers.ImdsServer (token PUT,
  role name, credentials: three local round trips).

Each source runs twice, the fast transport (``SECRETBOOT_TRANSPORT=fast``, so it can never fall
back to boto3 unnoticed) and ``SECRETBOOT_TRANSPORT=boto3``, next to a bare interpreter; all the
contenders alternate round-robin, the order rotating every round, after one warm-up round.
Medians are reported. The credential servers are local services in reality (the instance
metadata service, the ECS/EKS/Lambda container agent: well under a millisecond), so they get
``--local-ms`` (default 1 ms) per request, not the AWS latency.

Then SnapStart (unless ``--no-snapstart``), fast against boto3, alternating: awslambdaric runs
bench/contenders/snapstart_app.py on tests/lambda_runtime.py's Runtime API emulator with the
snapshot held, its credentials from the container endpoint (full URI and token, as Lambda gives
SnapStart functions) and its ``kms:`` values bound to ``LambdaFunctionName`` as Lambda's are.
Timed from releasing the restore to the first ``/invocation/next`` (secretboot's after-restore
hook has fetched the credentials again and resolved every secret again) and to the first
invocation's answer, whose checksum is checked. The credential fetches before and after the
restore are counted: one each.

Every child's output is checked against the plaintexts, and the requests each credential
server and the proxy saw are checked against the source: the source's own server was asked,
no other was, and STS only for web identity. AWS_EC2_METADATA_DISABLED=true is set in every
environment but the IMDS row's, whose endpoint is the local server. With ``--netns auto`` (the
default) the whole run re-executes itself in a new network namespace (``unshare --net``, or
``--user --map-root-user --net`` when not root) holding only a loopback with 127.0.0.1 and
169.254.170.2: nothing in it can reach the host's 169.254.169.254 or 169.254.170.2 at all.
Every child is killed by PID if it runs past ``--child-timeout``; every server is stopped on
the way out. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import SecretSet, Spawner

    from tests.awsproxy import AwsProxy
    from tests.credservers import ContainerCredentialsServer, ImdsServer

REPO = Path(__file__).resolve().parent.parent
CONTENDERS = REPO / "bench" / "contenders"
APP = CONTENDERS / "secretboot_app.py"
BARE = CONTENDERS / "bare.py"
REGION = "us-east-1"
SIZE = 20
LINK_LOCAL = "169.254.170.2"  # _credsources.CONTAINER_HOST and botocore's ContainerMetadataFetcher
CONTAINER_TOKEN = "Bearer secretboot-bench-token"  # noqa: S105 (a made-up local token)
PROFILE = "bench"
FUNCTION = "secretboot-bench"  # the SnapStart function's name
IN_NETNS = "--in-netns"  # internal: set by the re-execution inside the namespace

# Issue 15's targets, reported (not asserted) at the end of a run.
TARGET_VS_ENV = 1.15  # each fast source's time over bare / the env source's (fast) over bare
TARGET_VS_BOTO3 = 1 / 3  # each fast source's time over bare / boto3's for the same source


@dataclass(frozen=True)
class Source:
    name: str
    method: str  # botocore's name for the provider (Credentials.method)
    server: str | None = None  # the local server that must see requests: "container", "relative", "imds"
    sts: bool = False  # the source asks STS (through the proxy) for its keys


SOURCES = (
    Source("env", "env"),
    Source("shared-credentials-file", "shared-credentials-file"),
    Source("config-file", "config-file"),
    Source("web-identity", "assume-role-with-web-identity", sts=True),
    Source("container-full-uri", "container-role", server="container"),
    Source("container-relative-uri", "container-role", server="relative"),
    Source("imds-v2", "iam-role", server="imds"),
)
TRANSPORTS = ("fast", "boto3")


@dataclass(frozen=True)
class Contender:
    name: str
    source: str  # "" for bare
    transport: str  # "" for bare

    @property
    def bare(self) -> bool:
        return not self.source


@dataclass
class Sample:
    contender: str
    round: int  # -1 for the warm-up
    ms: float
    maxrss_kib: int
    aws_calls: dict[str, int]
    local_calls: dict[str, int]


@dataclass
class Row:
    contender: str
    source: str
    transport: str
    runs: int
    median_ms: float
    iqr_ms: float  # the spread of the runs: third quartile minus first
    over_bare_ms: float
    vs_env: float | None  # over bare / env-fast's over bare
    vs_boto3: float | None  # fast rows: over bare / the same source's boto3 over bare
    peak_rss_mib: float
    aws_calls: int
    local_calls: int


@dataclass
class Restore:
    """One SnapStart restore: the runtime's snapshot released, then one invocation."""

    transport: str
    round: int  # -1 for the warm-up
    ready_ms: float  # restore released -> the first /invocation/next (after-restore hooks done)
    answered_ms: float  # restore released -> the first invocation answered
    init_fetches: int  # container-credential requests during INIT
    restore_fetches: int  # ... from the restore to the first answer
    aws_calls: int  # requests that reached the proxy from the restore to the first answer


@dataclass
class RestoreRow:
    transport: str
    runs: int
    ready_ms: float
    answered_ms: float
    vs_boto3: float | None  # fast rows: answered_ms / boto3's
    init_fetches: int
    restore_fetches: int
    aws_calls: int


@dataclass
class World:
    """What the children run against; ``servers`` by the names in ``Source.server``."""

    proxy: AwsProxy
    secret_set: SecretSet
    keys: dict[str, str]
    home: Path
    lambda_references: dict[str, str] = field(default_factory=dict)  # for the SnapStart function
    servers: dict[str, ContainerCredentialsServer | ImdsServer] = field(default_factory=dict)


# -- the sources' environments ----------------------------------------------------------------


def base_env(world: World, home: Path) -> dict[str, str]:
    """What every child gets: no AWS_/SECRETBOOT_ variable of ours, its own HOME."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": world.proxy.url,  # KMS, SSM and STS
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        **world.secret_set.references,
    }


def _profile_lines(keys: Mapping[str, str]) -> str:
    return (
        f"aws_access_key_id = {keys['AccessKeyId']}\n"
        f"aws_secret_access_key = {keys['SecretAccessKey']}\n"
        f"aws_session_token = {keys['Token']}\n"
    )


def source_env(world: World, source: Source) -> dict[str, str]:
    """The environment (and files under a home of its own) that configures ``source`` alone."""
    home = world.home / source.name
    home.mkdir(mode=0o700, exist_ok=True)
    env = base_env(world, home)
    keys = world.keys
    if source.name == "env":
        env["AWS_ACCESS_KEY_ID"] = keys["AccessKeyId"]
        env["AWS_SECRET_ACCESS_KEY"] = keys["SecretAccessKey"]
        env["AWS_SESSION_TOKEN"] = keys["Token"]
    elif source.name in ("shared-credentials-file", "config-file"):
        aws = home / ".aws"
        aws.mkdir(mode=0o700, exist_ok=True)
        if source.name == "shared-credentials-file":
            (aws / "credentials").write_text(f"[{PROFILE}]\n" + _profile_lines(keys))
        else:
            (aws / "config").write_text(f"[profile {PROFILE}]\n" + _profile_lines(keys))
        env["AWS_PROFILE"] = PROFILE
    elif source.name == "web-identity":
        token = home / "web-identity-token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.secretboot-bench.signature")
        env["AWS_WEB_IDENTITY_TOKEN_FILE"] = str(token)
        env["AWS_ROLE_ARN"] = keys["RoleArn"]
        env["AWS_ROLE_SESSION_NAME"] = "secretboot-bench"
    elif source.name == "container-full-uri":
        server = world.servers["container"]
        assert isinstance(server, _container_class())
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = server.full_uri
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = CONTAINER_TOKEN
    elif source.name == "container-relative-uri":
        server = world.servers["relative"]
        assert isinstance(server, _container_class())
        env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] = server.relative_uri
    elif source.name == "imds-v2":
        server = world.servers["imds"]
        env.pop("AWS_EC2_METADATA_DISABLED")  # the one row that asks IMDS: the local server
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = server.base_url + "/"
    else:  # pragma: no cover (SOURCES and this function are kept together)
        raise AssertionError(source.name)
    return env


def _container_class() -> type[ContainerCredentialsServer]:
    from tests.credservers import ContainerCredentialsServer

    return ContainerCredentialsServer


def link_local_container_server(keys: Mapping[str, str], delay: float) -> ContainerCredentialsServer:
    """tests/credservers' container server, listening on 169.254.170.2:80 instead of 127.0.0.1.

    Only inside this run's own network namespace, where that address is on the loopback: the
    relative URI then reaches it exactly as it would reach the ECS agent, unpatched.
    """
    from http.server import ThreadingHTTPServer

    from tests import credservers

    class _Bind(ThreadingHTTPServer):
        def __init__(self, _address: Any, handler: Any) -> None:
            super().__init__((LINK_LOCAL, 80), handler)

    class _LinkLocalServer(credservers._Server, _Bind):  # KeepAliveServer's super() is _Bind
        pass

    class LinkLocalContainerServer(credservers.ContainerCredentialsServer):
        name = "container-credentials-link-local"

        def start(self) -> None:
            server = _LinkLocalServer(credservers._Handler)
            server.owner = self
            self._server = server
            server.start(self.name, poll_interval=0.05)

    return LinkLocalContainerServer(keys, delay=delay)


# -- the network namespace --------------------------------------------------------------------


def _unshare_flags() -> list[str] | None:
    """unshare's flags for a new network namespace here, or None when none can be made."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        return None
    choices = [["--net"]] if os.geteuid() == 0 else []
    choices.append(["--user", "--map-root-user", "--net"])
    for flags in choices:
        probe = subprocess.run(  # noqa: S603 (fixed arguments)
            [unshare, *flags, "--", "true"], capture_output=True, timeout=10, check=False
        )
        if probe.returncode == 0:
            return flags
    return None


def reexec_in_netns(argv: Sequence[str]) -> None:
    """Replace this process by itself inside a new network namespace (returns if it cannot)."""
    flags = _unshare_flags()
    if flags is None:
        _progress("no network namespace can be made here: container-relative-uri is left out")
        return
    unshare = shutil.which("unshare")
    assert unshare is not None
    command = [unshare, *flags, "--", sys.executable, str(Path(__file__).resolve()), *argv, IN_NETNS]
    os.execv(unshare, command)  # noqa: S606 (our own script, fixed arguments)


def set_up_netns() -> str | None:
    """Inside the namespace: loopback up, 169.254.170.2 on it. None, or why it failed."""
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{LINK_LOCAL}/32", "dev", "lo"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()}"
    return None


# -- children, bounded ------------------------------------------------------------------------


class Launcher:
    """bench/run.py's Spawner (children started from a small process), with a time limit:
    a child still running after ``timeout`` seconds is killed by its PID (the launcher's own
    child, read from /proc), and the run stops."""

    def __init__(self, spawner: Spawner, timeout: float) -> None:
        self._spawner = spawner
        self._timeout = timeout
        self.killed = False

    def _kill_children(self) -> None:
        launcher = self._spawner._process.pid
        try:
            children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
        except OSError:
            return
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
                self.killed = True

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
        timer = threading.Timer(self._timeout, self._kill_children)
        timer.daemon = True
        timer.start()
        try:
            return self._spawner.run(argv, env)
        finally:
            timer.cancel()


def build_contenders(sources: Sequence[Source]) -> list[Contender]:
    contenders = [Contender("bare", "", "")]
    for source in sources:
        contenders += [
            Contender(f"{source.name}/{transport}", source.name, transport) for transport in TRANSPORTS
        ]
    return contenders


def run_one(
    launcher: Launcher, world: World, contender: Contender, envs: Mapping[str, dict[str, str]]
) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    world.proxy.reset_counts()
    for server in world.servers.values():
        server.reset_counts()
    if contender.bare:
        argv, env = [sys.executable, str(BARE)], base_env(world, world.home)
    else:
        env = {**envs[contender.source], "SECRETBOOT_TRANSPORT": contender.transport}
        argv = [sys.executable, str(APP)]
    result = launcher.run(argv, env)
    aws = world.proxy.counts()
    local = {name: server.count for name, server in world.servers.items() if server.count}
    output = result["stdout"].strip()
    wanted = "0 -" if contender.bare else world.secret_set.expected
    problem = None
    if launcher.killed:
        problem = "killed after the time limit"
    elif result["status"] != 0 or output != wanted:
        problem = f"exit {result['status']}, printed {output!r}, expected {wanted!r}"
    elif not contender.bare:
        problem = _wrong_source(next(s for s in SOURCES if s.name == contender.source), aws, local)
    if problem is not None:
        # The child's stderr holds secretboot's messages: variable names and reasons, never values.
        raise SystemExit(f"{contender.name} failed: {problem}\n" + result["stderr"][-3000:])
    return result, aws, local


def _wrong_source(source: Source, aws: Mapping[str, int], local: Mapping[str, int]) -> str | None:
    """Why the requests seen do not fit ``source`` alone, or None."""
    others = sorted(name for name in local if name != source.server)
    if others:
        return f"credential servers asked that should not be: {', '.join(others)}"
    if source.server is not None and not local.get(source.server):
        return f"the {source.server} server was never asked"
    asked_sts = aws.get("", 0) > 0  # STS's Query API carries no X-Amz-Target
    if asked_sts != source.sts:
        return "STS was asked" if asked_sts else "STS was never asked"
    return None


def run_rounds(
    launcher: Launcher, world: World, contenders: Sequence[Contender], sources: Sequence[Source], runs: int
) -> list[Sample]:
    envs = {source.name: source_env(world, source) for source in sources}
    samples = []
    for round_ in range(-1, runs):
        shift = max(round_, 0) % len(contenders)
        order = list(contenders[shift:]) + list(contenders[:shift])
        for contender in order:
            result, aws, local = run_one(launcher, world, contender, envs)
            samples.append(Sample(contender.name, round_, result["ms"], result["maxrss_kib"], aws, local))
        _progress("warm-up done" if round_ < 0 else f"round {round_ + 1}/{runs} done")
    return samples


# -- SnapStart --------------------------------------------------------------------------------


def snapstart_once(world: World, transport: str, round_: int, timeout: float) -> Restore:
    """One function through INIT, the snapshot and the restore (tests/lambda_runtime.py), its
    credentials from the container endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI and token, as
    Lambda gives SnapStart functions), then one invocation whose answer is checked."""
    from tests.lambda_runtime import RuntimeEmulator, start_runtime

    server = world.servers["container"]
    assert isinstance(server, _container_class())
    home = world.home / "snapstart"
    home.mkdir(mode=0o700, exist_ok=True)
    env = {
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(CONTENDERS), str(REPO)]),
        "AWS_ENDPOINT_URL": world.proxy.url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.full_uri,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN,
        "SECRETBOOT_TRANSPORT": transport,
        **world.lambda_references,
    }
    with RuntimeEmulator(function_name=FUNCTION, region=REGION, hold_restore=True) as emulator:
        server.reset_counts()
        runtime = start_runtime(
            emulator, "snapstart_app.handler", env=env, snap_start=True, task_root=CONTENDERS
        )
        try:
            emulator.wait_for_restore_next(timeout)  # INIT and the before-snapshot hooks are done
            init_fetches = server.count
            world.proxy.reset_counts()
            server.reset_counts()
            released = time.monotonic()
            emulator.release_restore()
            ready = emulator.wait_for_next(timeout)
            status, answer = emulator.invoke({"bench": "first after restore"}, timeout)
            answered = time.monotonic()
            restore_fetches = server.count
            aws_calls = sum(world.proxy.counts().values())
        except (TimeoutError, RuntimeError) as exc:
            runtime.stop()
            raise SystemExit(f"snapstart/{transport} failed: {exc}\n{runtime.output[-3000:]}") from None
        finally:
            runtime.stop()
    if status != "ok" or answer.get("line") != world.secret_set.expected:
        raise SystemExit(f"snapstart/{transport} answered {status}: {answer!r}\n{runtime.output[-3000:]}")
    return Restore(
        transport,
        round_,
        (ready - released) * 1000,
        (answered - released) * 1000,
        init_fetches,
        restore_fetches,
        aws_calls,
    )


def lambda_references(moto_url: str, secret_set: SecretSet) -> dict[str, str]:
    """The secret set as a Lambda function holds it: each ``kms:`` plaintext encrypted under
    ``LambdaFunctionName`` (what the console and ``secretboot migrate`` bind), so the function
    decrypts each once, with the context secretboot tries first inside Lambda."""
    import base64

    from tests.localaws import client

    kms = client(moto_url, "kms")  # straight to moto: set-up is neither delayed nor counted
    key_id = kms.create_key(Description="secretboot SnapStart benchmark")["KeyMetadata"]["KeyId"]
    context = {"LambdaFunctionName": FUNCTION}
    references = dict(secret_set.references)
    for variable, reference in secret_set.references.items():
        if reference.startswith("kms:"):
            plaintext = secret_set.plaintexts[variable].encode()
            blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext, EncryptionContext=context)["CiphertextBlob"]
            references[variable] = "kms:" + base64.b64encode(blob).decode()
    return references


def run_snapstart(world: World, runs: int, timeout: float) -> list[Restore]:
    restores = []
    for round_ in range(-1, runs):
        order = TRANSPORTS if round_ % 2 else TRANSPORTS[::-1]
        for transport in order:
            restores.append(snapstart_once(world, transport, round_, timeout))
        _progress("SnapStart warm-up done" if round_ < 0 else f"SnapStart round {round_ + 1}/{runs} done")
    return restores


def summarize_restores(restores: Sequence[Restore]) -> list[RestoreRow]:
    timed = [r for r in restores if r.round >= 0]
    rows = []
    for transport in TRANSPORTS:
        mine = [r for r in timed if r.transport == transport]
        rows.append(
            RestoreRow(
                transport=transport,
                runs=len(mine),
                ready_ms=statistics.median(r.ready_ms for r in mine),
                answered_ms=statistics.median(r.answered_ms for r in mine),
                vs_boto3=None,
                init_fetches=round(statistics.median(r.init_fetches for r in mine)),
                restore_fetches=round(statistics.median(r.restore_fetches for r in mine)),
                aws_calls=round(statistics.median(r.aws_calls for r in mine)),
            )
        )
    boto3 = rows[-1].answered_ms
    rows[0].vs_boto3 = rows[0].answered_ms / boto3 if boto3 > 0 else None
    return rows


RESTORE_HEADERS = (
    "SnapStart",
    "restore to ready ms",
    "restore to 1st answer ms",
    "fast/boto3",
    "INIT cred fetches",
    "restore cred fetches",
    "AWS calls",
)


def _restore_cells(row: RestoreRow) -> tuple[str, ...]:
    return (
        row.transport,
        f"{row.ready_ms:.1f}",
        f"{row.answered_ms:.1f}",
        "-" if row.vs_boto3 is None else f"{row.vs_boto3:.2f}",
        str(row.init_fetches),
        str(row.restore_fetches),
        str(row.aws_calls),
    )


# -- figures ----------------------------------------------------------------------------------


def summarize(samples: Sequence[Sample], contenders: Sequence[Contender]) -> list[Row]:
    timed = [s for s in samples if s.round >= 0]
    mine = {c.name: [s for s in timed if s.contender == c.name] for c in contenders}
    medians = {name: statistics.median(s.ms for s in group) for name, group in mine.items()}
    floor = medians["bare"]
    over = {name: ms - floor for name, ms in medians.items()}
    env_over = over.get("env/fast")
    rows = []
    for c in contenders:
        vs_env = vs_boto3 = None
        if not c.bare and env_over and env_over > 0:
            vs_env = over[c.name] / env_over
        boto3_over = over.get(f"{c.source}/boto3")
        if c.transport == "fast" and boto3_over and boto3_over > 0:
            vs_boto3 = over[c.name] / boto3_over
        group = mine[c.name]
        rows.append(
            Row(
                contender=c.name,
                source=c.source,
                transport=c.transport,
                runs=len(group),
                median_ms=medians[c.name],
                iqr_ms=_iqr([s.ms for s in group]),
                over_bare_ms=over[c.name],
                vs_env=vs_env,
                vs_boto3=vs_boto3,
                peak_rss_mib=statistics.median(s.maxrss_kib for s in group) / 1024,
                aws_calls=round(statistics.median(sum(s.aws_calls.values()) for s in group)),
                local_calls=round(statistics.median(sum(s.local_calls.values()) for s in group)),
            )
        )
    return rows


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def targets(rows: Sequence[Row]) -> list[tuple[str, str, str, bool | None]]:
    """(what, value, target, met) for each fast source; met None when a figure is missing."""
    lines: list[tuple[str, str, str, bool | None]] = []
    for row in rows:
        if row.transport != "fast":
            continue
        if row.source != "env":
            value = "n/a" if row.vs_env is None else f"{row.vs_env:.2f}"
            met = None if row.vs_env is None else row.vs_env <= TARGET_VS_ENV
            lines.append(
                (f"{row.source}: fast over bare / env fast over bare", value, f"<= {TARGET_VS_ENV}", met)
            )
        value = "n/a" if row.vs_boto3 is None else f"{row.vs_boto3:.2f}"
        met = None if row.vs_boto3 is None else row.vs_boto3 <= TARGET_VS_BOTO3
        lines.append((f"{row.source}: fast over bare / boto3 over bare", value, "<= 1/3 (0.33)", met))
    return lines


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


HEADERS = (
    "contender",
    "median ms",
    "IQR ms",
    "over bare ms",
    "vs env fast",
    "fast/boto3",
    "peak RSS MiB",
    "AWS calls",
    "local calls",
)


def _cells(row: Row) -> tuple[str, ...]:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        row.contender,
        f"{row.median_ms:.1f}",
        f"{row.iqr_ms:.0f}",
        f"{row.over_bare_ms:.1f}",
        ratio(row.vs_env),
        ratio(row.vs_boto3),
        f"{row.peak_rss_mib:.1f}",
        str(row.aws_calls),
        str(row.local_calls),
    )


def text_report(
    rows: Sequence[Row],
    target_lines: Sequence[tuple[str, str, str, bool | None]],
    meta: Mapping[str, Any],
    restores: Sequence[RestoreRow] = (),
) -> str:
    out = [
        f"\nN={SIZE} secrets, {meta['latency_ms']:g} ms per AWS request, {meta['local_ms']:g} ms per "
        f"credential-server request ({rows[0].runs} runs each, medians)",
        f"{HEADERS[0]:<32}" + "".join(f"{h:>14}" for h in HEADERS[1:]),
    ]
    for row in rows:
        cells = _cells(row)
        out.append(f"{cells[0]:<32}" + "".join(f"{c:>14}" for c in cells[1:]))
    if meta["left_out"]:
        out.append(f"left out: container-relative-uri ({meta['left_out']})")
    if restores:
        out.append(
            f"\nSnapStart: restore to the first invocation, re-resolving through container credentials "
            f"({restores[0].runs} runs each, medians)"
        )
        out.append(f"{RESTORE_HEADERS[0]:<12}" + "".join(f"{h:>26}" for h in RESTORE_HEADERS[1:]))
        for restore in restores:
            cells = _restore_cells(restore)
            out.append(f"{cells[0]:<12}" + "".join(f"{c:>26}" for c in cells[1:]))
    out.append("\nTargets (issue 15)")
    for what, value, target, met in target_lines:
        out.append(f"  {what}: {value}  (target {target}: {_verdict(met)})")
    return "\n".join(out)


def markdown_report(
    rows: Sequence[Row],
    target_lines: Sequence[tuple[str, str, str, bool | None]],
    meta: Mapping[str, Any],
    restores: Sequence[RestoreRow] = (),
) -> str:
    out = [
        "# secretboot cold start per credential source",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, commit {meta['commit']})",
        "",
        f"Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"N={SIZE} secrets, {meta['latency_ms']:g} ms added to every AWS request (KMS, SSM, STS) by "
        f"the proxy in front of moto, {meta['local_ms']:g} ms to every credential-server request; "
        f"{rows[0].runs} runs each, medians of fresh processes, spawn to exit. *over bare* subtracts "
        "the bare interpreter's median; *IQR* is the runs' interquartile range (their spread, from "
        "the other work on the machine); *vs env fast* divides by the environment-keys fast path's "
        "time over bare; *fast/boto3* divides a fast row's time over bare by boto3's for the same "
        "source; *AWS calls* reached the proxy, *local calls* a credential server, per run. "
        + ("Run in its own network namespace." if meta["netns"] else "Run without a network namespace."),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
    ]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    if meta["left_out"]:
        out += ["", f"Left out: container-relative-uri ({meta['left_out']})."]
    if restores:
        out += [
            "",
            "SnapStart (tests/lambda_runtime.py's emulator, awslambdaric with the snapshot held): from "
            "the restore's release to the first `/invocation/next` (secretboot's after-restore hook "
            "re-fetched the container credentials and resolved the secrets again) and to the first "
            f"invocation's checked answer; {restores[0].runs} runs each, medians.",
            "",
            "| " + " | ".join(RESTORE_HEADERS) + " |",
            "|---|" + "---:|" * (len(RESTORE_HEADERS) - 1),
        ]
        out += ["| " + " | ".join(_restore_cells(row)) + " |" for row in restores]
    out += ["", "| target (issue 15) | value | target | |", "|---|---:|---|---|"]
    out += [f"| {what} | {value} | {target} | {_verdict(met)} |" for what, value, target, met in target_lines]
    return "\n".join(out) + "\n"


def metadata(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from run import git_commit

    versions = {}
    for package in ("boto3", "botocore", "moto"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    return {
        "command": "python bench/credentials.py " + " ".join(a for a in argv if a != IN_NETNS),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "runs": args.runs,
        "latency_ms": args.latency_ms,
        "local_ms": args.local_ms,
        "netns": args.in_netns,
        "left_out": "",
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    parser.add_argument("--runs", type=int, help="timed rounds (default 7; quick 2)")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="ms added to every AWS request (10)")
    parser.add_argument(
        "--local-ms", type=float, default=1.0, help="ms added to every credential-server request (1)"
    )
    parser.add_argument(
        "--netns",
        choices=("auto", "off"),
        default="auto",
        help="auto: run in a new network namespace where one can be made (needed for the relative URI)",
    )
    parser.add_argument(
        "--child-timeout", type=float, default=60.0, help="seconds before a child is killed (60)"
    )
    parser.add_argument(
        "--sources",
        type=lambda text: [name for name in text.split(",") if name],
        help="sources to run (env is always included: the ratios need it); default all: "
        + ",".join(s.name for s in SOURCES),
    )
    parser.add_argument("--no-snapstart", action="store_true", help="leave out the SnapStart restores")
    parser.add_argument("--json", metavar="PATH", help="write every raw sample and the summary")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    parser.add_argument(IN_NETNS, dest="in_netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 7)
    unknown = set(args.sources or ()) - {s.name for s in SOURCES}
    if unknown:
        parser.error(f"unknown sources: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.latency_ms < 0 or args.local_ms < 0 or args.child_timeout <= 0:
        parser.error("runs at least 1, latencies at least 0, a positive child timeout")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up: servers stopped


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.netns == "auto" and not args.in_netns:
        reexec_in_netns(argv)  # does not return when it can
    for path in (REPO, REPO / "bench"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from run import Spawner, create_secrets, make_proxy

    from tests.credservers import ContainerCredentialsServer, ImdsServer, moto_credentials
    from tests.localaws import moto_server

    signal.signal(signal.SIGTERM, _terminate)
    meta = metadata(args, argv)
    left_out = (
        set_up_netns()
        if args.in_netns
        else "no network namespace: 169.254.170.2 cannot be made local honestly"
    )
    meta["left_out"] = left_out or ""
    wanted = set(args.sources or [s.name for s in SOURCES]) | {"env"}
    sources = [s for s in SOURCES if s.name in wanted and not (left_out and s.server == "relative")]
    contenders = build_contenders(sources)
    started = time.perf_counter()
    local = args.local_ms / 1000
    with contextlib.ExitStack() as cleanup:
        moto_url = cleanup.enter_context(moto_server())
        proxy = make_proxy(moto_url, replay=False)
        proxy.start()
        cleanup.callback(proxy.stop)
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="secretboot-credbench-")))
        spawner = Spawner(str(workdir))
        cleanup.callback(spawner.close)
        launcher = Launcher(spawner, args.child_timeout)

        _progress(f"moto at {moto_url}, proxy at {proxy.url}; creating secrets and a role")
        secret_set = create_secrets(moto_url, [SIZE])[SIZE]
        keys = moto_credentials(moto_url, role="secretboot-bench")
        home = workdir / "home"
        home.mkdir(mode=0o700)
        world = World(proxy, secret_set, keys, home)
        if not args.no_snapstart:
            world.lambda_references = lambda_references(moto_url, secret_set)
        servers: dict[str, Callable[[], Any]] = {
            "container": lambda: ContainerCredentialsServer(keys, token=CONTAINER_TOKEN, delay=local),
            "imds": lambda: ImdsServer(keys, delay=local),
        }
        if not left_out:
            servers["relative"] = lambda: link_local_container_server(keys, local)
        for name, make in servers.items():
            world.servers[name] = cleanup.enter_context(make())
        proxy.latency = args.latency_ms / 1000
        samples = run_rounds(launcher, world, contenders, sources, args.runs)
        restores = [] if args.no_snapstart else run_snapstart(world, args.runs, args.child_timeout)

    rows = summarize(samples, contenders)
    target_lines = targets(rows)
    restore_rows = summarize_restores(restores) if restores else []
    meta["seconds"] = round(time.perf_counter() - started, 1)
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']} commit {meta['commit']}; Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    )
    print("# in its own network namespace" if meta["netns"] else "# no network namespace")
    print(text_report(rows, target_lines, meta, restore_rows))
    print(f"\n# {meta['seconds']} s in all")
    if args.json:
        document = {
            "meta": meta,
            "samples": [asdict(s) for s in samples],
            "summary": [asdict(r) for r in rows],
            "snapstart_samples": [asdict(r) for r in restores],
            "snapstart": [asdict(r) for r in restore_rows],
            "targets": [{"measure": w, "value": v, "target": t, "met": m} for w, v, t, m in target_lines],
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(rows, target_lines, meta, restore_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
