"""`taskyard summary`: jobs by status, dead letters, queue depth, workers, scheduler lag."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, TypedDict

import click
from sqlalchemy.orm import Session

from cli.common import (
    EXIT_UNREACHABLE,
    SINCE,
    State,
    describe_error,
    json_option,
    main,
    run,
    tenant_option,
)
from cli.render import duration, emit, fields_table, records_table, show, shown_time
from services.job_views import stale_window
from services.overview import Figures, read_figures
from services.tenants import get_tenant, list_tenants
from settings import Settings

# The window of the status counts unless --since says otherwise.
DEFAULT_WINDOW = dt.timedelta(hours=1)
QUEUE_COLUMNS = ("tenant_id", "queue", "ready", "unacked", "consumers")


class QueueInfo(TypedDict):
    """One tenant's queue in RabbitMQ; the counts are None when the queue does not exist."""

    tenant_id: int
    queue: str
    exists: bool
    ready: int | None
    unacked: int | None
    consumers: int | None


class Summary(TypedDict):
    """What `taskyard summary` read, as of `read_at`."""

    read_at: str
    since: str
    tenant_id: int | None
    system_jobs: bool
    by_status: dict[str, int]
    dead_letters: int
    workers: int
    threads: int
    busy: int
    scheduler_age_seconds: float | None
    # None: not read (the in-process broker, or RabbitMQ unreachable: `queues_error`).
    queues: list[QueueInfo] | None
    queues_error: str | None


def read_queues(
    settings: Settings, tenant_ids: list[int]
) -> tuple[list[QueueInfo] | None, str | None, str | None]:
    """The tenants' queues, or None and the reason they could not be read (one line); and a
    warning when RabbitMQ's management API did not answer (its `unacked` are not shown).

    The summary's and the web console's (overview, tenants) one reading.
    """
    if settings.uses_stub_broker:
        return None, "the in-process broker (BROKER_URL=stub://) has no queues to read", None
    from transport.queue_depth import ApiUnreadable, queue_depths

    warning = None
    try:
        try:
            depths = queue_depths(settings, tenant_ids)
        except ApiUnreadable as exc:
            warning = f"{exc}; unacked not shown"
            depths = queue_depths(dataclasses.replace(settings, rabbitmq_api_url=""), tenant_ids)
    except Exception as exc:
        return None, describe_error(exc, settings.database_url, settings.broker_url)[1], None
    infos: list[QueueInfo] = []
    for tenant_id, depth in depths.items():
        infos.append(
            {
                "tenant_id": tenant_id,
                "queue": settings.tenant_queue(tenant_id),
                "exists": depth is not None,
                "ready": depth.ready if depth is not None else None,
                "unacked": depth.unacked if depth is not None else None,
                "consumers": depth.consumers if depth is not None else None,
            }
        )
    return infos, None, warning


def _print_summary(summary: Summary) -> None:
    whose = f"tenant {summary['tenant_id']}" if summary["tenant_id"] is not None else "all tenants"
    if summary["tenant_id"] is None and not summary["system_jobs"]:
        whose += ", system jobs left out"
    click.echo(f"jobs sent since {shown_time(summary['since'])} UTC ({whose})")
    statuses = [{"status": s, "jobs": n} for s, n in summary["by_status"].items()]
    age = summary["scheduler_age_seconds"]
    glance: dict[str, Any] = {
        "dead letters waiting": summary["dead_letters"],
        "workers": (
            f"{summary['workers']} live, {summary['threads']} threads, {summary['busy']} busy"
        ),
        "scheduler": f"last tick {duration(age)} ago" if age is not None else "never ticked",
        "read_at": summary["read_at"],
    }
    tables: list[Any] = [
        records_table("by status", ("status", "jobs"), statuses) if statuses else "no jobs",
        fields_table("now", glance),
    ]
    queues = summary["queues"]
    if queues is not None:
        waiting = [q for q in queues if q["ready"] or q["unacked"]]
        shown = queues if summary["tenant_id"] is not None else waiting
        title = f"queues: {len(waiting)} of {len(queues)} hold messages"
        tables.append(records_table(title, QUEUE_COLUMNS, shown))
    show(*tables)
    if queues is not None:
        click.echo(
            "ready: waiting for a worker; unacked: held by workers (- unless "
            "TASKYARD_RABBITMQ_API_URL is set); - everywhere: no such queue yet"
        )
    if summary["queues_error"] is not None:
        click.echo(f"queues not read: {summary['queues_error']}")


@main.command()
@tenant_option("Only this tenant's jobs and queue.")
@click.option(
    "--since",
    type=SINCE,
    help="Count the jobs sent since (30m, 6h, 2d, ISO time); by default the last hour.",
)
@click.option(
    "--system",
    is_flag=True,
    help="Count the system jobs too (scheduler ticks, maintenance); not with --tenant.",
)
@json_option
@click.pass_context
def summary(
    ctx: click.Context,
    tenant_id: int | None,
    since: dt.datetime | None,
    system: bool,
    as_json: bool,
) -> None:
    """Show jobs by status, dead letters, queue depth per tenant, workers and scheduler lag.

    Jobs are counted by their status now, of those sent in the window (--since,
    by default the last hour). Queue depth is read from RabbitMQ now: ready
    messages and consumers over AMQP, unacknowledged ones only from its management
    API (TASKYARD_RABBITMQ_API_URL). Exits 3 when RabbitMQ cannot be read, after
    printing the rest.
    """
    settings = ctx.ensure_object(State).load_settings()
    now = dt.datetime.now(dt.UTC)
    start = since if since is not None else now - DEFAULT_WINDOW
    stale_after = stale_window(settings.heartbeat_seconds)

    def read(session: Session) -> tuple[Figures, list[int]]:
        if tenant_id is not None:
            get_tenant(session, tenant_id)
            tenants = [tenant_id]
        else:
            tenants = [t.id for t in list_tenants(session)]
        figures = read_figures(
            session,
            tenant_ids=None if tenant_id is None else tenants,
            since=start,
            now=now,
            stale_after=stale_after,
            exclude_queue=None if system or tenant_id is not None else settings.system_queue,
        )
        return figures, tenants

    figures, tenants = run(ctx, read)
    queues, error, warning = read_queues(settings, tenants)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    info: Summary = {
        "read_at": now.isoformat(),
        "since": start.isoformat(),
        "tenant_id": tenant_id,
        "system_jobs": system and tenant_id is None,
        "by_status": dict(figures["by_status"]),
        "dead_letters": figures["dead_letters"],
        "workers": figures["workers"],
        "threads": figures["threads"],
        "busy": figures["busy"],
        "scheduler_age_seconds": figures["scheduler_age_seconds"],
        "queues": queues,
        "queues_error": error,
    }
    emit(info, as_json, _print_summary)
    if error is not None and not settings.uses_stub_broker:
        ctx.exit(EXIT_UNREACHABLE)
