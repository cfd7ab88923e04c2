"""`taskyard integration ...`: a tenant's connections to outside systems, and their syncs."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session

from cli.common import (
    ID,
    State,
    TenantWasFirst,
    json_argument,
    json_option,
    main,
    remove_command,
    run,
    tenant_option,
    transaction_command,
)
from cli.render import emit, records_printer, value_printer
from services.integrations import (
    IntegrationInfo,
    add_integration,
    get_integration,
    integration_info,
    list_integrations,
    remove_integration,
)


@main.group()
def integration() -> None:
    """Add, list, remove and sync a tenant's integrations (github, http_feed)."""


@integration.command("add", cls=TenantWasFirst)
@tenant_option("The tenant it belongs to.", required=True)
@click.argument("kind")
@click.option("--config", "raw_config", metavar="JSON", required=True, help="A JSON object.")
@json_option
@click.pass_context
def integration_add(
    ctx: click.Context, tenant_id: int, kind: str, raw_config: str, as_json: bool
) -> None:
    """Connect a tenant to an outside system of KIND; prints the integration's id.

    Its URLs must pass the outbound URL guard now; a feed URL's user name and
    password go to the tenant's locker, not to the stored config.
    """
    config = json_argument(raw_config, "--config")
    settings = ctx.ensure_object(State).load_settings()

    def add(session: Session) -> IntegrationInfo:
        integration = add_integration(
            session,
            tenant_id,
            kind,
            config,
            allow_private=settings.http_allow_private,
            secret_keys=settings.secret_keys,
        )
        return integration_info(integration)

    emit(run(ctx, add), as_json, value_printer("id"))


@transaction_command(
    integration,
    "list",
    records_printer("integrations", ("id", "kind", "description", "last_status", "last_synced_at")),
    cls=TenantWasFirst,
)
@tenant_option("The tenant whose integrations to list.", required=True)
def integration_list(session: Session, tenant_id: int) -> list[IntegrationInfo]:
    """List a tenant's integrations, oldest first, with their last sync."""
    return [integration_info(i) for i in list_integrations(session, tenant_id)]


remove_command(
    integration,
    "integration",
    remove_integration,
    help="Delete an integration and the rows it synced.",
)


@integration.command("sync")
@click.argument("integration_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def integration_sync(ctx: click.Context, integration_id: int, as_json: bool) -> None:
    """Send a sync of an integration now (a `sync_integration` job); prints its message id."""

    def tenant_of(session: Session) -> int:
        return get_integration(session, integration_id).tenant_id

    tenant_id = run(ctx, tenant_of)
    broker = ctx.ensure_object(State).load_broker()
    message = broker.get_actor("sync_integration").send(
        tenant_id=tenant_id, integration_id=integration_id
    )
    emit(
        {"integration_id": integration_id, "message_id": message.message_id},
        as_json,
        value_printer("message_id"),
    )
