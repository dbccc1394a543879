"""The app Django loads for ``"secretboot.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class SecretbootConfig(AppConfig):
    name = "secretboot.contrib.django"
    label = "secretboot"
    verbose_name = "secretboot"

    def ready(self) -> None:
        from django.core import checks

        from secretboot.contrib.django.checks import check_settings

        # Not a deploy-only check: it runs on check, runserver, migrate and the test runner.
        checks.register(check_settings, checks.Tags.security)
