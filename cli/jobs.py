"""`taskyard jobs ...`: the record of jobs (one per message); retry and cancel them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import click
from sqlalchemy import select
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
from cli.render import duration, emit, fields_printer, records_table, show, value_printer
from db.models import JOB_CANCELLED, JOB_DEAD, JOB_FINAL_STATES, JOB_RUNNING, DeadLetter, Job
from services.job_control import cancel_job
from services.jobs import JobInfo, get_job, job_info, list_jobs
from services.workers import RunningJob, running_job, running_jobs, stale_window

JOB_COLUMNS = ("message_id", "tenant_id", "actor", "status", "attempts", "finished_at")
RUNNING_COLUMNS = (
    "message_id", "tenant_id", "actor", "status", "attempts", "host", "pid", "thread",
    "running_for",
)  # fmt: skip


class RunningJobInfo(TypedDict):
    """A job a live worker runs now: its record's fields (when it has one), then where it runs.

    `status` is `running` (from the worker's heartbeat); `record_status` is what the
    record itself says (queued, retrying), None when there is no record.
    """

    message_id: str
    tenant_id: int | None
    actor: str
    queue: str
    status: str
    record_status: str | None
    attempts: int | None
    args: dict[str, Any] | None
    enqueued_at: str | None
    started_at: str
    finished_at: str | None
    duration_seconds: float | None
    error: str | None
    result: dict[str, Any] | None
    schedule_id: int | None
    slot_at: str | None
    worker_id: str
    host: str
    pid: int
    thread: str
    running_seconds: float


def _heartbeat_window() -> dt.timedelta:
    settings = click.get_current_context().ensure_object(State).load_settings()
    return stale_window(settings.heartbeat_seconds)


def _runs(record: Job | None) -> bool:
    """Whether a heartbeat that lists the job can be believed: a finished record wins.

    A beat lags the end of a job by up to one interval; the record does not.
    """
    return record is None or record.status not in JOB_FINAL_STATES


def _running_info(running: RunningJob, record: Job | None) -> RunningJobInfo:
    info = job_info(record) if record is not None else None
    return {
        "message_id": running["message_id"],
        "tenant_id": info["tenant_id"] if info is not None else running["tenant_id"],
        "actor": info["actor"] if info is not None else running["actor"],
        "queue": info["queue"] if info is not None else running["queue"],
        "status": JOB_RUNNING,
        "record_status": info["status"] if info is not None else None,
        "attempts": info["attempts"] if info is not None else None,
        "args": info["args"] if info is not None else None,
        "enqueued_at": info["enqueued_at"] if info is not None else None,
        "started_at": running["started_at"],
        "finished_at": None,
        "duration_seconds": None,
        "error": info["error"] if info is not None else None,
        "result": None,
        "schedule_id": info["schedule_id"] if info is not None else None,
        "slot_at": info["slot_at"] if info is not None else None,
        "worker_id": running["worker_id"],
        "host": running["host"],
        "pid": running["pid"],
        "thread": running["thread"],
        "running_seconds": running["running_seconds"],
    }


def _print_jobs(infos: Sequence[Mapping[str, Any]]) -> None:
    """Job records as a table; running jobs with the worker and thread that run them."""
    title = f"jobs ({len(infos)})"
    if infos and all("worker_id" in info for info in infos):
        rows = [{**info, "running_for": duration(info["running_seconds"])} for info in infos]
        show(records_table(title, RUNNING_COLUMNS, rows))
    else:
        show(records_table(title, JOB_COLUMNS, infos))


@main.group()
def jobs() -> None:
    """Read the record of jobs (one per message); retry or cancel one."""


@transaction_command(jobs, "show", fields_printer("job", "message_id"))
@click.argument("message_id")
def jobs_show(session: Session, message_id: str) -> JobInfo | RunningJobInfo:
    """Show the record of one message; if a live worker runs it now, where and since when.

    Running comes from the workers' heartbeat, not from the record (which goes
    from queued or retrying straight to its final state): a job started less
    than one beat ago still shows its record's status.
    """
    now = dt.datetime.now(dt.UTC)
    record = session.get(Job, message_id)
    running = running_job(session, message_id, now=now, stale_after=_heartbeat_window())
    if running is not None and _runs(record):
        return _running_info(running, record)
    return job_info(get_job(session, message_id))


def _running_list(
    session: Session,
    *,
    tenant_id: int | None,
    actor: str | None,
    since: dt.datetime | None,
    limit: int,
) -> list[RunningJobInfo]:
    """What live workers run now, the longest running first, with their records if any."""
    now = dt.datetime.now(dt.UTC)
    found = running_jobs(
        session, now=now, stale_after=_heartbeat_window(), tenant_id=tenant_id, actor=actor
    )
    if since is not None:
        found = [job for job in found if dt.datetime.fromisoformat(job["started_at"]) >= since]
    # One thread per message: the latest start (`found` is by start), should the row
    # of a worker that died with it still list it.
    latest = {job["message_id"]: job for job in found}
    records: dict[str, Job] = {}
    if latest:
        query = select(Job).where(Job.message_id.in_(list(latest)))
        records = {record.message_id: record for record in session.scalars(query)}
    infos = [
        _running_info(job, records.get(job["message_id"]))
        for job in found
        if latest[job["message_id"]] is job and _runs(records.get(job["message_id"]))
    ]
    return infos[:limit]


@transaction_command(jobs, "list", _print_jobs)
@click.option("--tenant", "tenant_id", type=ID, help="Only this tenant's jobs.")
@click.option(
    "--status",
    type=click.Choice(JOB_STATES),
    help="Only jobs in this state; running: what live workers run now (their heartbeat).",
)
@click.option("--actor", help="Only this actor's jobs.")
@click.option(
    "--since",
    type=SINCE,
    help="Only jobs updated (running: started) since (30m, 6h, 2d, ISO time).",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def jobs_list(
    session: Session,
    tenant_id: int | None,
    status: str | None,
    actor: str | None,
    since: dt.datetime | None,
    limit: int,
) -> list[JobInfo] | list[RunningJobInfo]:
    """List job records, the most recently updated first.

    With --status running: the jobs live workers run now (from their heartbeat,
    every TASKYARD_HEARTBEAT_SECONDS), the longest running first. A record a live
    worker runs shows as running in any list, and not under --status queued or
    retrying, whatever the record says.
    """
    if status == JOB_RUNNING:
        return _running_list(session, tenant_id=tenant_id, actor=actor, since=since, limit=limit)
    now = dt.datetime.now(dt.UTC)
    running = {
        job["message_id"] for job in running_jobs(session, now=now, stale_after=_heartbeat_window())
    }
    # Those left out below (they run) are made up for by reading as many more.
    found = list_jobs(
        session,
        tenant_id=tenant_id,
        status=status,
        actor=actor,
        since=since,
        limit=limit + len(running),
    )
    infos: list[JobInfo] = []
    for record in found:
        info = job_info(record)
        if record.message_id in running and _runs(record):
            if status is not None:
                continue  # asked for queued (or retrying) jobs: this one runs
            info["status"] = JOB_RUNNING
        infos.append(info)
    return infos[:limit]


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
    window = _heartbeat_window()
    status = run(ctx, lambda s: cancel_job(s, message_id, stale_after=window))
    emit(
        {"message_id": message_id, "status": status},
        as_json,
        lambda i: click.echo(f"job {i['message_id']} {i['status']}"),
    )
