"""The process's TLS: one ``SSLContext`` per trust configuration, built once, on first use.

Loading a CA bundle into a context costs 25 to 50 ms of CPU (OpenSSL parses every
certificate), more than all of a cold start's handshakes together, and loading it into a
second context costs it again. So every service's connection pool (``_fast``) and the
credential providers over HTTPS (``_credsources``) share one context per process and trust
configuration, built under a lock on first use:

- ``BUNDLE``: ``AWS_CA_BUNDLE`` (or a profile's ``ca_bundle``) is set: exactly that file, as
  boto3 loads it, for every endpoint.
- ``DIRECTORY``: a standard AWS endpoint (one secretboot names itself, ``*.amazonaws.com``),
  no ``AWS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR`` and ``SSL_CERT_URI`` unset or naming
  OpenSSL's defaults, and OpenSSL's default directory hashed (``<subject hash>.<n>`` names, as
  ``update-ca-certificates`` and ``openssl rehash`` make them): that directory alone. OpenSSL
  reads a root from it only when a chain asks for that subject, so a handshake with AWS reads
  one file, not the bundle. If verification fails, the connection is made again with the
  ``DEFAULT`` context, so what is accepted is exactly what ``DEFAULT`` accepts.
- ``DEFAULT``: anything else (custom endpoints included): OpenSSL's default file and directory
  (and ``SSL_CERT_FILE``, ``SSL_CERT_DIR``), what ``ssl.create_default_context()`` loads.

Verification is always on: ``CERT_REQUIRED``, host names checked, TLS 1.2 at least. Importing
this module does not import ``ssl``; the global ``ssl`` module is never changed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from secretboot import _retry
from secretboot import _transport as t

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    import http.client
    import ssl

BUNDLE = "bundle"
DIRECTORY = "directory"
DEFAULT = "default"

_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
_modes: dict[int, str] = {}  # id(context) -> mode, for the fallback
_hashed_dirs: dict[str, bool] = {}
_directory_failed = False  # once the directory could not verify a peer, DEFAULT serves
_lock = threading.Lock()


def _defaults() -> tuple[str, str]:
    """OpenSSL's compiled-in CA file and directory (a seam for tests, in a subprocess)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    return paths.openssl_cafile, paths.openssl_capath


def trust(ca_bundle: str | None = None, *, standard: bool = False) -> tuple[str, str]:
    """(mode, location) of the context for ``ca_bundle`` and an endpoint: also its cache key.

    ``standard`` says the endpoint is one secretboot named itself (``*.amazonaws.com``).
    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are read at call time from the process's
    environment, as OpenSSL reads them.
    """
    if ca_bundle:
        return BUNDLE, ca_bundle
    cert_file = os.environ.get("SSL_CERT_FILE")
    cert_dir = os.environ.get("SSL_CERT_DIR")
    if standard and not _directory_failed and os.name == "posix" and "SSL_CERT_URI" not in os.environ:
        default_file, default_dir = _defaults()
        if (
            (cert_file is None or _same(cert_file, default_file))
            and (cert_dir is None or _same(cert_dir, default_dir))
            and _hashed(default_dir)
        ):
            return DIRECTORY, default_dir
    return DEFAULT, f"SSL_CERT_FILE={cert_file!r} SSL_CERT_DIR={cert_dir!r}"


def context(ca_bundle: str | None = None, *, standard: bool = False) -> ssl.SSLContext:
    """The process's client context for ``ca_bundle`` (``AWS_CA_BUNDLE``) and an endpoint."""
    return _context(*trust(ca_bundle, standard=standard))


def _context(mode: str, location: str) -> ssl.SSLContext:
    with _lock:
        found = _contexts.get((mode, location))
        if found is None:
            found = _contexts[(mode, location)] = _build(mode, location)
            _modes[id(found)] = mode
        return found


def _build(mode: str, location: str) -> ssl.SSLContext:
    import ssl

    if mode == BUNDLE:
        made = ssl.create_default_context(cafile=location)
    elif mode == DIRECTORY:
        made = ssl.create_default_context(capath=location)
    else:
        made = ssl.create_default_context()
    # create_default_context's defaults, stated: a change there must not loosen them here.
    made.verify_mode = ssl.CERT_REQUIRED
    made.check_hostname = True
    if made.minimum_version < ssl.TLSVersion.TLSv1_2:
        made.minimum_version = ssl.TLSVersion.TLSv1_2
    return made


def connect(
    make: Callable[[ssl.SSLContext], http.client.HTTPSConnection],
    ca_bundle: str | None,
    *,
    standard: bool,
    where: str,
) -> http.client.HTTPSConnection:
    """A connected ``make(context)``; a failed verification is a ``TransportError``.

    It is retried like other connection errors: a load balancer's node may be serving a
    certificate being rotated. A ``DIRECTORY`` context that cannot verify the peer gives way
    to the ``DEFAULT`` one, for this connection and every later one in the process.
    ``where`` names the endpoint (host:port) for the message; no certificate is ever shown.
    """
    import ssl

    chosen = context(ca_bundle, standard=standard)
    while True:
        conn = make(chosen)
        try:
            conn.connect()
            return conn
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            code, message = exc.verify_code, str(exc.verify_message or "")[:120]
        except BaseException:
            conn.close()
            raise
        if _modes.get(id(chosen)) == DIRECTORY:
            global _directory_failed
            _directory_failed = True
            chosen = _context(*trust(ca_bundle))
            continue
        # Raised outside the except block: nothing of the handshake rides along as context.
        raise t.TransportError(
            t.CONNECTION_ERROR,
            f"TLS certificate verification failed for {where}: {message} (code {code})",
            backoff=_retry.TRANSIENT_BASE,
        )


def _same(a: str, b: str) -> bool:
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def _hashed(directory: str) -> bool:
    """Whether ``directory`` holds OpenSSL's hash names (``0123abcd.0``); remembered per process."""
    known = _hashed_dirs.get(directory)
    if known is None:
        known = False
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    hexdigits = all(c in "0123456789abcdef" for c in name[:8])
                    if len(name) > 9 and name[8] == "." and name[9:].isdigit() and hexdigits:
                        known = True
                        break
        except OSError:
            pass
        _hashed_dirs[directory] = known
    return known


def forget() -> None:
    """Drop the contexts (tests); a fork's child keeps them, with a fresh lock."""
    global _directory_failed
    _contexts.clear()
    _modes.clear()
    _hashed_dirs.clear()
    _directory_failed = False
    _after_fork()


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a fork may have copied it held


if hasattr(os, "register_at_fork"):
    # The contexts hold trust roots only: a worker forked from a parent that built one keeps it.
    os.register_at_fork(after_in_child=_after_fork)
