"""A local HTTP/1.1 proxy to put in front of moto's server: per-request latency and call counts.

    proxy = AwsProxy("http://127.0.0.1:5000", latency=0.010)
    proxy.start()
    client = boto3.client("kms", endpoint_url=proxy.url, ...)
    ...
    proxy.counts()  # {"TrentService.Decrypt": 5, "AmazonSSM.GetParameters": 2}
    proxy.stop()

Clients keep their connections alive (as real AWS endpoints allow, and as the SDKs and
secretboot's transports expect); the proxy opens a fresh connection upstream for every
request because moto closes its connection after each response. Each client connection has
its own handler thread, and the delay is slept in that thread, so requests in flight are
delayed side by side, as on a real network, rather than queued.

Faults. ``handle`` first sleeps ``latency``, then applies the fault rules in the order they
were added, then the quotas, and forwards what is left::

    rule = proxy.add_fault(throttle(), target="AmazonSSM.GetParameters", times=2)
    proxy.add_fault(server_error(503), target="TrentService.", rate=0.3, rng=random.Random(7))
    proxy.add_fault(delay(0.2), target="secretsmanager.")
    proxy.add_fault(reset(), times=1)  # no target: every request
    proxy.quota("AmazonSSM.", rate=40, burst=40)
    ...
    rule.fired          # requests this rule took
    proxy.throttled()   # {"AmazonSSM.GetParameters": 2, ...}: ThrottlingException answers made up
    proxy.clear_faults()

- A target is an exact ``X-Amz-Target`` (``"TrentService.Decrypt"``) or, ending in ``"."``, a
  prefix (``"TrentService."``, ``"AmazonSSM."``, ``"secretsmanager."``); ``None`` is every request.
- A rule takes a matching request if it has taken fewer than ``times`` (when given) and, with
  ``rate``, if its ``rng`` draws below ``rate``: one draw per matching request while the rule
  can still fire, so a seeded ``random.Random`` makes the pattern reproducible.
- ``delay(seconds)`` sleeps and goes on to the next rule; every other fault ends the request:
  ``error``/``throttle``/``server_error`` answer with an AWS JSON 1.1 error without forwarding,
  ``reset()`` aborts the connection (RST: the client sees ECONNRESET), ``black_hole()`` reads the
  request and never answers, holding the connection until the client hangs up or ``stop()``.
  Rules after the one that ended the request are not consulted (nor charged).
- ``quota(target, rate=, burst=)`` is a token bucket (full at first, refilled continuously on
  the ``clock``, ``time.monotonic`` by default): a request that reaches the quotas takes a token
  from every bucket its target matches, or, if one of them is empty, is answered
  ThrottlingException (400), as AWS does, and takes none.
- ``counts()`` still counts every request received, faulted or not; ``throttled()`` counts the
  ThrottlingException answers the proxy made up (rules and quotas); ``reset_counts()`` clears
  both and ``connections()`` but keeps rules and quotas; ``clear_faults()`` drops rules and quotas.

Everything is thread-safe: decisions are taken under one lock, sleeps outside it. A subclass that
overrides ``handle`` can call ``apply_faults`` itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

from tests.keepalive import KeepAliveHandler, KeepAliveServer

# Meaningful for one connection only (RFC 9110 section 7.6.1), so never relayed. Content-Length
# is recomputed for responses, whose bodies are read whole.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
UPSTREAM_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
THROTTLING = "ThrottlingException"


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def target(self) -> str:
        """The ``X-Amz-Target`` header (``""`` when absent): the AWS JSON protocol's operation."""
        for name, value in self.headers:
            if name.lower() == "x-amz-target":
                return value
        return ""


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Fault:
    """What a rule does to the requests it takes: build one with the functions below."""

    kind: str  # "error", "reset", "black_hole" or "delay"
    status: int = 0
    code: str = ""
    message: str = ""
    seconds: float = 0.0


def error(status: int, code: str, message: str) -> Fault:
    """Answer ``status`` with the AWS JSON error ``code`` (``__type``) and ``message``."""
    if not 400 <= status <= 599:
        raise ValueError("an error status is 4xx or 5xx")
    if not code:
        raise ValueError("an error needs a code")
    return Fault("error", status=status, code=code, message=message)


def throttle(message: str = "Rate exceeded") -> Fault:
    """Answer 400 ThrottlingException, as AWS does beyond a quota."""
    return error(400, THROTTLING, message)


def server_error(status: int = 500, code: str | None = None, message: str | None = None) -> Fault:
    """Answer a 5xx: ``InternalFailure`` by default, ``ServiceUnavailable`` for 503."""
    if not 500 <= status <= 599:
        raise ValueError("a server error status is 5xx")
    code = code or ("ServiceUnavailable" if status == 503 else "InternalFailure")
    return error(status, code, message or code)


