"""`taskyard migrate`: create the database if missing and bring its schema to head."""

from __future__ import annotations

from typing import TypedDict

import click
from sqlalchemy import make_url

from cli.common import State, json_option, main, shown_url
from cli.render import emit
from db.migrate import ensure_database, upgrade_to_head


class MigrateInfo(TypedDict):
    """What `taskyard migrate` did."""

    database: str | None
    url: str
    created: bool
    revision: str


def _print_migrate(info: MigrateInfo) -> None:
    created = "created and " if info["created"] else ""
    click.echo(f"database {info['database']} {created}is at revision {info['revision']}")


@main.command()
@json_option
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Create the database if missing and bring its schema up to date."""
    url = ctx.ensure_object(State).load_settings().database_url
    created = ensure_database(url)
    revision = upgrade_to_head(url)
    info: MigrateInfo = {
        "database": make_url(url).database,
        "url": shown_url(url),
        "created": created,
        "revision": revision,
    }
    emit(info, as_json, _print_migrate)
