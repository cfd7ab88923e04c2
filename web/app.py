"""The console's Flask app: its parts, its defences, its filters and its error pages."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dramatiq.broker import Broker
from flask import Flask, current_app, render_template, request
from markupsafe import Markup, escape
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import HTTPException, InternalServerError

from cli.common import describe_error
from cli.render import duration
from db.session import make_engine
from services.redaction import redact_text, redact_value
from settings import Settings
from web import assets, dead_letters, jobs, overview, schedules, tenants, workers
from web.auth import LIMITER, load_operator
from web.auth import bp as auth_bp
from web.batches import Batches
from web.console import EXTENSION, Console, load_installed_broker
from web.security import SignInLimiter, add_security_headers, check_csrf, csrf_token

logger = logging.getLogger(__name__)
# Forms are small; anything larger is not one of the console's.
MAX_REQUEST_BYTES = 1024 * 1024


def _parse(iso: str | None) -> dt.datetime | None:
    if not iso:
        return None
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def when(iso: str | None) -> Markup:
    """A moment as `<time>`: UTC in the page, the viewer's zone once console.js has run."""
    moment = _parse(iso)
    if moment is None:
        return Markup("-")
    utc = moment.astimezone(dt.UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(utc.isoformat(), text, text)


def in_zone(iso: str | None, zone: str) -> str:
    """A moment in a named zone (a schedule's own), as text."""
    moment = _parse(iso)
    if moment is None:
        return "-"
    try:
        return moment.astimezone(ZoneInfo(zone)).strftime(f"%Y-%m-%d %H:%M {zone}")
    except (ZoneInfoNotFoundError, ValueError):
        return "-"


def pretty(value: Any) -> str:
    """A JSON value for a person, secrets redacted (Jinja escapes it where it is shown)."""
    return json.dumps(redact_value(value), indent=2, ensure_ascii=False, default=str)


def _error_page(error: HTTPException) -> tuple[str, int]:
    code = error.code or 500
    return render_template("error.html", code=code, error=error), code


def _failure_page(error: Exception) -> tuple[str, int]:
    """Any other error: one line in the command line's words (a database down, say), logged."""
    settings = current_app.extensions[EXTENSION].settings
    _code, message = describe_error(error, settings.database_url, settings.broker_url)
    logger.error("console request %s %s failed: %s", request.method, request.path, message)
    failure = InternalServerError(description=message)
    return render_template("error.html", code=500, error=failure), 500


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    load_broker: Callable[[], Broker] = load_installed_broker,
    limiter: SignInLimiter | None = None,
) -> Flask:
    """The console on `settings`' database (or `engine`), acting on `load_broker()`'s broker."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.web_secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_NAME="taskyard_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web_cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=settings.web_session_minutes),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    sessions = sessionmaker(engine or make_engine(settings), expire_on_commit=False)
    app.extensions[EXTENSION] = Console(settings, sessions, load_broker)
    app.extensions[LIMITER] = limiter or SignInLimiter()
    app.extensions[dead_letters.BATCHES] = Batches()
    app.before_request(load_operator)
    app.before_request(check_csrf)
    app.after_request(add_security_headers)
    assets.install(app)
    for blueprint in (
        auth_bp,
        overview.bp,
        jobs.bp,
        dead_letters.bp,
        schedules.bp,
        tenants.bp,
        workers.bp,
    ):
        app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, _error_page)
    app.register_error_handler(Exception, _failure_page)
    app.jinja_env.globals.update(csrf_token=csrf_token)
    app.jinja_env.filters.update(
        when=when,
        in_zone=in_zone,
        pretty=pretty,
        redact=redact_text,
        age=duration,
        e=escape,
    )
    return app
