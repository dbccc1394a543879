"""secretboot: resolve KMS ciphertext and SSM references from the environment once.

    import secretboot
    secrets = secretboot.bootstrap()
    password = secrets["DB_PASSWORD"]

Importing this package is cheap and changes nothing; AWS code is imported only
when ``bootstrap()`` finds a reference to resolve.
"""

from secretboot._bootstrap import bootstrap, getenv, reset
from secretboot._errors import (
    BootstrapError,
    ConfigurationError,
    Failure,
    ReferenceSyntaxError,
    SecretbootError,
)
from secretboot._keyring import Keyring
from secretboot._reference import KmsReference, SsmReference, is_reference, parse_reference

__version__ = "0.1.0"

__all__ = [
    "BootstrapError",
    "ConfigurationError",
    "Failure",
    "Keyring",
    "KmsReference",
    "ReferenceSyntaxError",
    "SecretbootError",
    "SsmReference",
    "bootstrap",
    "getenv",
    "is_reference",
    "parse_reference",
    "reset",
]
