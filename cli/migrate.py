"""`taskyard migrate`: the database's schema to head; `migrate-queues`: queues to their kind."""

from __future__ import annotations

from typing import TypedDict

import click
from sqlalchemy import make_url

from cli.common import CommandFailed, State, json_option, main, run, shown_url
from cli.render import emit
from db.migrate import ensure_database, upgrade_to_head
from settings import QUEUE_TYPES


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


class QueueMigrationInfo(TypedDict):
    """What `taskyard migrate-queues` did to one queue."""

    queue: str
    outcome: str
    messages: int


def _print_queue_migration(infos: list[QueueMigrationInfo]) -> None:
    for info in infos:
        moved = f" ({info['messages']} message(s) moved)" if info["outcome"] == "migrated" else ""
        click.echo(f"{info['queue']}: {info['outcome']}{moved}")


@main.command("migrate-queues")
@click.option(
    "--to",
    "queue_type",
    type=click.Choice(QUEUE_TYPES),
    default=None,
    help="The kind of queue to move to (default: TASKYARD_QUEUE_TYPE).",
)
@json_option
@click.pass_context
def migrate_queues(ctx: click.Context, queue_type: str | None, as_json: bool) -> None:
    """Give every existing Taskyard queue the kind asked for, keeping its messages.

    Stop every worker first (a queue with consumers is refused).  Each queue's
    messages wait in a `<queue>.migrating` queue while it is declared anew;
    run the command again to finish a run that was interrupted.
    """
    # Here, not at the top: `taskyard migrate` needs no broker code.
    from services.tenants import list_tenants
    from transport.queue_migration import QueueMigration, QueuesInUse
    from transport.rabbitmq import TaskyardRabbitmqBroker

    state = ctx.ensure_object(State)
    settings = state.load_settings()
    if settings.uses_stub_broker:
        raise CommandFailed("the in-process broker (BROKER_URL=stub://) keeps no queues to migrate")
    target = queue_type or settings.queue_type
    # Every queue an actor declares (the system queue, plain actors'), and every tenant's.
    canonicals = set(state.load_broker().get_declared_queues())
    canonicals.add(settings.system_queue)
    tenant_ids = run(ctx, lambda session: [t.id for t in list_tenants(session)])
    canonicals.update(settings.tenant_queue(tenant_id) for tenant_id in tenant_ids)
    shape = TaskyardRabbitmqBroker(url=settings.broker_url, queue_type=target, middleware=[])
    try:
        with QueueMigration(settings.broker_url, shape.arguments_of) as migration:
            moved = migration.migrate_all(sorted(canonicals))
    except QueuesInUse as busy:
        raise CommandFailed(str(busy)) from None
    infos: list[QueueMigrationInfo] = [
        {"queue": m.queue, "outcome": m.outcome, "messages": m.messages} for m in moved
    ]
    emit(infos, as_json, _print_queue_migration)
