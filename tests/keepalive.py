"""What the test servers on loopback share: HTTP/1.1 keep-alive, no Nagle, a clean stop.

The delay proxy (tests/awsproxy.py) and the Lambda Runtime API emulator
(tests/lambda_runtime.py) both serve clients that keep connections open; stopping
must end those idle connections too, and a client hanging up is expected, not an error.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DISCONNECTS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class KeepAliveServer(ThreadingHTTPServer):
    """A threaded server on 127.0.0.1 (a free port) that tracks its client connections."""

    daemon_threads = True
    # Many clients connect at once (one connection per thread); the default backlog of 5
    # would drop SYNs and add a one-second retransmit to some of them.
    request_queue_size = 128

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.accepted = 0  # client connections so far

    @property
    def host_port(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def start(self, name: str, poll_interval: float) -> None:
        # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        # Idle keep-alive connections would otherwise hold their handler threads.
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self.accepted += 1
            self._open.add(sock)

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            return  # the client went away (or was stopped in a long poll): expected
        super().handle_error(request, client_address)


class KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it, Nagle plus delayed ACK adds tens of milliseconds to every small answer.
    disable_nagle_algorithm = True
    timeout = 60  # an idle keep-alive connection is closed after this
    server: KeepAliveServer

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(*DISCONNECTS):
                super().finish()
        finally:
            self.server.closed(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except DISCONNECTS:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is noise in test output
