"""A local TLS front: HTTPS on 127.0.0.1 in front of an http:// server (the delay proxy, say).

    with TlsFront(proxy.url, latency=0.010) as front:
        env["AWS_ENDPOINT_URL"] = front.url          # https://127.0.0.1:<port>
        env["AWS_CA_BUNDLE"] = front.bundle_file     # the system roots + the throwaway CA
        ...
        front.handshakes                              # TLS handshakes completed so far

What real AWS endpoints cost a client, locally: TLS 1.3 only, a server certificate for
``127.0.0.1`` and ``localhost`` (RSA 2048, as AWS endpoints present, signed with SHA-256 by a
throwaway RSA 2048 CA), verification left to the client. The CA and the server key are made
for each front in its own temporary directory, which ``stop()`` deletes; nothing is written
anywhere else.

Trust material, as a real client loads it:

- ``ca_file``: the throwaway CA alone (what a test needs to verify the front).
- ``bundle_file``: the system CA bundle (``ssl.get_default_verify_paths().cafile``, about 140
  certificates on Debian) followed by the throwaway CA. A client on AWS loads the whole system
  bundle; that load is the cost being measured, so benchmarks give clients this file.
- ``aws_roots_file``: only the roots AWS endpoints chain to (Amazon Root CA 1 to 4 and
  Starfield Services Root Certificate Authority - G2, as found in the system bundle) followed
  by the throwaway CA: what a client pinned to AWS's roots would load.
- ``hashed_dir``: a c_rehash-style directory (``<subject hash>.<n>`` files, made by
  ``openssl rehash``) holding the same roots one per file, for clients that look roots up on
  demand (``SSL_CERT_DIR`` or ``load_verify_locations(capath=...)``).

Connections: each client connection gets its own thread, which sleeps ``latency`` (the round
trip a TLS 1.3 handshake adds on a network; it may be changed while running), completes the
handshake, opens one connection to the upstream and relays bytes both ways until either side
closes, so keep-alive is the upstream's and the client's business. ``handshakes`` counts
completed handshakes, ``failed_handshakes`` the ones a client refused (or that failed
otherwise), ``versions`` the negotiated protocol versions.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

UPSTREAM_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 10.0
_FALLBACK_SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_PEM_END = b"-----END CERTIFICATE-----"


def system_ca_file() -> str:
    """The system CA bundle a default ``SSLContext`` loads (raises when there is none)."""
    for candidate in (ssl.get_default_verify_paths().cafile, _FALLBACK_SYSTEM_BUNDLE):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError("no system CA bundle (ssl.get_default_verify_paths().cafile)")


def pem_certificates(data: bytes) -> list[bytes]:
    """The PEM certificate blocks in ``data``, each ending with its END line and a newline."""
    blocks = []
    start = data.find(b"-----BEGIN CERTIFICATE-----")
    while start != -1:
        end = data.index(_PEM_END, start) + len(_PEM_END)
        blocks.append(data[start:end] + b"\n")
        start = data.find(b"-----BEGIN CERTIFICATE-----", end)
    return blocks


def write_bundle(extra_ca_file: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """Write the system bundle followed by ``extra_ca_file``'s certificates to ``path``."""
    system = Path(system_ca_file()).read_bytes()
    if not system.endswith(b"\n"):
        system += b"\n"
    Path(path).write_bytes(system + b"".join(pem_certificates(Path(extra_ca_file).read_bytes())))
    return os.fspath(path)


AWS_ROOTS = (
    "CN=Amazon Root CA 1,O=Amazon,C=US",
    "CN=Amazon Root CA 2,O=Amazon,C=US",
    "CN=Amazon Root CA 3,O=Amazon,C=US",
    "CN=Amazon Root CA 4,O=Amazon,C=US",
    "CN=Starfield Services Root Certificate Authority - G2,O=Starfield Technologies\\, Inc.,"
    "L=Scottsdale,ST=Arizona,C=US",
)


