"""The app Django loads for ``"secretboot.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class SecretbootConfig(AppConfig):
    name = "secretboot.contrib.django"
    label = "secretboot"
    verbose_name = "secretboot"

    def ready(self) -> None:
        from django.core import checks

        from secretboot.contrib.django import _refresh
        from secretboot.contrib.django.checks import check_refresh, check_settings

        # Not deploy-only checks: they run on check, runserver, migrate and the test runner.
        checks.register(check_settings, checks.Tags.security)
        checks.register(check_refresh, checks.Tags.security)
        # SECRETBOOT_REFRESH: the settings it names follow every refresh (secretboot.on_refresh).
        _refresh.install()
