"""Serving the console: waitress (a production WSGI server) on the settings' host and port."""

from __future__ import annotations

import secrets
import sys

from flask import Flask
from waitress import serve

from settings import Settings

# Requests the console's server handles at once.
SERVER_THREADS = 8
# A demo operator's password: random, printed once, never stored in clear.
DEMO_PASSWORD_BYTES = 12


def serve_console(app: Flask, settings: Settings) -> None:
    """Serve `app` on TASKYARD_WEB_HOST:TASKYARD_WEB_PORT until the process is stopped."""
    print(f"Taskyard console on http://{settings.web_host}:{settings.web_port}/", file=sys.stderr)
    serve(
        app,
        host=settings.web_host,
        port=settings.web_port,
        threads=SERVER_THREADS,
        ident="taskyard",
    )


def demo_password() -> str:
    """A fresh password for the demo's operator."""
    return secrets.token_urlsafe(DEMO_PASSWORD_BYTES)
