"""Database passwords that rotate: a mixin for Django's ``DatabaseWrapper`` classes.

``secretboot.contrib.django.postgresql`` is Django's PostgreSQL backend with this mixin. For
another backend, subclass it as Django documents for custom backends (a package whose
``base.py`` defines ``DatabaseWrapper``) and say what a failed login looks like::

    # myproject/mysql_rotating/base.py
    from django.db.backends.mysql import base
    from secretboot.contrib.django.db import RotatingPassword

    class DatabaseWrapper(RotatingPassword, base.DatabaseWrapper):
        def is_authentication_failure(self, error):
            return getattr(error, "args", (None,))[0] == 1045  # ER_ACCESS_DENIED_ERROR

For an alias whose password variable ``SECRETBOOT_REFRESH["DATABASES"]`` names:

- a login that fails for the password calls ``secretboot.refresh_now([variable])`` (rate
  limited per variable) and, when that brought a password other than the one just refused,
  connects once more with it. A second failure is raised as Django raises it.
- after a refresh changed the password (by age, ``refresh_now`` in any thread, a SnapStart
  restore), an open connection made with the old one is closed before its next query outside
  a transaction, and the query reconnects with the new one.

Connection pools (``OPTIONS["pool"]``, Django 5.1+) keep the password they were opened with
and are left alone.
"""

from __future__ import annotations

import logging
from typing import Any

import secretboot
from secretboot._errors import SecretbootError
from secretboot.contrib.django import _refresh

__all__ = ["RotatingPassword"]

logger = logging.getLogger("secretboot.contrib.django")


class RotatingPassword:
    """Mixin for a ``DatabaseWrapper``: refresh the password on a failed login, reconnect after a refresh."""

    # Provided by Django's BaseDatabaseWrapper.
    alias: str
    connection: Any
    settings_dict: dict[str, Any]
    in_atomic_block: bool
    autocommit: bool
    Database: Any
    _secretboot_generation: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _refresh.install()  # idempotent: the app's ready() registers the same hook

    def is_authentication_failure(self, error: BaseException) -> bool:
        """Whether ``error``, raised by ``get_new_connection``, means the password was refused.

        PostgreSQL's way: SQLSTATE 28P01 (invalid_password), or, since libpq reports a failed
        login before any result exists and psycopg then has no SQLSTATE, the server's sentence
        (with ``lc_messages`` C or English). Other backends override this.
        """
        sqlstate: Any = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        return sqlstate == "28P01" or "password authentication failed" in str(error)

    def get_connection_params(self) -> dict[str, Any]:
        # The generation first, the password second: a refresh in between can only make
        # this connection look older than it is (one reconnect too many), never newer.
        self._secretboot_generation = _refresh.generation(self.alias)
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        return params

    def ensure_connection(self) -> None:
        if (
            self.connection is not None
            and self._secretboot_generation is not None
            and self._secretboot_generation != _refresh.generation(self.alias)
            and not self.in_atomic_block
            and self.autocommit
        ):
            logger.info("closing the %r database connection: its password has been refreshed", self.alias)
            self.close()  # type: ignore[attr-defined]
        super().ensure_connection()  # type: ignore[misc]

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        variable = _refresh.password_variable(self.alias)
        if variable is None or getattr(self, "pool", None):
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        refused: BaseException | None = None
        try:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        except self.Database.OperationalError as exc:
            _forget_connection(exc)
            if not self.is_authentication_failure(exc):
                raise
            refused = exc
        # Outside the except block: what follows raises nothing chained to the refused login.
        generation = _refresh.generation(self.alias)
        password = _fresh_password(self.alias, variable, conn_params.get("password"))
        if password is None:
            raise refused
        del refused
        logger.warning(
            "the %r database refused the password in %s; connecting again with the refreshed one",
            self.alias,
            variable,
        )
        connection = super().get_new_connection({**conn_params, "password": password})  # type: ignore[misc]
        # The password is at least as new as the generation read before it.
        self._secretboot_generation = generation
        return connection


def _fresh_password(alias: str, variable: str, refused: object) -> str | None:
    """The variable's value after ``refresh_now``, if it is not the one just refused."""
    try:
        secretboot.refresh_now([variable])
    except SecretbootError as exc:  # not booted, or the refresh failed: its message has no value
        logger.warning(
            "the %r database refused the password in %s, and refreshing it failed: %s",
            alias,
            variable,
            type(exc).__name__,
        )
        return None
    password = secretboot.getenv(variable)
    if not password or password == refused:
        logger.warning(
            "the %r database refused the password in %s, and secretboot holds no newer one", alias, variable
        )
        return None
    return password


def _forget_connection(error: BaseException) -> None:
    """psycopg 3 keeps the failed connection on the error, the password among its fields."""
    if getattr(error, "_pgconn", None) is not None:
        error._pgconn = None  # type: ignore[attr-defined]
