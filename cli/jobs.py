"""`taskyard jobs ...`: the record of jobs (one per message); retry and cancel them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import click

from cli.common import (
    JOB_STATES,
    SINCE,
    UNTIL,
    CommandFailed,
    State,
    Transact,
    after_option,
    check_time_range,
    json_option,
    limit_option,
    main,
    next_page_hint,
    run,
    tenant_option,
    transact,
    transaction_command,
)
from cli.quick import read_quickly
from cli.render import duration, emit, fields_table, records_table, show, value_printer
from db.states import JOB_CANCELLED, JOB_DEAD, JOB_FINAL_STATES, JOB_RUNNING
from services.job_views import (
    JOBS_LISTING,
    AttemptInfo,
    JobInfo,
    JobsReader,
    RunningJob,
    StoredJob,
    job_cursor,
    job_info,
    stale_window,
)
from services.pagination import Position
from services.redaction import redact_value

# SQLAlchemy and the models are imported where a command needs them, not here: `jobs
# list` reads without them (cli/quick.py) and starts in a fraction of the time.
if TYPE_CHECKING:
    from dramatiq.broker import Broker
    from sqlalchemy.orm import Session

JOB_COLUMNS = (
    "message_id", "tenant_id", "actor", "status", "attempts", "finished_at", "duration",
)  # fmt: skip
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
    result: Any
    result_dropped: str | None
    schedule_id: int | None
    slot_at: str | None
    worker_id: str
    host: str
    pid: int
    thread: str
    running_seconds: float
    # The attempts so far (as on a record's page, `JobInfo`), when it has a record.
    attempt_history: NotRequired[list[AttemptInfo]]
    attempts_not_kept: NotRequired[int]


def _heartbeat_window() -> dt.timedelta:
    settings = click.get_current_context().ensure_object(State).load_settings()
    return stale_window(settings.heartbeat_seconds)


def _runs(record: StoredJob | None) -> bool:
    """Whether a heartbeat that lists the job can be believed: a finished record wins.

    A beat lags the end of a job by up to one interval; the record does not.
    """
    return record is None or record.status not in JOB_FINAL_STATES


def _running_info(running: RunningJob, record: StoredJob | None) -> RunningJobInfo:
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
        "result_dropped": None,
        "schedule_id": info["schedule_id"] if info is not None else None,
        "slot_at": info["slot_at"] if info is not None else None,
        "worker_id": running["worker_id"],
        "host": running["host"],
        "pid": running["pid"],
        "thread": running["thread"],
        "running_seconds": running["running_seconds"],
    }


def with_durations(info: Mapping[str, Any]) -> dict[str, Any]:
    """A job's info for a person: `duration` (finished - started) in place of its seconds,
    and while it runs `running_for`, in the one form `duration` gives (--json keeps the
    seconds)."""
    shown: dict[str, Any] = {}
    for key, value in info.items():
        if key == "duration_seconds":
            shown["duration"] = duration(value) if value is not None else None
        elif key == "running_seconds":
            shown["running_for"] = duration(value)
        else:
            shown[key] = value
    return shown


def _print_jobs(infos: Sequence[Mapping[str, Any]]) -> None:
    """Job records as a table; running jobs with the worker and thread that run them."""
    title = f"jobs ({len(infos)})"
    rows = [with_durations(info) for info in infos]
    if infos and all("worker_id" in info for info in infos):
        show(records_table(title, RUNNING_COLUMNS, rows))
    else:
        show(records_table(title, JOB_COLUMNS, rows))
        next_page_hint(infos)


@main.group()
def jobs() -> None:
    """Read the record of jobs (one per message); retry or cancel one."""


# The columns of `jobs show`'s attempts table.
ATTEMPT_COLUMNS = ("attempt", "outcome", "started_at", "finished_at", "error_class", "error")


def _print_job(info: Mapping[str, Any]) -> None:
    """One job's fields, then its attempts as a table of their own (oldest first)."""
    attempts = info.get("attempt_history") or []
    fields = {k: v for k, v in info.items() if k not in ("attempt_history", "attempts_not_kept")}
    show(fields_table(f"job {info['message_id']}", with_durations(fields)))
    if attempts:
        title = f"attempts ({len(attempts)})"
        if info.get("attempts_not_kept"):
            title += f", {info['attempts_not_kept']} more between the first and these not kept"
        show(records_table(title, ATTEMPT_COLUMNS, attempts))


