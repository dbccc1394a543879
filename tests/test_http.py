"""The process's TLS (secretboot/_http.py): one context, verification always on, trust modes.

A throwaway CA made here signs a leaf for ``localhost``; a small HTTPS server answers every
request with one JSON body that each fast-transport call accepts. Nothing here waits for
the network: every server is on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from secretboot import _credsources, _fast, _http
from secretboot import _transport as t

ROOT = Path(__file__).resolve().parent.parent
ANSWER = json.dumps(
    {
        "Plaintext": "YQ==",
        "KeyId": "k",
        "Parameters": [],
        "InvalidParameters": [],
        "SecretValues": [],
        "Errors": [],
    }
).encode()


@dataclass(frozen=True)
class Pki:
    ca: Path  # the root, PEM
    ca_der: bytes
    chain: Path  # leaf + root, PEM (what the server sends)
    key: Path
    hash_name: str  # OpenSSL's subject hash of the root: the name it has in a hashed directory


def _pki(folder: Path, label: str) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # Lower case, no spaces: OpenSSL's canonical form of this name is its own DER.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"secretboot-test-root-{label}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Pki(
        folder / f"{label}-ca.pem",
        ca.public_bytes(serialization.Encoding.DER),
        folder / f"{label}-chain.pem",
        folder / f"{label}-key.pem",
        _subject_hash(ca_name.public_bytes()),
    )
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _subject_hash(name_der: bytes) -> str:
    """X509_NAME_hash: SHA-1 of the name's canonical encoding (its RDNs without the outer
    SEQUENCE), first four bytes little-endian. Valid for names already in canonical form."""
    assert name_der[0] == 0x30
    length = name_der[1]
    start = 2 if length < 0x80 else 2 + (length & 0x7F)
    digest = hashlib.sha1(name_der[start:]).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    folder = tmp_path_factory.mktemp("pki")
    return {label: _pki(folder, label) for label in ("good", "other")}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    do_POST = do_GET = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(pki: dict[str, Pki], request: pytest.FixtureRequest) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 sending the chain of ``pki[param]`` ("good" by default)."""
    label = getattr(request, "param", "good")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[label].chain, pki[label].key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "SSL_CERT_URI"):
        monkeypatch.delenv(name, raising=False)
    _http.forget()
    yield
    _http.forget()


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every context _http builds, with its arguments."""
    made: list[dict[str, Any]] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


def _transport(port: int, host: str = "localhost", **extra: str) -> _fast.FastTransport:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"https://{host}:{port}",
        **extra,
    }
    return _fast.FastTransport(env, sleep=lambda seconds: None)


def _call_every_service(transport: _fast.FastTransport) -> None:
    assert transport.decrypt(b"x", context=None, key_id=None)[0] == b"a"
    assert transport.get_parameters(["/p"]).found == []
    assert transport.get_secret_values(["s"]).found == []


# ----------------------------------------------------------------------------- one context


def test_one_context_for_every_service_connection_and_credential_provider(
    server: int, pki: dict[str, Pki], built: list[dict[str, Any]]
) -> None:
    bundle = str(pki["good"].ca)
    for _ in range(2):  # two transports (a second bootstrap, a refresh): still one context
        _call_every_service(_transport(server, AWS_CA_BUNDLE=bundle))
    sts = _credsources._Endpoint(f"https://localhost:{server}/")
    for _ in range(2):
        status, _body = _credsources.request(
            sts, "POST", "/", {}, b"", timeout=5, deadline=None, what="STS", ca_bundle=bundle
        )
        assert status == 200
    assert built == [{"cafile": bundle}]
    assert _http.context(bundle) is _http.context(bundle)


def test_contexts_are_keyed_by_trust_only(pki: dict[str, Pki], built: list[dict[str, Any]]) -> None:
    good, other = str(pki["good"].ca), str(pki["other"].ca)
    assert _http.context(good) is _http.context(good)
    assert _http.context(other) is not _http.context(good)
    assert _http.context(None) is _http.context(None)
    assert len(built) == 3


def test_every_context_verifies(pki: dict[str, Pki], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hashed_dir(tmp_path, pki["good"])
    monkeypatch.setattr(_http, "_defaults", lambda: ("/nonexistent/cert.pem", str(tmp_path)))
    for made in (_http.context(str(pki["good"].ca)), _http.context(None), _http.context(None, standard=True)):
        assert made.verify_mode == ssl.CERT_REQUIRED
        assert made.check_hostname is True
        assert made.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert _http.trust(None, standard=True) == (_http.DIRECTORY, str(tmp_path))


# ----------------------------------------------------------------------------- verification


@pytest.mark.parametrize("server", ["other"], indirect=True)
def test_a_certificate_from_an_untrusted_ca_fails_clearly(server: int, pki: dict[str, Pki]) -> None:
    transport = _transport(server, AWS_CA_BUNDLE=str(pki["good"].ca))
    with pytest.raises(t.TransportError) as info:
        transport.decrypt(b"x", context=None, key_id=None)
    error = info.value
    assert error.reason == t.CONNECTION_ERROR
    assert f"TLS certificate verification failed for localhost:{server}" in error.detail
    assert error.detail.endswith("self-signed certificate in certificate chain (code 19)")
    # no certificate, subject or key material in the message or the chain
    shown = f"{error} {error!r} {error.detail}"
    assert "BEGIN" not in shown and "secretboot-test-root" not in shown
    assert error.__cause__ is None and error.__context__ is None
    assert transport.retries == 2  # retried as any connection error, then given up


def test_a_hostname_mismatch_fails(server: int, pki: dict[str, Pki]) -> None:
    # The leaf names localhost only; the same server reached as 127.0.0.1 must be refused.
    transport = _transport(server, host="127.0.0.1", AWS_CA_BUNDLE=str(pki["good"].ca))
    with pytest.raises(t.TransportError) as info:
        transport.get_parameters(["/p"])
    assert f"TLS certificate verification failed for 127.0.0.1:{server}" in info.value.detail
    assert "mismatch" in info.value.detail.lower()


def test_aws_ca_bundle_is_honoured(server: int, pki: dict[str, Pki]) -> None:
    with pytest.raises(t.TransportError, match="TLS certificate verification failed"):
        _transport(server).decrypt(b"x", context=None, key_id=None)  # the system store: refused
    _call_every_service(_transport(server, AWS_CA_BUNDLE=str(pki["good"].ca)))
    # and only it: a bundle holding another CA refuses the same server
    with pytest.raises(t.TransportError, match="TLS certificate verification failed"):
        _transport(server, AWS_CA_BUNDLE=str(pki["other"].ca)).decrypt(b"x", context=None, key_id=None)


def test_credential_providers_verify_too(server: int, pki: dict[str, Pki]) -> None:
    sts = _credsources._Endpoint(f"https://localhost:{server}/")
    with pytest.raises(t.TransportError) as info:
        _credsources.request(
            sts, "POST", "/", {}, b"", timeout=5, deadline=None, what="STS", ca_bundle=str(pki["other"].ca)
        )
    assert info.value.detail.startswith(f"TLS certificate verification failed for STS at localhost:{server}")


# ----------------------------------------------------------------------------- the directory mode


def _hashed_dir(folder: Path, *roots: Pki) -> Path:
    folder.mkdir(exist_ok=True)
    for root in roots:
        (folder / f"{root.hash_name}.0").write_bytes(root.ca.read_bytes())
    return folder


def _standard_pool(port: int) -> _fast._Pool:
    """A pool treated as a standard AWS endpoint (the one case the directory mode serves)."""
    return _fast._Pool(f"https://localhost:{port}/", None, standard=True)


def _post(pool: _fast._Pool) -> int:
    return pool.send({"Host": pool.host_header}, b"{}", 5, 5)[0]


def test_directory_mode_verifies_a_root_found_only_in_the_directory(
    server: int,
    pki: dict[str, Pki],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    built: list[dict[str, Any]],
) -> None:
    folder = _hashed_dir(tmp_path / "certs", pki["other"], pki["good"])
    monkeypatch.setattr(_http, "_defaults", lambda: (str(tmp_path / "none.pem"), str(folder)))
    assert _http.context(None, standard=True).cert_store_stats()["x509_ca"] == 0  # nothing read yet
    assert _post(_standard_pool(server)) == 200
    assert _post(_standard_pool(server)) == 200  # a second pool: the same context
    assert built == [{"capath": str(folder)}]  # the directory alone; no bundle was loaded
    context = _http.context(None, standard=True)
    # read on demand: only the root this chain needed, not the other one in the folder
    assert context.get_ca_certs(binary_form=True) == [pki["good"].ca_der]


def test_directory_mode_fails_when_the_root_is_absent(
    server: int, pki: dict[str, Pki], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _hashed_dir(tmp_path / "certs", pki["other"])
    monkeypatch.setattr(_http, "_defaults", lambda: (str(tmp_path / "none.pem"), str(folder)))
    with pytest.raises(t.TransportError) as info:
        _post(_standard_pool(server))
    assert "TLS certificate verification failed" in info.value.detail
    # after the directory, the default store had its say (and refused too); it serves from now on
    assert _http.trust(None, standard=True)[0] == _http.DEFAULT


def test_directory_mode_falls_back_to_the_default_file(
    server: int,
    pki: dict[str, Pki],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    built: list[dict[str, Any]],
) -> None:
    """A root only in the default file (appended by hand, say) is trusted as before: what is
    accepted is what the default store accepts."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki["good"].ca.read_bytes())
    folder = _hashed_dir(tmp_path / "certs", pki["other"])
    monkeypatch.setattr(_http, "_defaults", lambda: (str(bundle), str(folder)))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the default file, named: still the default
    assert _http.trust(None, standard=True) == (_http.DIRECTORY, str(folder))
    assert _post(_standard_pool(server)) == 200
    assert built == [{"capath": str(folder)}, {}]


