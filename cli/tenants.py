"""`taskyard tenant ...`: create, list, show, enable, disable and delete tenants."""

from __future__ import annotations

import time
from typing import TypedDict

import click

from cli.common import (
    ID,
    CommandFailed,
    State,
    emit,
    fields_table,
    json_option,
    main,
    progress,
    records_table,
    run,
    show,
)
from db.models import JOB_FINAL_STATES, JOB_SUCCEEDED, TENANT_ACTIVE, TENANT_DISABLED
from services.jobs import get_job, job_info
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


def _print_tenant(info: TenantInfo) -> None:
    show(fields_table(f"tenant {info['id']}", info))


def _print_tenants(infos: list[TenantInfo]) -> None:
    columns = ("id", "name", "status", "created_at")
    show(records_table(f"tenants ({len(infos)})", columns, infos))


@tenant.command("create")
@click.argument("name")
@json_option
@click.pass_context
def tenant_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create an active tenant NAME and print its id."""
    info = run(ctx, lambda s: tenant_info(create_tenant(s, name)))
    emit(info, as_json, lambda i: click.echo(i["id"]))


@tenant.command("list")
@click.option("--status", type=click.Choice([TENANT_ACTIVE, TENANT_DISABLED]))
@json_option
@click.pass_context
def tenant_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """List the tenants, oldest first."""
    infos = run(ctx, lambda s: [tenant_info(t) for t in list_tenants(s, status=status)])
    emit(infos, as_json, _print_tenants)


@tenant.command("show")
@click.argument("tenant_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def tenant_show(ctx: click.Context, tenant_id: int, as_json: bool) -> None:
    """Show one tenant."""
    emit(run(ctx, lambda s: tenant_info(get_tenant(s, tenant_id))), as_json, _print_tenant)


def _status_command(name: str, status: str) -> None:
    @tenant.command(name, help=f"Mark tenant ID {status}, and show it.")
    @click.argument("tenant_id", metavar="ID", type=ID)
    @json_option
    @click.pass_context
    def command(ctx: click.Context, tenant_id: int, as_json: bool) -> None:
        info = run(ctx, lambda s: tenant_info(set_tenant_status(s, tenant_id, status)))
        emit(info, as_json, _print_tenant)


_status_command("disable", TENANT_DISABLED)
_status_command("enable", TENANT_ACTIVE)


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
    run(ctx, lambda s: get_tenant(s, tenant_id))
    broker = ctx.ensure_object(State).load_broker()
    message = broker.get_actor("delete_tenant").send(tenant_id=tenant_id)
    info: DeletionInfo = {
        "tenant_id": tenant_id,
        "message_id": message.message_id,
        "status": "queued",
        "result": None,
    }
    if wait:
        with progress(None, f"deleting tenant {tenant_id}", quiet=as_json) as advance:
            while info["status"] not in JOB_FINAL_STATES:
                time.sleep(WAIT_POLL_SECONDS)
                job = run(ctx, lambda s: job_info(get_job(s, message.message_id)))
                info["status"], info["result"] = job["status"], job["result"] or job["error"]
                advance(1)
        if info["status"] != JOB_SUCCEEDED:
            raise CommandFailed(
                f"deletion of tenant {tenant_id} ended {info['status']}: {info['result']}; "
                f"see `taskyard jobs show {message.message_id}`"
            )
    emit(info, as_json, _print_deletion)
