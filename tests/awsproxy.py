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

Faults (scripted statuses, throttling, resets, a black hole) belong in ``AwsProxy.handle``:
it sees each parsed request and returns the response to send, so a fault can answer without
forwarding, or raise to end the connection.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass
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


class AwsProxy:
    """Relays HTTP requests to ``upstream`` after ``latency`` seconds, counting them by target.

    ``latency`` may be changed while running; it applies to requests that arrive afterwards.
    """

    def __init__(self, upstream: str, latency: float = 0.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("upstream must be an http:// URL")
        self.upstream = upstream
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self.latency = latency
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
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

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
        if self._server is not None:
            self._server.accepted = 0

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        """Delay, then forward. Runs in the client connection's own handler thread."""
        latency = self.latency
        if latency > 0:
            time.sleep(latency)
        return self.forward(request)

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
        self._send(proxy.handle(request))

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
