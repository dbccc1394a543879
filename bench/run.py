"""Cold-start benchmark: secretboot against the usual ways of resolving secrets at start-up.

    python bench/run.py                      # the full run (a few minutes on 2 cores)
    python bench/run.py --quick              # a smoke run (under a minute)
    python bench/run.py --sizes 1,20,100 --latencies 0,10,50 --runs 7 \\
        --json /tmp/bench.json --plot /tmp/bench.png --markdown /tmp/bench.md
    python bench/run.py --https --cpu 1,0.5,0.25  # over TLS, each contender on a CPU share
    python bench/run.py --table                  # issue 16's table (N=20, 10 ms; about 2 minutes)

Starts moto's server on 127.0.0.1 behind a delay proxy (tests/awsproxy.py), creates one KMS
key and, for each size N, N secrets (a quarter KMS ciphertext, at least one; the rest SSM
SecureStrings), then times fresh processes of each contender (bench/contenders/), alternating
them round-robin and rotating the order every round. Every contender's output is checked
against the plaintexts created here; a mismatch stops the run.

Children are started and timed (spawn to exit, ``time.perf_counter``) by bench/_spawn.py, a
small launcher process, so that ``ru_maxrss`` from ``wait4`` (KiB, Linux) is the child's own
peak and not this process's (see that file); ``wait4`` also gives each child's CPU time (user
plus system, all threads), reported as *CPU ms*. With ``--replay`` the proxy answers repeated
requests itself instead of moto (see ``make_proxy``).

``--https``: contenders reach AWS through a TLS 1.3 front (tests/tlsfront.py) in front of the
delay proxy, at ``https://127.0.0.1:<port>``, its server certificate signed by a throwaway CA
made for the run. Every contender gets ``AWS_CA_BUNDLE`` = the system CA bundle plus that CA
(what a client on AWS loads is the whole system bundle), and verifies: boto3, Powertools and
secretboot honour the variable; stdlib_min loads it into one context. The proxy's latency
applies per request as before, and the front adds it once more per new connection, before the
handshake: TLS 1.3 costs one extra round trip (TCP's own handshake is not modelled, in either
mode). *handshakes* counts the TLS handshakes per run.

``--cpu 1,0.5,0.25``: each contender process runs in a cgroup v1 ``cpu`` group limited to that
share of one CPU (bench/cgroup.py: a 10 ms period, quota = share x period; 1 is one whole CPU,
``none`` no group at all); moto, the proxy and the front run unlimited in this process. The
child joins the group between fork and exec. The groups are removed at exit, on errors and on
Ctrl-C or SIGTERM too, and a busy loop checks each share before the run.

``--table``: issue 16's comparison, N=20 at 10 ms per request: plain HTTP, HTTPS, and HTTPS at
0.5 and 0.25 CPU (or the ``--cpu`` shares), each contender's time over bare divided by
stdlib_min's, next to wall and CPU milliseconds.

Needs the dev extra plus matplotlib (for --plot) and aws-lambda-powertools. Linux only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.cgroup import CpuLimits
    from tests.awsproxy import AwsProxy
    from tests.tlsfront import TlsFront

REPO = Path(__file__).resolve().parent.parent
CONTENDERS_DIR = REPO / "bench" / "contenders"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
PLOT_LATENCY_MS = 10.0

# Issue 3's targets, reported (not asserted) at the end of a run.
TARGET_VS_STDLIB = 1.3
TARGET_VS_THREADED = 0.33
TARGET_GROWTH = 1.5
TARGET_IMPORT_MS = 15.0
# Issue 16's, likewise.
TARGET_HTTPS_VS_STDLIB = 1.1
TARGET_HTTPS_QUARTER_VS_STDLIB = 1.15
TARGET_GROWTH_VS_STDLIB = 1.15
TARGET_RSS_VS_STDLIB = 1.1
TABLE_CONTENDERS = ("bare", "stdlib_min", "secretboot", "boto3_threaded", "powertools")
TARGET_PREFETCH_MS = 10.0
TABLE_SHARES = (0.5, 0.25)


@dataclass(frozen=True)
class Contender:
    name: str
    script: str
    env: Mapping[str, str] = field(default_factory=dict)
    checked: bool = True  # bare prints "0 -": nothing to check
    sealed: bool = False  # the same plaintexts as sealed values under one KMS data key
    # Over HTTPS, what the client trusts (see Network.env): "bundle" (AWS_CA_BUNDLE = the system
    # bundle + the throwaway CA), "aws-roots" (AWS_CA_BUNDLE = AWS's five roots + the CA) or
    # "directory" (no AWS_CA_BUNDLE; SSL_CERT_DIR = a hashed directory, looked up on demand).
    trust: str = "bundle"
    optional: bool = False  # run only when named (--contenders) or by --table


CONTENDERS: tuple[Contender, ...] = (
    Contender("bare", "bare.py", checked=False),
    Contender("boto3_loop", "boto3_loop.py"),
    Contender("boto3_threaded", "boto3_threaded.py"),
    Contender("powertools", "powertools.py"),
    Contender("stdlib_min", "stdlib_min.py"),
    Contender("secretboot", "secretboot_app.py"),
    Contender("secretboot-boto3", "secretboot_app.py", {"SECRETBOOT_TRANSPORT": "boto3"}),
    Contender("secretboot-sealed", "secretboot_app.py", sealed=True),
    # Issue 16, item 3: cheaper trust, verification intact (HTTPS conditions only).
    Contender("stdlib_min-awsroots", "stdlib_min.py", trust="aws-roots", optional=True),
    Contender("secretboot-awsroots", "secretboot_app.py", trust="aws-roots", optional=True),
    Contender("stdlib_min-ondemand", "stdlib_min.py", trust="directory", optional=True),
    Contender("secretboot-ondemand", "secretboot_app.py", trust="directory", optional=True),
    # Issue 16, item 4: a realistic handler module (Powertools + pydantic imports).
    Contender("handler-nosecrets", "handler_nosecrets.py", checked=False, optional=True),
    Contender("handler-bootstrap", "handler_bootstrap.py", optional=True),
    Contender("handler-prefetch", "handler_prefetch.py", optional=True),
    # The same handlers trusting what a standard AWS endpoint gets: OpenSSL's hashed directory,
    # looked up on demand (see docs/threat-model.md, TLS on the fast path).
    Contender("handler-bootstrap-ondemand", "handler_bootstrap.py", trust="directory", optional=True),
    Contender("handler-prefetch-ondemand", "handler_prefetch.py", trust="directory", optional=True),
)


TABLE_EXTRAS = tuple(c.name for c in CONTENDERS if c.optional)  # added to --table unless --quick


@dataclass(frozen=True, order=True)
class Condition:
    """How contenders reach AWS and how much CPU they get."""

    https: bool = False
    cpu: float | None = None  # a share of one CPU (cgroup quota); None: no limit

    @property
    def label(self) -> str:
        scheme = "HTTPS" if self.https else "plain HTTP"
        return scheme if self.cpu is None else f"{scheme}, {self.cpu:g} CPU"


PLAIN = Condition()


@dataclass(frozen=True)
class SecretSet:
    size: int
    references: dict[str, str]  # variable -> "kms:..." or "ssm:..."
    plaintexts: dict[str, str]  # variable -> plaintext
    sealed: dict[str, str]  # variable -> "sealed:...", and SECRETBOOT_DATA_KEY

    @property
    def expected(self) -> str:
        """The line every contender must print (see bench/contenders/_common.py)."""
        text = "\n".join(sorted(f"{name}={value}" for name, value in self.plaintexts.items()))
        return f"{len(self.plaintexts)} {hashlib.sha256(text.encode()).hexdigest()}"


@dataclass
class Sample:
    contender: str
    size: int
    latency_ms: float
    round: int  # -1 for the warm-up
    ms: float
    maxrss_kib: int
    calls: dict[str, int]
    https: bool = False
    cpu: float | None = None
    cpu_ms: float = 0.0
    handshakes: int = 0

    @property
    def condition(self) -> Condition:
        return Condition(self.https, self.cpu)


@dataclass
class Row:
    contender: str
    size: int
    latency_ms: float
    runs: int
    median_ms: float
    over_bare_ms: float
    vs_secretboot: float | None
    peak_rss_mib: float
    calls: int
    https: bool = False
    cpu: float | None = None
    vs_stdlib_min: float | None = None
    cpu_ms: float = 0.0  # median user + system time of the whole process
    over_bare_cpu_ms: float = 0.0
    handshakes: int = 0

    @property
    def condition(self) -> Condition:
        return Condition(self.https, self.cpu)


class Spawner:
    """Talks to bench/_spawn.py, which starts each child from a small process (see its docstring)."""

    def __init__(self, workdir: str) -> None:
        self._process = subprocess.Popen(  # noqa: S603 (our own script, fixed arguments)
            [sys.executable, "-S", "-I", str(REPO / "bench" / "_spawn.py"), os.path.join(workdir, "stderr")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )

    def run(self, argv: Sequence[str], env: Mapping[str, str], procs: str | None = None) -> dict[str, Any]:
        """Run one child; with ``procs`` (a cgroup's ``cgroup.procs``), inside that group."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        job: dict[str, Any] = {"argv": list(argv), "env": dict(env)}
        if procs is not None:
            job["cgroup"] = procs
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the launcher (bench/_spawn.py) exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


def create_secrets(moto_url: str, sizes: Iterable[int]) -> dict[int, SecretSet]:
    import boto3.session

    session = boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    # Straight to moto, not through the proxy: set-up is neither delayed nor counted.
    kms = session.client("kms", endpoint_url=moto_url)
    ssm = session.client("ssm", endpoint_url=moto_url)
    key_id = kms.create_key(Description="secretboot benchmark")["KeyMetadata"]["KeyId"]
    sets = {}
    for size in sizes:
        kms_count = max(1, size // 4)
        references: dict[str, str] = {}
        plaintexts: dict[str, str] = {}
        for i in range(size):
            plaintext = secrets.token_urlsafe(24)
            if i < kms_count:
                variable = f"BENCH_KMS_{i:03d}"
                blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext.encode())["CiphertextBlob"]
                references[variable] = "kms:" + base64.b64encode(blob).decode()
            else:
                variable = f"BENCH_SSM_{i:03d}"
                name = f"/bench/n{size}/secret-{i:03d}"
                ssm.put_parameter(Name=name, Value=plaintext, Type="SecureString")
                references[variable] = "ssm:" + name
            plaintexts[variable] = plaintext
        sets[size] = SecretSet(size, references, plaintexts, seal(kms, key_id, plaintexts))
    return sets


def seal(kms: Any, key_id: str, plaintexts: Mapping[str, str]) -> dict[str, str]:
    """The plaintexts sealed as ``secretboot seal`` does: one KMS data key for them all."""
    from secretboot import _envelope

    context = _envelope.data_key_context(None)  # the reserved pair, as seal wraps it
    answer = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=context)
    cipher = _envelope.aead(answer["Plaintext"])
    sealed = {name: str(_envelope.seal(cipher, name, value.encode())) for name, value in plaintexts.items()}
    sealed["SECRETBOOT_DATA_KEY"] = "kms:" + base64.b64encode(answer["CiphertextBlob"]).decode()
    return sealed


