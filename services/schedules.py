"""Tenants' schedules at runtime: create, edit, pause, resume, remove; checked before stored.

A change is a row change: the next tick reads it, no process restarts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, TypedDict

import marshmallow
from sqlalchemy import BigInteger, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from db.models import (
    CATCH_UP_LATEST,
    CATCH_UP_MODES,
    TENANT_ACTIVE,
    Job,
    Schedule,
    ScheduleRun,
    Tenant,
)
from services.cron import CronError, parse_cron, parse_timezone
from services.errors import NotFound, ValidationFailed
from services.schedule_slots import next_slot

# The actors a schedule may name, each with its argument schema (None: no schema).
ActorSchemas = Mapping[str, type[marshmallow.Schema] | None]
# Fields `update_schedule` may change.
EDITABLE = frozenset({"actor", "args", "cron", "timezone", "catch_up", "start_at", "end_at"})


class ScheduleInfo(TypedDict):
    """A schedule as the command line and the API show it."""

    id: int
    tenant_id: int
    actor: str
    args: dict[str, Any]
    cron: str
    timezone: str
    catch_up: str
    enabled: bool
    start_at: str | None
    end_at: str | None
    last_slot_at: str | None
    next_slot_at: str | None
    # Why the schedule does not run now (paused, tenant disabled, ended), or None.
    blocked: str | None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _utc(value: Any) -> Any:
    # SQLite gives naive datetimes back; they were stored in UTC.
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _check(schedule: Schedule, actors: ActorSchemas) -> None:
    """Raise `ValidationFailed` naming what is wrong with the schedule's fields."""
    try:
        parse_cron(schedule.cron)
        parse_timezone(schedule.timezone)
    except CronError as exc:
        raise ValidationFailed(str(exc)) from None
    if schedule.catch_up not in CATCH_UP_MODES:
        raise ValidationFailed(f"catch_up must be one of {', '.join(CATCH_UP_MODES)}")
    for name, value in (("start_at", schedule.start_at), ("end_at", schedule.end_at)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed(f"{name} needs a timezone")
    if schedule.start_at and schedule.end_at and schedule.start_at >= schedule.end_at:
        raise ValidationFailed("start_at must be before end_at")
    if schedule.actor not in actors:
        raise ValidationFailed(
            f"unknown actor {schedule.actor!r} (known: {', '.join(sorted(actors))})"
        )
    args = schedule.args
    if not isinstance(args, dict):
        raise ValidationFailed("args must be a JSON object")
    if "tenant_id" in args:
        raise ValidationFailed("args must not name tenant_id: it is the schedule's tenant")
    try:
        json.dumps(args)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"args must be JSON values: {exc}") from None
    schema = actors[schedule.actor]
    if schema is not None:
        errors = schema(unknown=marshmallow.RAISE).validate(
            {**args, "tenant_id": schedule.tenant_id}
        )
        if errors:
            raise ValidationFailed(f"{schedule.actor}: invalid arguments: {errors}")


def _reschedule(schedule: Schedule, now: dt.datetime) -> None:
    schedule.next_slot_at = next_slot(
        parse_cron(schedule.cron),
        schedule.timezone,
        after=now,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
    )


def create_schedule(
    session: Session,
    tenant_id: int,
    *,
    actor: str,
    args: dict[str, Any],
    cron: str,
    actors: ActorSchemas,
    now: dt.datetime,
    timezone: str = "UTC",
    catch_up: str = CATCH_UP_LATEST,
    start_at: dt.datetime | None = None,
    end_at: dt.datetime | None = None,
) -> Schedule:
    """Create a schedule after checking every field; its first slot is the first after `now`."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id}")
    schedule = Schedule(
        tenant_id=tenant_id,
        actor=actor,
        args=args,
        cron=cron.strip() if isinstance(cron, str) else cron,
        timezone=timezone,
        catch_up=catch_up,
        enabled=True,
        start_at=start_at,
        end_at=end_at,
    )
    _check(schedule, actors)
    _reschedule(schedule, now)
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, schedule_id: int, *, tenant_id: int | None = None) -> Schedule:
    """One schedule (of `tenant_id`, when given), or `NotFound`."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or (tenant_id is not None and schedule.tenant_id != tenant_id):
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


def update_schedule(
    session: Session,
    schedule_id: int,
    *,
    actors: ActorSchemas,
    now: dt.datetime,
    **changes: Any,
) -> Schedule:
    """Change some fields; nothing is stored unless the result passes every check.

    A changed timing (cron, timezone, start or end) counts from `now`: slots
    the old timing had due and unrun are not run.
    """
    unknown = set(changes) - EDITABLE
    if unknown:
        raise ValidationFailed(f"cannot change {', '.join(sorted(unknown))}")
    schedule = get_schedule(session, schedule_id)
    # A detached copy is checked first, so a rejected edit leaves the row untouched.
    draft = Schedule(**{f: _utc(getattr(schedule, f)) for f in EDITABLE})
    draft.tenant_id = schedule.tenant_id
    for field, value in changes.items():
        setattr(draft, field, value)
    _check(draft, actors)
    for field, value in changes.items():
        setattr(schedule, field, value)
    if changes.keys() & {"cron", "timezone", "start_at", "end_at"} and schedule.enabled:
        _reschedule(draft, now)
        schedule.next_slot_at = draft.next_slot_at
    session.flush()
    return schedule


