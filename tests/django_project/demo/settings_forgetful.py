"""Settings that forget secretboot and read os.environ: every reference lands in a setting.

This is the silent failure the system check exists for: the ciphertext itself would
become the signing key and the database password.
"""

import os

from demo.common import *  # noqa: F403

SECRET_KEY = os.environ["SECRET_KEY"]
SECRET_KEY_FALLBACKS = [os.environ["SECRET_KEY_FALLBACK"]]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "OPTIONS": {"PASSWORD": os.environ.get("CACHE_PASSWORD", "")},
    }
}
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
PAYMENTS_API_KEY = os.environ.get("PAYMENTS_API_KEY", "")