def base_env(endpoint: str) -> dict[str, str]:
    """A clean environment: nothing AWS_ or SECRETBOOT_ from ours leaks into the children."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.path.expanduser("~"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": str(REPO),  # import secretboot from this checkout
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }
    env.update(CREDENTIALS)
    return env


@dataclass
class Network:
    """Where contenders send requests: the delay proxy, and over HTTPS the TLS front before it."""

    proxy: AwsProxy
    front: TlsFront | None = None
    limits: CpuLimits | None = None

    def env(self, condition: Condition, trust: str = "bundle") -> dict[str, str]:
        """The variables that differ between conditions (and, over HTTPS, trust settings)."""
        if not condition.https:
            return {"AWS_ENDPOINT_URL": self.proxy.url}
        front = self.front
        assert front is not None
        if trust == "directory":
            # OpenSSL's default paths, redirected: no file, the hashed directory looked up on demand.
            return {
                "AWS_ENDPOINT_URL": front.url,
                "SSL_CERT_FILE": os.devnull,
                "SSL_CERT_DIR": front.hashed_dir,
            }
        bundle = front.aws_roots_file if trust == "aws-roots" else front.bundle_file
        return {"AWS_ENDPOINT_URL": front.url, "AWS_CA_BUNDLE": bundle}

    def procs(self, condition: Condition) -> str | None:
        if condition.cpu is None:
            return None
        assert self.limits is not None
        return self.limits.procs(condition.cpu)

    def set_latency(self, seconds: float) -> None:
        self.proxy.latency = seconds
        if self.front is not None:
            self.front.latency = seconds  # once more per new connection: the TLS handshake

    def reset_counts(self) -> None:
        self.proxy.reset_counts()
        if self.front is not None:
            self.front.reset_counts()

    def handshakes(self) -> int:
        return self.front.handshakes if self.front is not None else 0


def run_contender(
    spawner: Spawner,
    network: Network,
    contender: Contender,
    env: Mapping[str, str],
    expected: str,
    condition: Condition = PLAIN,
) -> tuple[dict[str, Any], dict[str, int]]:
    network.reset_counts()
    result = spawner.run(
        [sys.executable, str(CONTENDERS_DIR / contender.script)],
        {**env, **network.env(condition, contender.trust), **contender.env},
        network.procs(condition),
    )
    calls = network.proxy.counts()
    output = result["stdout"].strip()
    wanted = expected if contender.checked else "0 -"
    if result["status"] != 0 or output != wanted:
        raise SystemExit(
            f"{contender.name} failed (exit {result['status']}): printed {output!r}, expected {wanted!r}\n"
            + result["stderr"][-3000:]
        )
    return result, calls


def run_block(
    spawner: Spawner,
    network: Network,
    contenders: Sequence[Contender],
    secret_set: SecretSet,
    env: Mapping[str, str],
    latency_ms: float,
    runs: int,
    condition: Condition = PLAIN,
) -> list[Sample]:
    network.set_latency(latency_ms / 1000)
    samples = []
    expected = secret_set.expected
    # Trust variants differ from their base contender over HTTPS only.
    contenders = [c for c in contenders if condition.https or c.trust == "bundle"]
    for round_ in range(-1, runs):
        # Round -1 warms the filesystem cache and bytecode; each later round starts one further on.
        shift = max(round_, 0) % len(contenders)
        order = list(contenders[shift:]) + list(contenders[:shift])
        for contender in order:
            contender_env = {**env, **secret_set.sealed} if contender.sealed else env
            result, calls = run_contender(spawner, network, contender, contender_env, expected, condition)
            samples.append(
                Sample(
                    contender.name,
                    secret_set.size,
                    latency_ms,
                    round_,
                    result["ms"],
                    result["maxrss_kib"],
                    calls,
                    https=condition.https,
                    cpu=condition.cpu,
                    cpu_ms=result["cpu_ms"],
                    handshakes=network.handshakes(),
                )
            )
        step = "warm-up" if round_ < 0 else f"round {round_ + 1}/{runs}"
        _progress(f"N={secret_set.size}, {latency_ms:g} ms, {condition.label}: {step} done")
    return samples


def _ratio(over: float, reference: float | None, name: str) -> float | None:
    return over / reference if reference and reference > 0 and name != "bare" else None


def summarize(samples: Sequence[Sample], contenders: Sequence[Contender]) -> list[Row]:
    timed = [s for s in samples if s.round >= 0]
    # In run order: size, then latency, then condition.
    blocks = list(dict.fromkeys((s.size, s.latency_ms, s.condition) for s in timed))
    rows = []
    for size, latency, condition in blocks:
        block = [s for s in timed if (s.size, s.latency_ms, s.condition) == (size, latency, condition)]
        present = [c for c in contenders if any(s.contender == c.name for s in block)]
        medians = {c.name: statistics.median(s.ms for s in block if s.contender == c.name) for c in present}
        cpu = {c.name: statistics.median(s.cpu_ms for s in block if s.contender == c.name) for c in present}
        floor = medians["bare"]
        sb = medians.get("secretboot")
        sb_over = None if sb is None else sb - floor
        floor_client = medians.get("stdlib_min")
        floor_over = None if floor_client is None else floor_client - floor
        for c in present:
            mine = [s for s in block if s.contender == c.name]
            over = medians[c.name] - floor
            ratio = _ratio(over, sb_over, c.name)
            rows.append(
                Row(
                    contender=c.name,
                    size=size,
                    latency_ms=latency,
                    runs=len(mine),
                    median_ms=medians[c.name],
                    over_bare_ms=over,
                    vs_secretboot=ratio,
                    peak_rss_mib=statistics.median(s.maxrss_kib for s in mine) / 1024,
                    calls=round(statistics.median(sum(s.calls.values()) for s in mine)),
                    https=condition.https,
                    cpu=condition.cpu,
                    vs_stdlib_min=_ratio(over, floor_over, c.name),
                    cpu_ms=cpu[c.name],
                    over_bare_cpu_ms=cpu[c.name] - cpu["bare"],
                    handshakes=round(statistics.median(s.handshakes for s in mine)),
                )
            )
    return rows


def measure_import(
    spawner: Spawner, env: Mapping[str, str], rounds: int, importtime_runs: int
) -> dict[str, Any]:
    python = sys.executable
    bare = [python, "-c", "pass"]
    importing = [python, "-c", "import secretboot"]
    for argv in (bare, importing):  # warm-up
        _checked(spawner.run(argv, env))
    pairs = []
    for i in range(rounds):
        order = (bare, importing) if i % 2 == 0 else (importing, bare)
        times = {tuple(argv): _checked(spawner.run(argv, env))["ms"] for argv in order}
        pairs.append((times[tuple(bare)], times[tuple(importing)]))
    cumulative = []
    for _ in range(importtime_runs):
        stderr = _checked(spawner.run([python, "-X", "importtime", "-c", "import secretboot"], env))["stderr"]
        match = re.search(r"^import time:\s*\d+\s*\|\s*(\d+)\s*\|\s?secretboot\s*$", stderr, re.MULTILINE)
        if match is None:
            raise SystemExit("no 'secretboot' line in -X importtime output:\n" + stderr[-2000:])
        cumulative.append(int(match.group(1)))
    probe = (
        "import sys, secretboot; "
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore'})) or '-')"
    )
    heavy = _checked(spawner.run([python, "-c", probe], env))["stdout"].strip()
    return {
        "rounds": rounds,
        "bare_ms": [b for b, _ in pairs],
        "import_ms": [m for _, m in pairs],
        "median_bare_ms": statistics.median(b for b, _ in pairs),
        "median_import_ms": statistics.median(m for _, m in pairs),
        "median_over_bare_ms": statistics.median(m - b for b, m in pairs),
        "importtime_cumulative_us": cumulative,
        "median_importtime_us": statistics.median(cumulative),
        "aws_modules_imported": [] if heavy == "-" else heavy.split(","),
    }


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if result["status"] != 0:
        raise SystemExit("a child failed:\n" + result["stderr"][-3000:])
    return result


def targets(rows: Sequence[Row], imports: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value, target) lines for the issues' targets; n/a when the run lacks the data.

    Issue 3's lines use plain HTTP without a CPU limit when the run has it, else its first
    condition (named in the line); issue 16's use the HTTPS conditions.
    """
    conditions = list(dict.fromkeys(r.condition for r in rows))
    base = PLAIN if PLAIN in conditions or not conditions else conditions[0]
    over = {(r.contender, r.size, r.latency_ms, r.condition): r.over_bare_ms for r in rows}
    rss = {(r.contender, r.size, r.latency_ms, r.condition): r.peak_rss_mib for r in rows}

    def ratio(
        a: tuple[str, int, float], b: tuple[str, int, float], condition: Condition = base, table: Any = over
    ) -> str:
        ka, kb = (*a, condition), (*b, condition)
        if ka not in table or kb not in table or table[kb] <= 0:
            return "n/a"
        return f"{table[ka] / table[kb]:.2f}"

    def growth(condition: Condition) -> str:
        mine, floor = (
            ratio(("secretboot", 100, lat), ("secretboot", 20, lat), condition),
            ratio(("stdlib_min", 100, lat), ("stdlib_min", 20, lat), condition),
        )
        if "n/a" in (mine, floor) or float(floor) <= 0:
            return "n/a"
        return f"{float(mine) / float(floor):.2f}"

    lat = 10.0
    where = "" if base == PLAIN else f" ({base.label})"
    lines = [
        (
            f"N=20, 10 ms{where}: secretboot over bare / stdlib_min over bare",
            ratio(("secretboot", 20, lat), ("stdlib_min", 20, lat)),
            f"<= {TARGET_VS_STDLIB}",
        ),
        (
            f"N=20, 10 ms{where}: secretboot over bare / boto3_threaded over bare",
            ratio(("secretboot", 20, lat), ("boto3_threaded", 20, lat)),
            f"<= {TARGET_VS_THREADED}",
        ),
        (
            f"10 ms{where}: secretboot over bare, N=100 / N=20",
            ratio(("secretboot", 100, lat), ("secretboot", 20, lat)),
            f"<= {TARGET_GROWTH}",
        ),
        (
            f"10 ms{where}: stdlib_min over bare, N=100 / N=20 (the floor's own growth, for reference)",
            ratio(("stdlib_min", 100, lat), ("stdlib_min", 20, lat)),
            "",
        ),
    ]
    median = {(r.contender, r.size, r.latency_ms, r.condition): r.median_ms for r in rows}
    for condition in conditions:
        with_secrets = median.get(("handler-prefetch", 20, lat, condition))
        without = median.get(("handler-nosecrets", 20, lat, condition))
        if with_secrets is not None and without is not None:
            lines.append(
                (
                    f"N=20, 10 ms, {condition.label}: handler-prefetch minus handler-nosecrets (medians)",
                    f"{with_secrets - without:.1f} ms",
                    f"<= {TARGET_PREFETCH_MS:g} ms" if condition.https and condition.cpu is None else "",
                )
            )
    for condition in conditions:
        if not condition.https:
            continue
        goal = TARGET_HTTPS_QUARTER_VS_STDLIB if (condition.cpu or 1) <= 0.25 else TARGET_HTTPS_VS_STDLIB
        lines += [
            (
                f"N=20, 10 ms, {condition.label}: secretboot over bare / stdlib_min over bare",
                ratio(("secretboot", 20, lat), ("stdlib_min", 20, lat), condition),
                f"<= {goal}" if condition.cpu in (None, 1.0, 0.25) else "",
            ),
            (
                f"10 ms, {condition.label}: secretboot's growth N=20 to 100 / stdlib_min's",
                growth(condition),
                f"<= {TARGET_GROWTH_VS_STDLIB}",
            ),
            (
                f"N=20, 10 ms, {condition.label}: secretboot peak RSS / stdlib_min's",
                ratio(("secretboot", 20, lat), ("stdlib_min", 20, lat), condition, rss),
                f"<= {TARGET_RSS_VS_STDLIB}",
            ),
        ]
    if imports:
        lines += [
            (
                f"import secretboot: median over bare ({imports['rounds']} alternating pairs)",
                f"{imports['median_over_bare_ms']:.1f} ms",
                f"< {TARGET_IMPORT_MS:g} ms",
            ),
            (
                "import secretboot: -X importtime cumulative (median)",
                f"{imports['median_importtime_us']:.0f} us",
                "",
            ),
            (
                "import secretboot: boto3/botocore imported",
                ", ".join(imports["aws_modules_imported"]) or "no",
                "no",
            ),
        ]
    return lines