def write_aws_roots(extra_ca_file: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """Write the system bundle's ``AWS_ROOTS`` (those it has) and ``extra_ca_file``'s certificates."""
    from cryptography import x509

    kept = []
    for block in pem_certificates(Path(system_ca_file()).read_bytes()):
        try:
            with warnings.catch_warnings():  # a few old roots have non-positive serial numbers
                warnings.simplefilter("ignore")
                subject = x509.load_pem_x509_certificate(block).subject.rfc4514_string()
        except ValueError:
            continue
        if subject in AWS_ROOTS:
            kept.append(block)
    Path(path).write_bytes(b"".join(kept + pem_certificates(Path(extra_ca_file).read_bytes())))
    return os.fspath(path)


def write_hashed_dir(bundle_file: str | os.PathLike[str], directory: str | os.PathLike[str]) -> str:
    """A c_rehash-style directory of ``bundle_file``'s certificates, one per file.

    Each certificate is written as ``cert-NNN.pem``; ``openssl rehash`` then adds the
    ``<subject hash>.<n>`` links OpenSSL's directory lookup opens on demand.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    blocks = pem_certificates(Path(bundle_file).read_bytes())
    for i, block in enumerate(blocks):
        (target / f"cert-{i:03d}.pem").write_bytes(block)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl (for openssl rehash) is not on PATH")
    subprocess.run([openssl, "rehash", os.fspath(target)], check=True, capture_output=True, timeout=60)
    return os.fspath(target)


def make_certificates(directory: str | os.PathLike[str]) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, written into ``directory``.

    Returns (CA certificate file, server certificate file, server key file). RSA 2048 keys,
    SHA-256 signatures; valid from a day ago for a week.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secretboot tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"secretboot throwaway CA {os.urandom(4).hex()}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = Path(directory)
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key_bytes)
    return os.fspath(ca_file), os.fspath(cert_file), os.fspath(key_file)


class TlsFront:
    """HTTPS (TLS 1.3) on 127.0.0.1, relayed to ``upstream`` (an http:// URL); see the module doc."""

    def __init__(self, upstream: str, *, latency: float = 0.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("upstream must be an http:// URL")
        self._upstream = (parts.hostname, parts.port or 80)
        self.latency = latency
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file = ""
        self._bundle_file = ""
        self._aws_roots_file = ""
        self._hashed_dir = ""
        self.handshakes = 0
        self.failed_handshakes = 0
        self.versions: Counter[str] = Counter()

    # -- trust material ------------------------------------------------------------------------

    def _dir(self) -> Path:
        if self._tempdir is None:
            raise RuntimeError("the front is not running: call start() first")
        return Path(self._tempdir.name)

    @property
    def ca_file(self) -> str:
        """The throwaway CA's certificate (PEM)."""
        self._dir()
        return self._ca_file

    @property
    def bundle_file(self) -> str:
        """The system CA bundle plus the throwaway CA (written on first use)."""
        folder = self._dir()
        if not self._bundle_file:
            self._bundle_file = write_bundle(self._ca_file, folder / "bundle.pem")
        return self._bundle_file

    @property
    def aws_roots_file(self) -> str:
        """AWS's roots from the system bundle plus the throwaway CA (written on first use)."""
        folder = self._dir()
        if not self._aws_roots_file:
            self._aws_roots_file = write_aws_roots(self._ca_file, folder / "aws-roots.pem")
        return self._aws_roots_file

    @property
    def hashed_dir(self) -> str:
        """A hashed directory of the bundle's certificates, for ``SSL_CERT_DIR`` (made on first use)."""
        folder = self._dir()
        if not self._hashed_dir:
            self._hashed_dir = write_hashed_dir(self.bundle_file, folder / "hashed")
        return self._hashed_dir

    # -- serving -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("the front is not running: call start() first")
        host, port = self._listener.getsockname()[:2]
        return f"https://{host}:{port}"

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("the front is already running")
        self._tempdir = tempfile.TemporaryDirectory(prefix="secretboot-tlsfront-")
        try:
            self._ca_file, cert_file, key_file = make_certificates(self._tempdir.name)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.load_cert_chain(cert_file, key_file)
            self._context = context
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)  # many clients connect at once
            listener.settimeout(0.05)  # the accept loop notices stop() this often
        except BaseException:
            self._tempdir.cleanup()
            self._tempdir = None
            raise
        self._stopping.clear()
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="tlsfront", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        if self._listener is None:
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=10)
        self._listener.close()
        self._listener = None
        with self._lock:
            open_sockets, threads = list(self._open), list(self._threads)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=10)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        self._ca_file = self._bundle_file = self._aws_roots_file = self._hashed_dir = ""

    def __enter__(self) -> TlsFront:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.handshakes = 0
            self.failed_handshakes = 0
            self.versions.clear()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(HANDSHAKE_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(raw,), name="tlsfront-conn", daemon=True)
            with self._lock:
                self._open.add(raw)
                self._threads.add(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        upstream: socket.socket | None = None
        tls: ssl.SSLSocket | None = None
        try:
            if self.latency > 0:
                time.sleep(self.latency)  # the handshake's round trip
            try:
                tls = self._context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                with self._lock:
                    self.failed_handshakes += 1
                return
            with self._lock:
                self._open.discard(raw)  # wrap_socket detached it: the TLS socket owns the descriptor
                self._open.add(tls)
                self.handshakes += 1
                self.versions[tls.version() or "?"] += 1
            upstream = socket.create_connection(self._upstream, timeout=UPSTREAM_TIMEOUT)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.add(upstream)
            tls.settimeout(IDLE_TIMEOUT)
            self._relay(tls, upstream)
        except (OSError, ssl.SSLError):
            pass  # a side hung up or the front is stopping
        finally:
            for sock in (upstream, tls, raw):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            with self._lock:
                self._open.difference_update(s for s in (raw, tls, upstream) if s is not None)
                self._threads.discard(threading.current_thread())

    def _relay(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        # One thread per connection: an SSL object must not be read and written from two.
        while not self._stopping.is_set():
            if tls.pending():
                ready = [tls]
            else:
                ready, _, _ = select.select([tls, upstream], [], [], IDLE_TIMEOUT)
                if not ready:
                    return  # idle too long
            for sock in ready:
                if sock is tls:
                    try:
                        data = tls.recv(65536)
                    except ssl.SSLWantReadError:
                        continue  # a record that carried no application data
                    if not data:
                        return  # the client closed
                    upstream.sendall(data)
                else:
                    data = upstream.recv(65536)
                    if not data:
                        return  # the upstream closed: close the client's connection too
                    tls.sendall(data)
