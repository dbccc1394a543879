"""secretboot: resolve KMS ciphertext, sealed values and SSM and Secrets Manager references
from the environment once.

    import secretboot
    secrets = secretboot.bootstrap()
    password = secrets["DB_PASSWORD"]

Importing this package is cheap and changes nothing; AWS code is imported only
when ``bootstrap()`` finds a reference to resolve.
"""

from secretboot._bootstrap import bootstrap, getenv, on_refresh, prefetch, refresh_now, reset
from secretboot._errors import (
    BootstrapError,
    ConfigurationError,
    Failure,
    ReferenceSyntaxError,
    SecretbootError,
    StaleError,
)
from secretboot._keyring import Keyring
from secretboot._reference import (
    KmsReference,
    SealedReference,
    SecretsManagerReference,
    SsmReference,
    is_reference,
    parse_reference,
)

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from secretboot._logfilter import SecretFilter


def __getattr__(name: str) -> object:
    # SecretFilter needs the logging module: imported only when asked for.
    if name == "SecretFilter":
        from secretboot._logfilter import SecretFilter

        return SecretFilter
    raise AttributeError(f"module 'secretboot' has no attribute {name!r}")


__all__ = [
    "BootstrapError",
    "ConfigurationError",
    "Failure",
    "Keyring",
    "KmsReference",
    "ReferenceSyntaxError",
    "SealedReference",
    "SecretFilter",
    "SecretbootError",
    "SecretsManagerReference",
    "SsmReference",
    "StaleError",
    "bootstrap",
    "getenv",
    "is_reference",
    "on_refresh",
    "parse_reference",
    "prefetch",
    "refresh_now",
    "reset",
]