def _met(value: str, target: str) -> str:
    if not target:
        return ""
    if value == "n/a":
        return "n/a"
    number = re.match(r"[\d.]+", value)
    limit = re.search(r"[\d.]+", target)
    if number is None or limit is None:  # a yes/no target
        return "met" if value == target else "NOT met"
    v, t = float(number.group()), float(limit.group())
    return "met" if (v <= t if target.startswith("<=") else v < t) else "NOT met"


HEADERS = (
    "contender",
    "median ms",
    "over bare ms",
    "vs secretboot",
    "vs stdlib_min",
    "CPU ms",
    "peak RSS MiB",
    "calls",
    "handshakes",
)


def _cells(row: Row) -> tuple[str, ...]:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        row.contender,
        f"{row.median_ms:.1f}",
        f"{row.over_bare_ms:.1f}",
        ratio(row.vs_secretboot),
        ratio(row.vs_stdlib_min),
        f"{row.cpu_ms:.0f}",
        f"{row.peak_rss_mib:.1f}",
        str(row.calls),
        str(row.handshakes),
    )


def _blocks(rows: Sequence[Row]) -> list[tuple[int, float, Condition, list[Row]]]:
    keys = dict.fromkeys((r.size, r.latency_ms, r.condition) for r in rows)
    return [
        (n, ms, c, [r for r in rows if (r.size, r.latency_ms, r.condition) == (n, ms, c)])
        for n, ms, c in keys
    ]