def pause_schedule(session: Session, schedule_id: int) -> Schedule:
    """Stop running a schedule until it is resumed."""
    schedule = get_schedule(session, schedule_id)
    schedule.enabled = False
    session.flush()
    return schedule


def resume_schedule(session: Session, schedule_id: int, *, now: dt.datetime) -> Schedule:
    """Run a paused schedule again from its first slot after `now` (paused slots are not run)."""
    schedule = get_schedule(session, schedule_id)
    if not schedule.enabled:
        schedule.enabled = True
        schedule.start_at, schedule.end_at = _utc(schedule.start_at), _utc(schedule.end_at)
        _reschedule(schedule, now)
        session.flush()
    return schedule


def remove_schedule(session: Session, schedule_id: int) -> None:
    """Delete a schedule and its claimed slots (its jobs' records stay)."""
    session.delete(get_schedule(session, schedule_id))
    session.flush()


def list_schedules(session: Session, *, tenant_id: int | None = None) -> list[Schedule]:
    """Schedules, oldest first, of one tenant or all."""
    query = select(Schedule).order_by(Schedule.id)
    if tenant_id is not None:
        query = query.where(Schedule.tenant_id == tenant_id)
    return list(session.scalars(query))


def schedule_info(session: Session, schedule: Schedule) -> ScheduleInfo:
    """The plain-data view of a schedule, saying why it does not run when it does not."""
    tenant = session.get(Tenant, schedule.tenant_id)
    blocked = None
    if tenant is None or tenant.status != TENANT_ACTIVE:
        blocked = "tenant_disabled"
    elif not schedule.enabled:
        blocked = "paused"
    elif schedule.next_slot_at is None:
        blocked = "ended"
    return {
        "id": schedule.id,
        "tenant_id": schedule.tenant_id,
        "actor": schedule.actor,
        "args": schedule.args,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "enabled": schedule.enabled,
        "start_at": _iso(schedule.start_at),
        "end_at": _iso(schedule.end_at),
        "last_slot_at": _iso(schedule.last_slot_at),
        "next_slot_at": _iso(schedule.next_slot_at),
        "blocked": blocked,
    }


# Runs shown per schedule on the schedules page; a schedule's own page shows more.
LAST_RUNS = 5


class RunInfo(TypedDict):
    """One claimed slot of a schedule with its job's outcome (the record's status now)."""

    schedule_id: int
    slot_at: str
    claimed_at: str | None
    message_id: str | None
    # The job record's status; None: no record (not written yet, or purged by retention).
    status: str | None


def _run_info(schedule_id: int, row: Any) -> RunInfo:
    return {
        "schedule_id": schedule_id,
        "slot_at": _utc(row.slot_at).isoformat(),
        "claimed_at": _iso(_utc(row.created_at)),
        "message_id": row.message_id,
        "status": row.status,
    }


def last_runs(
    session: Session, schedule_ids: Sequence[int], *, limit: int = LAST_RUNS
) -> dict[int, list[RunInfo]]:
    """The last `limit` claimed slots of each schedule, newest first, with their jobs' status.

    Each schedule's claims are read newest first from the (schedule, slot) unique
    index of `schedule_runs`, and each claim's record from `ix_jobs_schedule_slot`
    (migration 0013): the cost grows with the schedules asked for, not with their
    history.  On PostgreSQL one statement (a LATERAL join per schedule); elsewhere
    one per schedule.
    """
    found: dict[int, list[RunInfo]] = {schedule_id: [] for schedule_id in schedule_ids}
    if not found or limit < 1:
        return found

    def claims(schedule_id: Any) -> Any:
        return (
            select(ScheduleRun.schedule_id, ScheduleRun.slot_at, ScheduleRun.created_at)
            .where(ScheduleRun.schedule_id == schedule_id)
            .order_by(ScheduleRun.slot_at.desc())
            .limit(limit)
        )

    def job_of(c: Any) -> Any:
        # The claim's record by (schedule, slot): one (a slot sends one job), unordered so
        # that the index alone finds it.
        return (
            select(Job.message_id, Job.status)
            .where(Job.schedule_id == c.schedule_id, Job.slot_at == c.slot_at)
            .limit(1)
        )

    def with_jobs(runs: Any) -> Any:
        c = runs.c
        job = job_of(c).lateral()
        return (
            select(c.schedule_id, c.slot_at, c.created_at, job.c.message_id, job.c.status)
            .select_from(runs)
            .outerjoin(job, true())
            .order_by(c.schedule_id, c.slot_at.desc())
        )

    rows: list[Any] = []
    if session.get_bind().dialect.name == "postgresql":
        # LATERAL both ways: each schedule's claims, then each claim's record, are read
        # by index lookups, however the planner estimates the tables.
        ids = select(func.unnest(literal(list(found), ARRAY(BigInteger))).label("id")).subquery()
        runs = claims(ids.c.id).lateral()
        joined = select(runs).select_from(ids).join(runs, true()).subquery()
        rows.extend(session.execute(with_jobs(joined)))
    else:
        # SQLite (the demo) has no LATERAL: a query per schedule, a lookup per claim.
        for schedule_id in found:
            for claim in session.execute(claims(schedule_id)):
                job = session.execute(job_of(claim)).first()
                rows.append(
                    SimpleNamespace(
                        schedule_id=claim.schedule_id,
                        slot_at=claim.slot_at,
                        created_at=claim.created_at,
                        message_id=job.message_id if job else None,
                        status=job.status if job else None,
                    )
                )
    for row in rows:
        found[row.schedule_id].append(_run_info(row.schedule_id, row))
    return found
