"""tests/tlsfront.py: HTTPS in front of a local http server, verified as a real client verifies."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.keepalive import KeepAliveHandler, KeepAliveServer
from tests.tlsfront import AWS_ROOTS, TlsFront, pem_certificates, system_ca_file


class _Echo(KeepAliveHandler):
    def do_GET(self) -> None:
        body = f"{self.path} on connection {id(self.connection)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[KeepAliveServer]:
    server = KeepAliveServer(_Echo)
    server.start("echo", poll_interval=0.05)
    yield server
    server.stop()


@pytest.fixture
def front(upstream: KeepAliveServer) -> Iterator[TlsFront]:
    with TlsFront(f"http://{upstream.host_port}") as running:
        yield running


def _port(front: TlsFront) -> int:
    return int(front.url.rsplit(":", 1)[1])


def _handshake(context: ssl.SSLContext, front: TlsFront, server_hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", _port(front)), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_the_bundle_verifies_the_front_and_keep_alive_is_relayed(
    front: TlsFront, upstream: KeepAliveServer
) -> None:
    context = ssl.create_default_context(cafile=front.bundle_file)
    connection = http.client.HTTPSConnection("127.0.0.1", _port(front), context=context, timeout=10)
    answers = []
    for path in ("/one", "/two"):
        connection.request("GET", path)
        response = connection.getresponse()
        answers.append((response.status, response.read().decode()))
    connection.close()
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1].startswith("/one on connection ")
    assert answers[1][1].startswith("/two on connection ")
    # One client connection, one handshake, one upstream connection for both requests.
    assert answers[0][1].split()[-1] == answers[1][1].split()[-1]
    assert front.handshakes == 1
    assert front.versions == {"TLSv1.3": 1}


def test_the_bundle_is_the_system_bundle_plus_the_throwaway_ca(front: TlsFront) -> None:
    system = pem_certificates(Path(system_ca_file()).read_bytes())
    bundle = pem_certificates(Path(front.bundle_file).read_bytes())
    ca = pem_certificates(Path(front.ca_file).read_bytes())
    assert len(system) > 100  # what a real client loads
    assert len(ca) == 1
    assert bundle == system + ca
    context = ssl.create_default_context(cafile=front.bundle_file)
    assert context.cert_store_stats()["x509_ca"] == len(system) + 1


def test_the_aws_roots_file_holds_only_amazon_and_starfield_roots(front: TlsFront) -> None:
    from cryptography import x509

    blocks = pem_certificates(Path(front.aws_roots_file).read_bytes())
    with warnings.catch_warnings():  # Starfield Services Root G2's serial number is 0
        warnings.simplefilter("ignore")
        subjects = [x509.load_pem_x509_certificate(b).subject.rfc4514_string() for b in blocks]
    assert subjects[:-1] == list(AWS_ROOTS)  # this machine's bundle has all five
    assert blocks[-1:] == pem_certificates(Path(front.ca_file).read_bytes())
    context = ssl.create_default_context(cafile=front.aws_roots_file)
    with _handshake(context, front) as tls:
        assert tls.version() == "TLSv1.3"


def test_without_the_throwaway_ca_verification_fails(front: TlsFront) -> None:
    context = ssl.create_default_context()  # the system roots only
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        _handshake(context, front)
    assert caught.value.verify_message == "unable to get local issuer certificate"
    _wait_for(lambda: front.failed_handshakes == 1)
    assert front.handshakes == 0


def test_a_hostname_mismatch_fails(front: TlsFront) -> None:
    context = ssl.create_default_context(cafile=front.bundle_file)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        _handshake(context, front, server_hostname="kms.us-east-1.amazonaws.com")
    assert "mismatch" in caught.value.verify_message
    # The certificate names both 127.0.0.1 and localhost.
    for name in ("127.0.0.1", "localhost"):
        with _handshake(context, front, server_hostname=name) as tls:
            assert tls.version() == "TLSv1.3"


def test_tls_1_3_is_negotiated_and_required(front: TlsFront) -> None:
    context = ssl.create_default_context(cafile=front.ca_file)
    with _handshake(context, front) as tls:
        assert tls.version() == "TLSv1.3"
    capped = ssl.create_default_context(cafile=front.ca_file)
    capped.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _handshake(capped, front)


def test_the_hashed_directory_verifies_on_demand(front: TlsFront) -> None:
    directory = Path(front.hashed_dir)
    links = [p for p in directory.iterdir() if p.name[:8].isalnum() and p.suffix[1:].isdigit()]
    assert len(links) == len(pem_certificates(Path(front.bundle_file).read_bytes()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(capath=directory)
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing loaded up front
    with _handshake(context, front) as tls:
        assert tls.version() == "TLSv1.3"
    assert context.cert_store_stats()["x509_ca"] == 1  # only the root this chain needed


def test_each_new_connection_pays_the_latency_once(front: TlsFront) -> None:
    front.latency = 0.2
    context = ssl.create_default_context(cafile=front.ca_file)
    started = time.perf_counter()
    connection = http.client.HTTPSConnection("127.0.0.1", _port(front), context=context, timeout=10)
    connection.request("GET", "/first")
    connection.getresponse().read()
    first = time.perf_counter() - started
    started = time.perf_counter()
    connection.request("GET", "/second")
    connection.getresponse().read()
    second = time.perf_counter() - started
    connection.close()
    assert first >= 0.2
    assert second < 0.15


def test_stop_removes_the_throwaway_material(upstream: KeepAliveServer) -> None:
    front = TlsFront(f"http://{upstream.host_port}")
    with front:
        files = [front.ca_file, front.bundle_file, front.aws_roots_file, front.hashed_dir]
        folder = os.path.dirname(front.ca_file)
        assert all(os.path.exists(f) for f in files)
        assert all(os.path.dirname(f) == folder for f in files)
    assert not os.path.exists(folder)
    with pytest.raises(RuntimeError):
        front.ca_file