def matrices(rows: Sequence[Row]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Issue 16's tables: for each size and latency run under several conditions, contenders
    down, conditions across; (title, column heads, rows of cells)."""
    tables = []
    for size, latency in dict.fromkeys((r.size, r.latency_ms) for r in rows):
        mine = [r for r in rows if (r.size, r.latency_ms) == (size, latency)]
        conditions = list(dict.fromkeys(r.condition for r in mine))
        if len(conditions) < 2:
            continue
        cell = {(r.contender, r.condition): r for r in mine}
        names = list(dict.fromkeys(r.contender for r in mine))
        heads = [""] + [c.label for c in conditions]
        ratios = [
            [name]
            + [
                "-"
                if (r := cell.get((name, c))) is None or r.vs_stdlib_min is None
                else f"{r.vs_stdlib_min:.2f}"
                for c in conditions
            ]
            for name in names
            if name != "bare"
        ]
        runs = mine[0].runs
        tables.append(
            (
                f"N={size}, {latency:g} ms per request: time over bare / stdlib_min's ({runs} runs, medians)",
                heads,
                ratios,
            )
        )
        times = [
            [name]
            + [
                "-"
                if (r := cell.get((name, c))) is None
                else (
                    f"{r.median_ms:.0f} wall, {r.cpu_ms:.0f} CPU"
                    if name == "bare"
                    else f"+{r.over_bare_ms:.0f} wall, +{r.over_bare_cpu_ms:.0f} CPU"
                )
                for c in conditions
            ]
            for name in names
        ]
        tables.append(
            (
                f"N={size}, {latency:g} ms per request: ms over bare, wall and CPU (bare: its own ms)",
                heads,
                times,
            )
        )
    return tables


def text_report(rows: Sequence[Row], target_lines: Sequence[tuple[str, str, str]]) -> str:
    out = []
    for size, latency, condition, block in _blocks(rows):
        out.append(
            f"\nN={size} secrets, {latency:g} ms per request, {condition.label} "
            f"({block[0].runs} runs each, medians)"
        )
        out.append(f"{HEADERS[0]:<18}" + "".join(f"{h:>14}" for h in HEADERS[1:]))
        for row in block:
            cells = _cells(row)
            out.append(f"{cells[0]:<18}" + "".join(f"{c:>14}" for c in cells[1:]))
    for title, heads, cells in matrices(rows):
        out.append(f"\n{title}")
        width = max(len(h) for h in heads[1:]) + 2
        width = max([width] + [len(c) + 2 for line in cells for c in line[1:]])
        out.append(f"{'':<18}" + "".join(f"{h:>{width}}" for h in heads[1:]))
        out += [f"{line[0]:<18}" + "".join(f"{c:>{width}}" for c in line[1:]) for line in cells]
    out.append("\nTargets (issues 3 and 16)")
    for what, value, target in target_lines:
        verdict = _met(value, target)
        out.append(f"  {what}: {value}" + (f"  (target {target}: {verdict})" if target else ""))
    return "\n".join(out)


def markdown_report(
    rows: Sequence[Row], target_lines: Sequence[tuple[str, str, str]], meta: Mapping[str, Any]
) -> str:
    out = [
        "# secretboot cold-start benchmark",
        "",
        f"Command: `{meta['command']}` (commit {meta['commit']}, {meta['date']})",
        "",
        f"Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        "Times are medians of fresh processes, spawn to exit; *over bare* subtracts the bare "
        "interpreter's median; *vs secretboot* and *vs stdlib_min* divide by that contender's time "
        "over bare; *CPU ms* is the process's user plus system time; *calls* are requests that "
        "reached the proxy per run, *handshakes* TLS handshakes. " + _server_note(meta["replay"]),
    ]
    for title, heads, cells in matrices(rows):
        out += ["", f"## {title}", ""]
        out.append("| " + " | ".join(heads) + " |")
        out.append("|---|" + "---:|" * (len(heads) - 1))
        out += ["| " + " | ".join(line) + " |" for line in cells]
    for size, latency, condition, block in _blocks(rows):
        out += ["", f"## N={size}, {latency:g} ms per request, {condition.label} ({block[0].runs} runs)", ""]
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|---|" + "---:|" * (len(HEADERS) - 1))
        out += ["| " + " | ".join(_cells(row)) + " |" for row in block]
    out += ["", "## Targets (issues 3 and 16)", "", "| measure | value | target | |", "|---|---:|---|---|"]
    out += [
        f"| {what} | {value} | {target} | {_met(value, target)} |" for what, value, target in target_lines
    ]
    return "\n".join(out) + "\n"


def _server_note(replay: bool) -> str:
    if replay:
        return "Server: delay proxy replaying moto's answers from the warm-up run (--replay)."
    return "Server: moto behind the delay proxy, every request answered by moto."


def plot(rows: Sequence[Row], path: str, latencies: Sequence[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    latency = PLOT_LATENCY_MS if PLOT_LATENCY_MS in latencies else latencies[0]
    first = rows[0].condition  # one condition per plot: the run's first
    chosen = [r for r in rows if r.latency_ms == latency and r.contender != "bare" and r.condition == first]
    sizes = sorted({r.size for r in chosen})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name in dict.fromkeys(r.contender for r in chosen):
        points = sorted((r.size, max(r.over_bare_ms, 0.1)) for r in chosen if r.contender == name)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")  # the contenders span two orders of magnitude
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("secrets N (a quarter KMS ciphertext, the rest SSM SecureStrings)")
    ax.set_ylabel("time over a bare interpreter, ms (log scale)")
    ax.set_title(f"Cold start: time over the floor, {latency:g} ms added per request")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str:
    """The checkout's commit, marked -dirty when it has changes, for the report's header."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 (git from PATH)
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("boto3", "botocore", "moto", "aws-lambda-powertools"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    commit = git_commit()
    return {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "sizes": args.sizes,
        "latencies_ms": args.latencies,
        "runs": args.runs,
        "replay": args.replay,
        "conditions": [c.label for c in args.conditions],
    }


def make_proxy(upstream: str, *, replay: bool) -> AwsProxy:
    """The delay proxy; with ``replay``, one that answers repeated requests itself.

    moto serves requests one at a time under its GIL, at about 2 ms each, on the same two cores
    as the contender; AWS serves them side by side. So at N=100 (33 requests) moto's own time
    dominates even the standard-library floor. Replay takes moto out of the timed runs: the
    warm-up run's successful answers are kept, keyed by operation and body, and repeated after
    the same delay. Every contender still sends every request and is still checked.
    """
    from tests.awsproxy import AwsProxy, ProxyRequest, ProxyResponse

    if not replay:
        return AwsProxy(upstream)

    class ReplayProxy(AwsProxy):
        def __init__(self, upstream: str) -> None:
            super().__init__(upstream)
            self._answers: dict[tuple[str, str, bytes], ProxyResponse] = {}

        def forward(self, request: ProxyRequest) -> ProxyResponse:
            key = (request.method, request.target, request.body)
            answer = self._answers.get(key)
            if answer is None:
                answer = super().forward(request)
                if answer.status == 200 and request.target:
                    self._answers[key] = answer
            return answer

    return ReplayProxy(upstream)


def _numbers(kind: type[Any]) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(part) for part in text.split(",") if part.strip()]

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1,20, latencies 0,10, 2 runs")
    parser.add_argument("--sizes", type=_numbers(int), help="secrets per run, e.g. 1,20,100 (default)")
    parser.add_argument(
        "--latencies", type=_numbers(float), help="ms added per request, e.g. 0,10,50 (default)"
    )
    parser.add_argument("--runs", type=int, help="timed rounds per size and latency (default 7; quick 2)")
    parser.add_argument(
        "--contenders",
        type=lambda text: [c for c in text.split(",") if c],
        help="names to run (bare is always included); default: "
        + ",".join(c.name for c in CONTENDERS if not c.optional)
        + "; on request: "
        + ",".join(c.name for c in CONTENDERS if c.optional),
    )
    parser.add_argument("--json", metavar="PATH", help="write every raw sample and the summary")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of time over the floor against N")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="answer repeated requests from the proxy's memory instead of moto (see make_proxy)",
    )
    parser.add_argument(
        "--https",
        action="store_true",
        help="reach AWS through a local TLS 1.3 front (throwaway CA in AWS_CA_BUNDLE, verification on)",
    )
    parser.add_argument(
        "--cpu",
        type=_shares,
        metavar="SHARES",
        help="run each contender on these shares of one CPU, e.g. 1,0.5,0.25 (cgroup v1; none: no limit)",
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="issue 16's table: N=20, 10 ms; plain HTTP, HTTPS, HTTPS at 0.5 and 0.25 CPU (or --cpu); "
        "contenders " + ",".join(TABLE_CONTENDERS[1:]) + " unless --contenders",
    )
    args = parser.parse_args(argv)
    if args.table:
        shares = [s for s in (args.cpu or TABLE_SHARES) if s is not None]
        args.conditions = [PLAIN, Condition(https=True)] + [Condition(True, s) for s in shares]
        args.sizes = args.sizes or [20]
        args.latencies = args.latencies or [10.0]
        args.contenders = args.contenders or list(TABLE_CONTENDERS + (() if args.quick else TABLE_EXTRAS))
    else:
        args.conditions = [Condition(args.https, s) for s in (args.cpu or [None])]
    args.conditions = list(dict.fromkeys(args.conditions))
    # Deduplicated: each size's parameters are created once.
    args.sizes = list(dict.fromkeys(args.sizes or ([1, 20] if args.quick else [1, 20, 100])))
    args.latencies = list(dict.fromkeys(args.latencies or ([0.0, 10.0] if args.quick else [0.0, 10.0, 50.0])))
    args.runs = args.runs or (2 if args.quick else 7)
    if args.runs < 1 or min(args.sizes) < 1 or min(args.latencies) < 0:
        parser.error("runs and sizes must be at least 1, latencies at least 0")
    if any(c.cpu is not None and not 0 < c.cpu <= (os.cpu_count() or 1) for c in args.conditions):
        parser.error("CPU shares are above 0 and at most the number of CPUs")
    known = {c.name for c in CONTENDERS}
    unknown = set(args.contenders or ()) - known
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    return args