def test_configured_endpoints_and_explicit_variables_keep_the_default_store(
    pki: dict[str, Pki], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _hashed_dir(tmp_path / "certs", pki["good"])
    monkeypatch.setattr(_http, "_defaults", lambda: (str(tmp_path / "default.pem"), str(folder)))
    assert _http.trust(None, standard=True)[0] == _http.DIRECTORY
    assert _http.trust(None, standard=False)[0] == _http.DEFAULT  # a configured endpoint
    assert _http.trust(str(pki["good"].ca), standard=True) == (_http.BUNDLE, str(pki["good"].ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["good"].ca))  # a file of one's own
    assert _http.trust(None, standard=True)[0] == _http.DEFAULT
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # another directory: added to the file
    assert _http.trust(None, standard=True)[0] == _http.DEFAULT
    monkeypatch.delenv("SSL_CERT_DIR")
    monkeypatch.setenv("SSL_CERT_URI", "file:/elsewhere")
    assert _http.trust(None, standard=True)[0] == _http.DEFAULT
    monkeypatch.delenv("SSL_CERT_URI")
    unhashed = tmp_path / "plain"
    unhashed.mkdir()
    (unhashed / "ca-bundle.crt").write_bytes(pki["good"].ca.read_bytes())
    monkeypatch.setattr(_http, "_defaults", lambda: (str(tmp_path / "default.pem"), str(unhashed)))
    _http.forget()
    assert _http.trust(None, standard=True)[0] == _http.DEFAULT


def test_the_fast_transport_marks_only_its_own_endpoints_standard() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
    own = _fast.FastTransport(env)
    configured = _fast.FastTransport({**env, "AWS_ENDPOINT_URL_KMS": "https://kms.example.com"})
    assert {name: pool._standard for name, pool in own._pools.items()} == dict.fromkeys(own._pools, True)
    assert configured._pools["kms"]._standard is False
    assert configured._pools["ssm"]._standard is True


SUBPROCESS_PROBE = """
import json, sys
from secretboot import _fast
pool = _fast._Pool(sys.argv[1], None, standard=True)
try:
    status = pool.send({"Host": pool.host_header}, b"{}", 5, 5)[0]
except Exception as exc:
    status = type(exc).__name__ + ": " + str(exc)
from secretboot import _http
print(json.dumps({"status": status, "trust": _http.trust(None, standard=True)}))
"""


def test_ssl_cert_dir_keeps_its_meaning_in_a_fresh_process(
    server: int, pki: dict[str, Pki], tmp_path: Path
) -> None:
    """SSL_CERT_DIR naming a directory of one's own: OpenSSL's default mode, which reads it."""
    folder = _hashed_dir(tmp_path / "certs", pki["good"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    url = f"https://localhost:{server}/"

    def run(**extra: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_PROBE, url],
            capture_output=True,
            text=True,
            check=True,
            env={**env, **extra},
            timeout=60,
        )
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    found = run(SSL_CERT_DIR=str(folder))
    assert found == {
        "status": 200,
        "trust": [_http.DEFAULT, f"SSL_CERT_FILE=None SSL_CERT_DIR={str(folder)!r}"],
    }
    absent = run(SSL_CERT_DIR=str(_hashed_dir(tmp_path / "empty", pki["other"])))
    assert "TLS certificate verification failed" in absent["status"]


# ----------------------------------------------------------------------------- import cost


def test_importing_secretboot_loads_no_ssl() -> None:
    code = (
        "import sys, json; import secretboot, secretboot._http;"
        "print(json.dumps(sorted(m for m in sys.modules if m in ('ssl', '_ssl'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) == []