@transaction_command(jobs, "show", _print_job)
@click.argument("message_id")
def jobs_show(session: Session, message_id: str) -> JobInfo | RunningJobInfo:
    """Show the record of one message; if a live worker runs it now, where and since when.

    Running comes from the workers' heartbeat, not from the record (which goes
    from queued or retrying straight to its final state): a job started less
    than one beat ago still shows its record's status.
    """
    shown: JobInfo | RunningJobInfo = redact_value(
        job_detail(session, message_id, stale_after=_heartbeat_window())
    )
    return shown


def job_detail(
    session: Session, message_id: str, *, stale_after: dt.timedelta
) -> JobInfo | RunningJobInfo:
    """One job's record, or where a live worker runs it now (`jobs show`, the console's page)."""
    from db.models import Job
    from services.jobs import attempt_list, get_job
    from services.workers import running_job

    now = dt.datetime.now(dt.UTC)
    record = session.get(Job, message_id)
    running = running_job(session, message_id, now=now, stale_after=stale_after)
    if running is not None and _runs(record):
        shown = _running_info(running, record)
        if record is not None:
            shown["attempt_history"], shown["attempts_not_kept"] = attempt_list(record)
        return shown
    job = get_job(session, message_id)
    info = job_info(job)
    info["attempt_history"], info["attempts_not_kept"] = attempt_list(job)
    return info


def _running_list(
    reader: JobsReader,
    *,
    stale_after: dt.timedelta,
    tenant_id: int | None,
    actor: str | None,
    since: dt.datetime | None,
    limit: int,
    until: dt.datetime | None = None,
) -> list[RunningJobInfo]:
    """What live workers run now, the longest running first, with their records if any."""
    now = dt.datetime.now(dt.UTC)
    found = reader.running(now=now, stale_after=stale_after, tenant_id=tenant_id, actor=actor)
    if since is not None:
        found = [job for job in found if dt.datetime.fromisoformat(job["started_at"]) >= since]
    if until is not None:
        found = [job for job in found if dt.datetime.fromisoformat(job["started_at"]) < until]
    # One thread per message: the latest start (`found` is by start), should the row
    # of a worker that died with it still list it.
    latest = {job["message_id"]: job for job in found}
    records: dict[str, StoredJob] = {}
    if latest:
        records = {record.message_id: record for record in reader.with_ids(list(latest))}
    infos = [
        _running_info(job, records.get(job["message_id"]))
        for job in found
        if latest[job["message_id"]] is job and _runs(records.get(job["message_id"]))
    ]
    return infos[:limit]


def _system_queue() -> str:
    """The system queue's name, from this invocation's settings."""
    return click.get_current_context().ensure_object(State).load_settings().system_queue


def _jobs_list_quickly(ctx: click.Context, **values: Any) -> list[JobInfo] | list[RunningJobInfo]:
    """`jobs list` without SQLAlchemy (cli/quick.py), when the database allows it."""
    settings = ctx.ensure_object(State).load_settings()
    return read_quickly(settings, lambda reader: _jobs_list(reader, **values))


@transaction_command(jobs, "list", _print_jobs, quick=_jobs_list_quickly)
@tenant_option("Only this tenant's jobs.")
@click.option(
    "--status",
    type=click.Choice(JOB_STATES),
    help="Only jobs in this state; running: what live workers run now (their heartbeat).",
)
@click.option("--actor", help="Only this actor's jobs.")
@click.option(
    "--since",
    type=SINCE,
    help="Only jobs sent (running: started) since (30m, 6h, 2d, ISO time).",
)
@click.option(
    "--until",
    type=UNTIL,
    help="Only jobs sent (running: started) before (30m, 6h, 2d, ISO time); with --since, a range.",
)
@click.option(
    "--error", "error_contains", help="Only jobs whose error contains this text (any case)."
)
@limit_option(50)
@click.option(
    "--system",
    is_flag=True,
    help="Include system jobs (scheduler ticks, maintenance); --actor names one anyway.",
)
@after_option(JOBS_LISTING)
def jobs_list(session: Session, **filters: Any) -> list[JobInfo] | list[RunningJobInfo]:
    """List job records, the most recently sent first; --after CURSOR for the next page.

    Each record listed carries its `cursor` (in --json): pass the last one's to
    --after for the page that follows. Pages never repeat or skip a record, even
    while jobs are sent and finish.

    With --status running: the jobs live workers run now (from their heartbeat,
    every TASKYARD_HEARTBEAT_SECONDS), the longest running first. A record a live
    worker runs shows as running in any list, and not under --status queued or
    retrying, whatever the record says.

    System jobs (the scheduler's tick every minute, the daily maintenance) are left
    out unless --system is given or --actor names one.
    """
    from services.jobs import JobsOnSession

    return _jobs_list(JobsOnSession(session), **filters)


