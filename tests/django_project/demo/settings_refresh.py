"""Settings that follow refreshes: SECRETBOOT_REFRESH names the variable behind each secret setting.

FOLLOW_KEY (tests only) names the variable SECRET_KEY is said to follow, so a test can make the
declaration disagree with the setting (secretboot.E002).
"""

import os

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
        "PASSWORD": secretboot.getenv("DB_PASSWORD"),
    }
}
SECRETBOOT_REFRESH = {
    "SECRET_KEY": os.environ.get("FOLLOW_KEY", "SECRET_KEY"),
    "SECRET_KEY_FALLBACKS": ["SECRET_KEY_FALLBACK"],
    "DATABASES": {"default": "DB_PASSWORD"},
}
