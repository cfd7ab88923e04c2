"""`taskyard jobs ...`: the record of jobs (one per message); retry and cancel them."""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

import click
from sqlalchemy.orm import Session

from cli.common import (
    ID,
    JOB_STATES,
    SINCE,
    CommandFailed,
    State,
    json_option,
    main,
    run,
    transaction_command,
)
from cli.dead_letters import requeue
from cli.render import emit, fields_printer, records_printer, value_printer
from db.models import JOB_CANCELLED, JOB_DEAD, DeadLetter
from services.job_control import cancel_job
from services.jobs import JobInfo, get_job, job_info, list_jobs


@main.group()
def jobs() -> None:
    """Read the record of jobs (one per message); retry or cancel one."""


@transaction_command(jobs, "show", fields_printer("job", "message_id"))
@click.argument("message_id")
def jobs_show(session: Session, message_id: str) -> JobInfo:
    """Show the record of one message."""
    return job_info(get_job(session, message_id))


@transaction_command(
    jobs,
    "list",
    records_printer(
        "jobs", ("message_id", "tenant_id", "actor", "status", "attempts", "finished_at")
    ),
)
@click.option("--tenant", "tenant_id", type=ID, help="Only this tenant's jobs.")
@click.option("--status", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--actor", help="Only this actor's jobs.")
@click.option("--since", type=SINCE, help="Only jobs updated since (30m, 6h, 2d, ISO time).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def jobs_list(
    session: Session,
    tenant_id: int | None,
    status: str | None,
    actor: str | None,
    since: dt.datetime | None,
    limit: int,
) -> list[JobInfo]:
    """List job records, the most recently updated first."""
    found = list_jobs(
        session, tenant_id=tenant_id, status=status, actor=actor, since=since, limit=limit
    )
    return [job_info(j) for j in found]


class RetryInfo(TypedDict):
    """What `taskyard jobs retry` sent: the same message again, or a new one."""

    retried: str
    message_id: str
    how: str


@jobs.command("retry")
@click.argument("message_id")
@json_option
@click.pass_context
def jobs_retry(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Run a dead or cancelled job again, from its first attempt, with the same arguments.

    A dead job is requeued from its dead letter (the same message id, as
    `dead-letters requeue` does); a cancelled one is sent as a new message.
    """
    job = run(ctx, lambda s: job_info(get_job(s, message_id)))
    if job["status"] not in (JOB_DEAD, JOB_CANCELLED):
        raise CommandFailed(
            f"job {message_id} is {job['status']}: only a dead or cancelled job can be retried"
        )
    has_letter = run(ctx, lambda s: s.get(DeadLetter, message_id) is not None)
    info: RetryInfo
    if job["status"] == JOB_DEAD and has_letter:
        [again] = requeue(ctx, message_id=message_id)
        info = {"retried": message_id, "message_id": again, "how": "requeued"}
    else:
        if job["args"].get("tenant_id") != job["tenant_id"]:
            # A record refused for its route keeps the arguments it came with, which
            # may name another tenant: sending them would run it as that tenant.
            raise CommandFailed(
                f"job {message_id} names tenant {job['args'].get('tenant_id')!r} in its "
                f"arguments but belongs to tenant {job['tenant_id']!r}: it is not retried; "
                "send a new job for the right tenant instead"
            )
        broker = ctx.ensure_object(State).load_broker()
        message = broker.get_actor(job["actor"]).send_with_options(kwargs=job["args"])
        info = {"retried": message_id, "message_id": message.message_id, "how": "sent"}
    emit(info, as_json, value_printer("message_id"))


@jobs.command("cancel")
@click.argument("message_id")
@json_option
@click.pass_context
def jobs_cancel(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Cancel a job that has not run yet, or ask a running one to stop."""
    status = run(ctx, lambda s: cancel_job(s, message_id))
    emit(
        {"message_id": message_id, "status": status},
        as_json,
        lambda i: click.echo(f"job {i['message_id']} {i['status']}"),
    )