def reset() -> Fault:
    """Abort the client connection without answering (RST: the client sees ECONNRESET)."""
    return Fault("reset")


def black_hole() -> Fault:
    """Never answer: hold the connection until the client hangs up or the proxy stops."""
    return Fault("black_hole")


def delay(seconds: float) -> Fault:
    """Sleep ``seconds`` more (after ``latency``), then go on to the next rule."""
    if not seconds >= 0:
        raise ValueError("a delay is at least 0 seconds")
    return Fault("delay", seconds=seconds)


@dataclass(eq=False)
class Rule:
    """One ``add_fault`` call: its fault, which requests it may take, and how many it took."""

    fault: Fault
    target: str | None
    times: int | None
    rate: float | None
    rng: random.Random = field(repr=False)
    fired: int = field(default=0, init=False)

    def _takes(self, target: str) -> bool:
        # The caller holds the proxy's lock.
        if not _matches(self.target, target):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        self.fired += 1
        return True


@dataclass(eq=False)
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now


class _EndConnection(Exception):
    """Raised by ``apply_faults`` for the connection handler, which alone may catch it."""


class _Reset(_EndConnection):
    pass


class _BlackHole(_EndConnection):
    pass


def _matches(pattern: str | None, target: str) -> bool:
    if pattern is None:
        return True
    return target.startswith(pattern) if pattern.endswith(".") else target == pattern


def _check_target(target: str | None) -> None:
    if target is not None and not isinstance(target, str):
        raise TypeError("target is a string or None")


def _error_response(fault: Fault) -> ProxyResponse:
    body = json.dumps({"__type": fault.code, "message": fault.message}).encode()
    headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", fault.code)]
    return ProxyResponse(fault.status, HTTPStatus(fault.status).phrase, headers, body)


