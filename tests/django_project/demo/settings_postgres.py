"""Settings for the rotation tests: the database password lives in Secrets Manager.

As docs/django.md shows: values read with secretboot.getenv(), SECRETBOOT_REFRESH naming what
follows which variable, and the rotating PostgreSQL backend. The tests set DB_HOST, DB_PORT,
DB_PASSWORD (a secretsmanager: reference), DB_CONN_MAX_AGE and SECRETBOOT_MAX_AGE.
"""

import os

import secretboot
from demo.common import *  # noqa: F403

secretboot.bootstrap()
SECRET_KEY = secretboot.getenv("SECRET_KEY")

ROOT_URLCONF = "demo.urls_postgres"
_MAX_AGE = os.environ["DB_CONN_MAX_AGE"]
DATABASES = {
    "default": {
        "ENGINE": "secretboot.contrib.django.postgresql",
        "HOST": os.environ["DB_HOST"],
        "PORT": os.environ["DB_PORT"],
        "NAME": "app",
        "USER": "app",
        "PASSWORD": secretboot.getenv("DB_PASSWORD"),
        # "none": persistent connections (Django's None), else seconds (0: one per request)
        "CONN_MAX_AGE": None
        if os.environ["DB_CONN_MAX_AGE"] == "none"
        else int(os.environ["DB_CONN_MAX_AGE"]),
    }
}
SECRETBOOT_REFRESH = {
    "SECRET_KEY": "SECRET_KEY",
    "DATABASES": {"default": "DB_PASSWORD"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"pid": {"format": "pid=%(process)d %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "pid"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
