"""A small real Flask app that loads its secrets with secretboot.

Loaded by tests/test_flask.py and by ``python -m flask --app tests.flask_app:create_app``.
Its session cookie and its ``/token`` tokens are signed with the resolved ``SECRET_KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, abort, current_app, request, session
from itsdangerous import BadSignature, URLSafeTimedSerializer

from secretboot.contrib.flask import SecretBoot

TOKEN_SALT = "tests.flask_app.token"

boot = SecretBoot()


def create_app(extension: SecretBoot = boot, config: Mapping[str, Any] | None = None) -> Flask:
    """The app factory: every call builds a new app; secretboot resolves once per process."""
    app = Flask(__name__)
    if config:
        app.config.from_mapping(config)
    extension.init_app(app)
    add_views(app)
    return app


def add_views(app: Flask) -> None:
    """A session view pair and an itsdangerous token pair, all keyed by ``SECRET_KEY``."""

    @app.post("/login")
    def login() -> str:
        session["user"] = request.form["user"]
        return "ok"

    @app.get("/whoami")
    def whoami() -> str:
        user: str = session.get("user", "anonymous")
        return user

    @app.get("/token")
    def token() -> str:
        return str(_tokens().dumps({"user": request.args["user"]}))

    @app.get("/verify")
    def verify() -> str:
        try:
            data = _tokens().loads(request.args["token"], max_age=3600)
        except BadSignature:
            abort(400)
        user: str = data["user"]
        return user


def _tokens() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT)