class AwsProxy:
    """Relays HTTP requests to ``upstream`` after ``latency`` seconds, counting them by target.

    ``latency`` may be changed while running; it applies to requests that arrive afterwards.
    ``clock`` (``time.monotonic`` by default) refills the quotas' token buckets.
    """

    def __init__(
        self, upstream: str, latency: float = 0.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("upstream must be an http:// URL")
        self.upstream = upstream
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self.latency = latency
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()
        self._rules: list[Rule] = []
        self._quotas: dict[str, _Bucket] = {}
        self._clock = clock
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running: call start() first")
        return f"http://{self._server.host_port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the proxy is already running")
        server = _Server(_Handler)
        server.proxy = self
        self._server = server
        server.start("awsproxy", poll_interval=0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> AwsProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def counts(self) -> dict[str, int]:
        """Requests received per ``X-Amz-Target`` value (``""`` for requests without one)."""
        with self._lock:
            return dict(self._counts)

    def connections(self) -> int:
        """Client connections accepted: fewer than requests when clients keep them alive."""
        return self._server.accepted if self._server is not None else 0

    def throttled(self) -> dict[str, int]:
        """ThrottlingException answers the proxy made up (rules and quotas), per target."""
        with self._lock:
            return dict(self._throttled)

    def reset_counts(self) -> None:
        """Clear ``counts()``, ``throttled()`` and ``connections()``; rules and quotas stay."""
        with self._lock:
            self._counts.clear()
            self._throttled.clear()
        if self._server is not None:
            self._server.accepted = 0

    @property
    def faults(self) -> tuple[Rule, ...]:
        """The rules, in the order they apply."""
        with self._lock:
            return tuple(self._rules)

    def add_fault(
        self,
        fault: Fault,
        *,
        target: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        rng: random.Random | None = None,
    ) -> Rule:
        """Apply ``fault`` to requests matching ``target``: the first ``times``, a ``rate`` share, or all.

        Returns the rule (its ``fired`` counts the requests it took). ``rng`` (a fresh
        ``random.Random`` by default) draws for ``rate``; pass a seeded one to reproduce a run.
        """
        if not isinstance(fault, Fault):
            raise TypeError("fault is built with throttle(), server_error(), error(), reset(), ...")
        _check_target(target)
        if times is not None and times < 1:
            raise ValueError("times is at least 1")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate is between 0 and 1")
        if rng is not None and rate is None:
            raise ValueError("rng draws for rate: give rate too")
        rule = Rule(fault, target, times, rate, rng if rng is not None else random.Random())
        with self._lock:
            self._rules.append(rule)
        return rule

    def quota(self, target: str, *, rate: float, burst: float) -> None:
        """Allow requests matching ``target`` ``rate`` per second with bursts of ``burst``; throttle the rest.

        Setting a quota for the same ``target`` again replaces it (with a full bucket).
        """
        _check_target(target)
        if not target:
            raise ValueError("a quota needs a target or a prefix ending in '.'")
        if not rate > 0:
            raise ValueError("rate is above 0 requests per second")
        if not burst >= 1:
            raise ValueError("burst is at least 1 request")
        with self._lock:
            self._quotas[target] = _Bucket(rate, burst, tokens=burst, stamp=self._clock())

    def clear_faults(self) -> None:
        """Drop every rule and quota: plain forwarding again. Counts are kept."""
        with self._lock:
            self._rules.clear()
            self._quotas.clear()

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        """Delay, apply faults, then forward. Runs in the client connection's own handler thread."""
        latency = self.latency
        if latency > 0:
            time.sleep(latency)
        answer = self.apply_faults(request)
        return answer if answer is not None else self.forward(request)

    def apply_faults(self, request: ProxyRequest) -> ProxyResponse | None:
        """The made-up answer for ``request``, or None to forward it.

        Sleeps for delay rules; raises (a private type the connection handler catches) to reset
        or black-hole the connection.
        """
        target = request.target
        delays: list[float] = []
        final: Fault | None = None
        with self._lock:
            for rule in self._rules:
                if rule._takes(target):
                    if rule.fault.kind != "delay":
                        final = rule.fault
                        break
                    delays.append(rule.fault.seconds)
        pause = sum(delays)
        if pause > 0:
            time.sleep(pause)
        if final is None:
            if self._take_tokens(target):
                return None
            final = throttle()
        if final.kind == "reset":
            raise _Reset
        if final.kind == "black_hole":
            raise _BlackHole
        if final.code == THROTTLING:
            with self._lock:
                self._throttled[target] += 1
        return _error_response(final)

    def _take_tokens(self, target: str) -> bool:
        """A token from every quota ``target`` matches, or none if one of them is empty."""
        with self._lock:
            buckets = [b for pattern, b in self._quotas.items() if _matches(pattern, target)]
            if not buckets:
                return True
            now = self._clock()
            for bucket in buckets:
                bucket.refill(now)
            if any(bucket.tokens < 1 for bucket in buckets):
                return False
            for bucket in buckets:
                bucket.tokens -= 1
            return True

    def forward(self, request: ProxyRequest) -> ProxyResponse:
        conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=UPSTREAM_TIMEOUT)
        try:
            # putrequest/putheader relay the headers as sent (repeats included) and add none of
            # http.client's defaults, so a signed request stays exactly as signed.
            conn.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
            names: set[str] = set()
            for name, value in request.headers:
                names.add(name.lower())
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if "host" not in names:
                conn.putheader("Host", f"{self._upstream_host}:{self._upstream_port}")
            conn.endheaders(request.body or None)
            answer = conn.getresponse()
            body = answer.read()
            headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP]
            return ProxyResponse(answer.status, answer.reason, headers, body)
        except (OSError, http.client.HTTPException) as exc:
            message = f"awsproxy: upstream failed: {type(exc).__name__}".encode()
            return ProxyResponse(502, "Bad Gateway", [("Content-Type", "text/plain")], message)
        finally:
            conn.close()

    def _record(self, request: ProxyRequest) -> None:
        with self._lock:
            self._counts[request.target] += 1


class _Server(KeepAliveServer):
    proxy: AwsProxy


class _Handler(KeepAliveHandler):
    timeout = IDLE_TIMEOUT
    server: _Server

    def _relay(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # AWS SDKs send Content-Length; chunked uploads are out of scope.
            self.close_connection = True
            self._send(ProxyResponse(411, "Length Required", [], b""))
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = ProxyRequest(self.command, self.path, list(self.headers.items()), body)
        proxy = self.server.proxy
        proxy._record(request)
        try:
            response = proxy.handle(request)
        except _Reset:
            self._abort()
            return
        except _BlackHole:
            self._park()
            return
        self._send(response)

    def _abort(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN, and the client sees ECONNRESET."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket: until it is closed, close() would not close.
        self.rfile.close()
        sock.close()

    def _park(self) -> None:
        """Read and drop whatever comes until the client hangs up or ``stop()`` shuts the socket."""
        self.close_connection = True
        sock = self.connection
        while True:
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue  # the idle timeout: still there, keep holding
            except OSError:
                return

    def _send(self, response: ProxyResponse) -> None:
        head = self.command == "HEAD"
        self.send_response_only(response.status, response.reason)
        for name, value in response.headers:
            # A HEAD answer keeps upstream's Content-Length: it describes a body not sent.
            if name.lower() != "content-length" or head:
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head and response.body:
            self.wfile.write(response.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _relay
