"""Settings that load their secrets with secretboot, as docs/django.md shows."""

import secretboot
from demo.common import *  # noqa: F403
from secretboot.contrib.django import fallbacks

secretboot.bootstrap()
SECRET_KEY = secretboot.getenv("SECRET_KEY")
SECRET_KEY_FALLBACKS = fallbacks("SECRET_KEY_FALLBACK")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "PASSWORD": secretboot.getenv("DB_PASSWORD", ""),
    }
}
