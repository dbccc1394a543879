"""Django integration: add ``"secretboot.contrib.django"`` to ``INSTALLED_APPS``.

Settings need only the core API (see docs/django.md)::

    import secretboot
    from secretboot.contrib.django import fallbacks

    secretboot.bootstrap()
    SECRET_KEY = secretboot.getenv("SECRET_KEY")
    SECRET_KEY_FALLBACKS = fallbacks("SECRET_KEY_FALLBACK")

The app adds a system check that fails start-up when a secret setting still holds
a reference or KMS ciphertext (``secretboot.E001``; ``secretboot.W001`` for any
other setting), and the ``secretboot_check`` management command. Importing this
package imports no Django code and changes nothing, so settings can use it.
"""

from __future__ import annotations

import secretboot


def fallbacks(*names: str) -> list[str]:
    """For ``SECRET_KEY_FALLBACKS``: the resolved values of the variables ``names``, in order.

    Each is read with ``secretboot.getenv`` (which bootstraps first if needed),
    so old keys are resolved exactly like ``SECRET_KEY``. Unset or empty
    variables are left out: delete the variable when the rollout is over.
    """
    if not all(isinstance(name, str) for name in names):
        raise TypeError("fallbacks() takes variable names: fallbacks('SECRET_KEY_FALLBACK', ...)")
    # One expression: if a later name fails, no local of this frame holds the earlier
    # keys (error reporters capture frame locals).
    return [key for key in [secretboot.getenv(name) for name in names] if key]


__all__ = ["fallbacks"]
