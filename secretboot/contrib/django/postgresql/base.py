"""Django's PostgreSQL backend with ``RotatingPassword``: the ``DatabaseWrapper`` Django loads."""

from __future__ import annotations

from django.db.backends.postgresql import base

from secretboot.contrib.django.db import RotatingPassword

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(RotatingPassword, base.DatabaseWrapper):
    """``django.db.backends.postgresql`` whose password follows secretboot (docs/django.md)."""