def _jobs_list(
    reader: JobsReader,
    *,
    tenant_id: int | None,
    status: str | None,
    actor: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    error_contains: str | None,
    limit: int,
    system: bool,
    after: Position | None,
) -> list[JobInfo] | list[RunningJobInfo]:
    """The page `jobs list` prints, read by `reader`: quickly, or through SQLAlchemy."""
    shown: list[JobInfo] | list[RunningJobInfo] = redact_value(
        job_listing(
            reader,
            stale_after=_heartbeat_window(),
            tenant_id=tenant_id,
            status=status,
            actor=actor,
            since=since,
            until=until,
            limit=limit,
            after=after,
            error_contains=error_contains,
            exclude_queue=None if system or actor else _system_queue(),
        )
    )
    return shown


def job_listing(
    reader: JobsReader,
    *,
    stale_after: dt.timedelta,
    tenant_id: int | None = None,
    status: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
    after: Position | None = None,
    error_contains: str | None = None,
    exclude_queue: str | None = None,
    until: dt.datetime | None = None,
) -> list[JobInfo] | list[RunningJobInfo]:
    """A page of `jobs list` (the console's jobs page too): records, running ones marked.

    `exclude_queue`: leave out the records of this queue (the system queue's, unless asked).
    `since` and `until` (excluded): records sent in that range; running jobs started in it.
    """
    check_time_range(since, until)
    if status == JOB_RUNNING:
        if error_contains is not None:
            raise CommandFailed(
                "--error does not apply to --status running: a running job's error is not "
                "written yet; leave one of them out"
            )
        if after is not None:
            raise CommandFailed(
                "--after does not apply to --status running: what runs now is one list, "
                "the longest running first (raise --limit for more)"
            )
        return _running_list(
            reader,
            stale_after=stale_after,
            tenant_id=tenant_id,
            actor=actor,
            since=since,
            until=until,
            limit=limit,
        )
    now = dt.datetime.now(dt.UTC)
    running = {job["message_id"] for job in reader.running(now=now, stale_after=stale_after)}
    # Those left out below (they run) are made up for by reading as many more.
    found = reader.page(
        tenant_id=tenant_id,
        status=status,
        actor=actor,
        since=since,
        until=until,
        after=after,
        limit=limit + len(running),
        error_contains=error_contains,
        exclude_queue=exclude_queue,
    )
    infos: list[JobInfo] = []
    for record in found:
        info = job_info(record)
        info["cursor"] = job_cursor(record)
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
    info = retry_job(transact(ctx), ctx.ensure_object(State).load_broker, message_id)
    emit(info, as_json, value_printer("message_id"))


def retry_job(
    run_in_transaction: Transact, load_broker: Callable[[], Broker], message_id: str
) -> RetryInfo:
    """`jobs retry` (and the console's retry): requeue a dead job, or send a cancelled one again.

    The broker is loaded only once the job is known to be retryable.
    """
    from db.models import DeadLetter
    from services.jobs import get_job

    job = run_in_transaction(lambda s: job_info(get_job(s, message_id)))
    if job["status"] not in (JOB_DEAD, JOB_CANCELLED):
        raise CommandFailed(
            f"job {message_id} is {job['status']}: only a dead or cancelled job can be retried"
        )
    has_letter = run_in_transaction(lambda s: s.get(DeadLetter, message_id) is not None)
    if job["status"] == JOB_DEAD and has_letter:
        from cli.dead_letters import requeue_dead_letters  # (the broker's modules: only here)

        [again] = requeue_dead_letters(run_in_transaction, load_broker(), message_id=message_id)
        return {"retried": message_id, "message_id": again, "how": "requeued"}
    if job["args"].get("tenant_id") != job["tenant_id"]:
        # A record refused for its route keeps the arguments it came with, which
        # may name another tenant: sending them would run it as that tenant.
        raise CommandFailed(
            f"job {message_id} names tenant {job['args'].get('tenant_id')!r} in its "
            f"arguments but belongs to tenant {job['tenant_id']!r}: it is not retried; "
            "send a new job for the right tenant instead"
        )
    message = load_broker().get_actor(job["actor"]).send_with_options(kwargs=job["args"])
    return {"retried": message_id, "message_id": message.message_id, "how": "sent"}


@jobs.command("cancel")
@click.argument("message_id")
@json_option
@click.pass_context
def jobs_cancel(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Cancel a job that has not run yet, or ask a running one to stop."""
    from services.job_control import cancel_job  # (the outbox's modules: only here)

    window = _heartbeat_window()
    status = run(ctx, lambda s: cancel_job(s, message_id, stale_after=window))
    emit(
        {"message_id": message_id, "status": status},
        as_json,
        lambda i: click.echo(f"job {i['message_id']} {i['status']}"),
    )
