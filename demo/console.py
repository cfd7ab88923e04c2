"""`taskyard demo --web`: the web console on the demo's SQLite records, until Ctrl-C."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from dramatiq.broker import Broker
from sqlalchemy.orm import sessionmaker

from cli.common import CommandFailed
from db.models import WEB_ADMIN
from db.session import make_engine
from services.web_users import add_web_user, find_web_user, remove_web_user
from settings import load_settings

DEMO_USER = "demo"


def _no_broker() -> Broker:
    raise CommandFailed(
        "the demo's console reads the demo's records, and its in-process broker stopped with "
        "the demo: requeue, retry, run now and delete need `make run` and `taskyard web`"
    )


def serve_demo_console(workdir: Path) -> None:
    """Serve the console on the demo's database, with an admin `demo` and a fresh password."""
    from demo import demo_environment
    from web.app import create_app
    from web.serve import demo_password, serve_console

    database_url = demo_environment(workdir)["DATABASE_URL"]
    settings = dataclasses.replace(load_settings(), database_url=database_url)
    engine = make_engine(settings)
    password = demo_password()
    with sessionmaker(engine).begin() as session:
        if find_web_user(session, DEMO_USER) is not None:
            remove_web_user(session, DEMO_USER)
        add_web_user(session, DEMO_USER, password=password, role=WEB_ADMIN)
    click.echo(f"Sign in as {DEMO_USER!r} with password {password} (made for this run only)")
    serve_console(create_app(settings, engine=engine, load_broker=_no_broker), settings)
