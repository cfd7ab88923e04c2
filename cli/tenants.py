"""`taskyard tenant ...`: create, list, show, enable, disable and delete tenants."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypedDict

import click
from dramatiq.broker import Broker
from sqlalchemy.orm import Session

from cli.common import (
    ID,
    CommandFailed,
    State,
    Transact,
    json_option,
    main,
    run,
    transact,
    transaction_command,
)
from cli.render import emit, fields_printer, progress, records_printer, value_printer
from db.models import JOB_FINAL_STATES, JOB_SUCCEEDED, TENANT_ACTIVE, TENANT_DISABLED
from services.job_views import job_info
from services.jobs import get_job
from services.tenants import (
    TenantInfo,
    create_tenant,
    get_tenant,
    list_tenants,
    set_tenant_status,
    tenant_info,
)

# How often `tenant delete --wait` reads the deletion's job record.
WAIT_POLL_SECONDS = 1.0


@main.group()
def tenant() -> None:
    """Create, list, show, enable, disable and delete tenants."""


@transaction_command(tenant, "create", value_printer("id"))
@click.argument("name")
def tenant_create(session: Session, name: str) -> TenantInfo:
    """Create an active tenant NAME and print its id."""
    return tenant_info(create_tenant(session, name))


@transaction_command(
    tenant, "list", records_printer("tenants", ("id", "name", "status", "created_at"))
)
@click.option("--status", type=click.Choice([TENANT_ACTIVE, TENANT_DISABLED]))
def tenant_list(session: Session, status: str | None) -> list[TenantInfo]:
    """List the tenants, oldest first."""
    return [tenant_info(t) for t in list_tenants(session, status=status)]


@transaction_command(tenant, "show", fields_printer("tenant"))
@click.argument("tenant_id", metavar="ID", type=ID)
def tenant_show(session: Session, tenant_id: int) -> TenantInfo:
    """Show one tenant."""
    return tenant_info(get_tenant(session, tenant_id))


def _status_command(name: str, status: str) -> None:
    @transaction_command(
        tenant, name, fields_printer("tenant"), help=f"Mark tenant ID {status}, and show it."
    )
    @click.argument("tenant_id", metavar="ID", type=ID)
    def command(session: Session, tenant_id: int) -> TenantInfo:
        return tenant_info(set_tenant_status(session, tenant_id, status))


_status_command("disable", TENANT_DISABLED)
_status_command("enable", TENANT_ACTIVE)


def send_tenant_deletion(
    run_in_transaction: Transact, load_broker: Callable[[], Broker], tenant_id: int
) -> str:
    """Send the resumable `delete_tenant` job for a tenant that exists; its message id.

    `tenant delete` and the web console both delete through this.
    """
    run_in_transaction(lambda s: get_tenant(s, tenant_id))
    message = load_broker().get_actor("delete_tenant").send(tenant_id=tenant_id)
    return str(message.message_id)


class DeletionInfo(TypedDict):
    """What `taskyard tenant delete` sent, and with --wait how the deletion ended."""

    tenant_id: int
    message_id: str
    status: str
    result: object


def _print_deletion(info: DeletionInfo) -> None:
    click.echo(f"deletion of tenant {info['tenant_id']}: job {info['message_id']} {info['status']}")


@tenant.command("delete")
@click.argument("tenant_id", metavar="ID", type=ID)
@click.option("--wait", is_flag=True, help="Wait until the deletion's job has finished.")
@json_option
@click.pass_context
def tenant_delete(ctx: click.Context, tenant_id: int, wait: bool, as_json: bool) -> None:
    """Delete tenant ID and all its data and queues, in the background (a `delete_tenant` job)."""
    message_id = send_tenant_deletion(
        transact(ctx), ctx.ensure_object(State).load_broker, tenant_id
    )
    info: DeletionInfo = {
        "tenant_id": tenant_id,
        "message_id": message_id,
        "status": "queued",
        "result": None,
    }
    if wait:
        with progress(None, f"deleting tenant {tenant_id}", quiet=as_json) as advance:
            while info["status"] not in JOB_FINAL_STATES:
                time.sleep(WAIT_POLL_SECONDS)
                job = run(ctx, lambda s: job_info(get_job(s, message_id)))
                info["status"], info["result"] = job["status"], job["result"] or job["error"]
                advance(1)
        if info["status"] != JOB_SUCCEEDED:
            raise CommandFailed(
                f"deletion of tenant {tenant_id} ended {info['status']}: {info['result']}; "
                f"see `taskyard jobs show {message_id}`"
            )
    emit(info, as_json, _print_deletion)