def _shares(text: str) -> list[float | None]:
    """``1,0.5,0.25`` (``none``: no limit) as CPU shares."""
    shares: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            shares.append(None if part.lower() in ("none", "max") else float(part))
    return shares


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.contenders or [c.name for c in CONTENDERS if not c.optional]) | {"bare"}
    contenders = [c for c in CONTENDERS if c.name in wanted]
    sys.path.insert(0, str(REPO))
    from tests.localaws import moto_server

    started = time.perf_counter()
    meta = metadata(args)
    # SIGTERM unwinds like Ctrl-C, so the CPU groups and servers are cleaned up either way.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with contextlib.ExitStack() as cleanup:
            shares = [c.cpu for c in args.conditions if c.cpu is not None]
            limits = None
            if shares:
                from bench.cgroup import CpuLimits

                # Entered first, so removed last: after the launcher and its children are gone.
                limits = cleanup.enter_context(CpuLimits(shares))
                checked = limits.check()
                meta["cpu_check"] = {f"{k:g}": round(v, 3) for k, v in checked.items()}
                _progress(
                    "CPU groups "
                    + ", ".join(limits.groups.values())
                    + "; a busy loop got "
                    + ", ".join(f"{v:.2f} of a CPU in the {k:g} group" for k, v in checked.items())
                )
            moto_url = cleanup.enter_context(moto_server())
            proxy = make_proxy(moto_url, replay=args.replay)
            proxy.start()
            cleanup.callback(proxy.stop)
            front = None
            if any(c.https for c in args.conditions):
                from tests.tlsfront import TlsFront

                front = cleanup.enter_context(TlsFront(proxy.url))
                _progress(f"TLS front at {front.url}, CA bundle {front.bundle_file}")
            network = Network(proxy, front, limits)
            spawner = Spawner(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="secretboot-bench-")))
            cleanup.callback(spawner.close)

            _progress(f"moto at {moto_url}, proxy at {proxy.url}; creating secrets")
            secret_sets = create_secrets(moto_url, args.sizes)
            env = base_env(proxy.url)
            samples: list[Sample] = []
            for size in args.sizes:
                block_env = {**env, **secret_sets[size].references}
                for latency in args.latencies:
                    for condition in args.conditions:
                        samples += run_block(
                            spawner,
                            network,
                            contenders,
                            secret_sets[size],
                            block_env,
                            latency,
                            args.runs,
                            condition,
                        )
            _progress("measuring import secretboot")
            proxy.latency = 0.0
            imports = measure_import(spawner, env, 5 if args.quick else 15, 3 if args.quick else 7)
    finally:
        signal.signal(signal.SIGTERM, previous)

    rows = summarize(samples, contenders)
    target_lines = targets(rows, imports)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']} commit {meta['commit']}; Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    )
    print("# " + _server_note(meta["replay"]))
    print(text_report(rows, target_lines))
    print(f"\n# {meta['seconds']} s in all")
    if args.json:
        document = {
            "meta": meta,
            "samples": [asdict(s) for s in samples],
            "summary": [asdict(r) for r in rows],
            "targets": [{"measure": w, "value": v, "target": t} for w, v, t in target_lines],
            "import": imports,
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(rows, target_lines, meta))
    if args.plot:
        plot(rows, args.plot, args.latencies)
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
