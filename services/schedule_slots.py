"""Which slots of a schedule are due, and claiming them once in PostgreSQL (the tick's service)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from sqlalchemy import Table, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db.models import (
    CATCH_UP_ALL,
    CATCH_UP_LATEST,
    TENANT_ACTIVE,
    Schedule,
    ScheduleRun,
    Tenant,
)
from services.cron import CronExpression, parse_cron, parse_timezone
from services.errors import NotFound, TenantDisabled

# How far back a tick looks before a slot counts as missed: periodiq drops a tick
# older than its skip_delay (30 s) and a busy system queue delays one, so a slot a
# few minutes old is merely late and always runs; older slots mean the scheduler
# was down, and the schedule's catch-up mode decides.
CATCH_UP_GRACE = dt.timedelta(minutes=5)
# catch_up="all" runs at most this many missed slots (the latest) after downtime.
MAX_CATCH_UP_SLOTS = 100
_TICK = dt.timedelta(microseconds=1)
_MOVE_SQL = text(
    "UPDATE schedules SET next_slot_at = m.next_slot_at, last_slot_at = m.last_slot_at,"
    " updated_at = now()"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:nexts AS timestamptz[]),"
    " CAST(:lasts AS timestamptz[])) AS m(id, next_slot_at, last_slot_at)"
    " WHERE schedules.id = m.id"
)


class DueRun(TypedDict):
    """One claimed slot of a schedule: the job to send for it."""

    schedule_id: int
    tenant_id: int
    actor: str
    args: dict[str, Any]
    slot_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """What a tick does for one schedule: the slots to run, and where the next one is."""

    run: list[dt.datetime]
    next_slot_at: dt.datetime | None


def next_slot(
    cron: CronExpression,
    timezone: str,
    *,
    after: dt.datetime,
    start_at: dt.datetime | None = None,
    end_at: dt.datetime | None = None,
) -> dt.datetime | None:
    """The first slot after `after` (and not before `start_at`), or None past `end_at`."""
    if start_at is not None and start_at > after:
        after = start_at - _TICK
    found = cron.next_after(after, parse_timezone(timezone))
    return None if found is None or (end_at is not None and found > end_at) else found


def plan_slots(
    cron: CronExpression,
    timezone: str,
    *,
    next_slot_at: dt.datetime,
    now: dt.datetime,
    catch_up: str,
    start_at: dt.datetime | None = None,
    end_at: dt.datetime | None = None,
) -> SlotPlan:
    """The slots due from `next_slot_at` to `now`, thinned by the catch-up mode if missed."""
    zone = parse_timezone(timezone)
    lower = max(next_slot_at, start_at) if start_at is not None else next_slot_at
    upper = min(now, end_at) if end_at is not None else now
    recent = max(lower, now - CATCH_UP_GRACE)
    run = list(cron.slots_between(recent, upper, zone)) if recent <= upper else []
    missed_upper = min(recent - _TICK, upper)
    if catch_up in (CATCH_UP_LATEST, CATCH_UP_ALL) and lower <= missed_upper:
        count = 1 if catch_up == CATCH_UP_LATEST else MAX_CATCH_UP_SLOTS
        newest = cron.slots_before(missed_upper, zone, not_before=lower)
        run = sorted(itertools.islice(newest, count)) + run
    following = next_slot(cron, timezone, after=now, start_at=start_at, end_at=end_at)
    return SlotPlan(run=run, next_slot_at=following)


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; they were stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _claim(session: Session, claims: list[dict[str, Any]]) -> set[tuple[int, dt.datetime]]:
    """Insert the (schedule, slot) claims; returns only those no one had claimed before."""
    if not claims:
        return set()
    dialect = session.get_bind().dialect.name
    stmt = (
        (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
            cast(Table, ScheduleRun.__table__)
        )
        .on_conflict_do_nothing(index_elements=["schedule_id", "slot_at"])
        .returning(ScheduleRun.schedule_id, ScheduleRun.slot_at)
    )
    # executemany of one statement: SQLAlchemy sends it as multi-row INSERTs.
    rows = session.execute(stmt, claims).all()
    return {(schedule_id, _utc(slot)) for schedule_id, slot in rows}


def _move(session: Session, schedules: list[Schedule], moves: list[dict[str, Any]]) -> None:
    """Set each schedule's next and last slot in one UPDATE ... FROM unnest(...)."""
    if not moves:
        return
    if session.get_bind().dialect.name != "postgresql":
        # SQLite has no arrays to unnest; the demo has few schedules.
        session.execute(update(Schedule), moves)
        return
    # Three array parameters, whatever the number of schedules: nothing per row to compile.
    session.execute(
        _MOVE_SQL,
        {
            "ids": [m["id"] for m in moves],
            "nexts": [m["next_slot_at"] for m in moves],
            "lasts": [m["last_slot_at"] for m in moves],
        },
    )
    # The loaded objects learn their new values without becoming dirty (no second UPDATE).
    for schedule, move in zip(schedules, moves, strict=True):
        set_committed_value(schedule, "next_slot_at", move["next_slot_at"])
        set_committed_value(schedule, "last_slot_at", move["last_slot_at"])


def claim_due_slots(
    session: Session, *, now: dt.datetime, actors: Collection[str], limit: int = 50_000
) -> list[DueRun]:
    """Claim every due slot of the enabled schedules of active tenants; return the new claims.

    Set-based: one SELECT (rows another tick holds are skipped, not waited for),
    one multi-row INSERT of claims under the (schedule_id, slot_at) unique
    constraint, one batched UPDATE.  A slot claimed before (the same tick
    delivered twice, two schedulers) is not returned, so it is sent once.
    Schedules naming an actor not in `actors` stay where they are, unclaimed.
    """
    query = (
        select(Schedule)
        .join(Tenant, Tenant.id == Schedule.tenant_id)
        .where(
            Schedule.enabled,
            Schedule.next_slot_at <= now,
            Tenant.status == TENANT_ACTIVE,
            Schedule.actor.in_(sorted(actors)),
        )
        .order_by(Schedule.next_slot_at)
        .limit(limit)
        .with_for_update(of=Schedule, skip_locked=True)
    )
    schedules = list(session.scalars(query))
    claims: list[dict[str, Any]] = []
    moves: list[dict[str, Any]] = []
    for schedule in schedules:
        assert schedule.next_slot_at is not None  # the WHERE above
        plan = plan_slots(
            parse_cron(schedule.cron),
            schedule.timezone,
            next_slot_at=_utc(schedule.next_slot_at),
            now=now,
            catch_up=schedule.catch_up,
            start_at=schedule.start_at and _utc(schedule.start_at),
            end_at=schedule.end_at and _utc(schedule.end_at),
        )
        claims += [
            {"tenant_id": schedule.tenant_id, "schedule_id": schedule.id, "slot_at": slot}
            for slot in plan.run
        ]
        last = plan.run[-1] if plan.run else schedule.last_slot_at
        moves.append({"id": schedule.id, "next_slot_at": plan.next_slot_at, "last_slot_at": last})
    claimed = _claim(session, claims)
    _move(session, schedules, moves)
    by_id = {schedule.id: schedule for schedule in schedules}
    return [
        due_run(by_id[claim["schedule_id"]], claim["slot_at"])
        for claim in claims
        if (claim["schedule_id"], claim["slot_at"]) in claimed
    ]


def due_run(schedule: Schedule, slot_at: dt.datetime) -> DueRun:
    """The job a schedule sends for one slot."""
    return {
        "schedule_id": schedule.id,
        "tenant_id": schedule.tenant_id,
        "actor": schedule.actor,
        "args": dict(schedule.args),
        "slot_at": slot_at,
    }


def claim_run_now(session: Session, schedule_id: int, *, now: dt.datetime) -> DueRun:
    """Claim an extra run of a schedule at `now` (run-now); its slot is `now` itself."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    tenant = session.get(Tenant, schedule.tenant_id)
    if tenant is None or tenant.status != TENANT_ACTIVE:
        raise TenantDisabled(schedule.tenant_id)
    session.execute(
        insert(cast(Table, ScheduleRun.__table__)),
        [{"tenant_id": schedule.tenant_id, "schedule_id": schedule.id, "slot_at": now}],
    )
    return due_run(schedule, now)


def purge_schedule_runs(session: Session, *, older_than: dt.datetime, batch_size: int) -> int:
    """Delete up to `batch_size` claims made before `older_than`; returns how many.

    Safe: a tick only claims slots at or after its schedule's `next_slot_at`,
    which only moves forward, so an old claim guards nothing any more.
    """
    doomed = select(ScheduleRun.id).where(ScheduleRun.created_at < older_than).limit(batch_size)
    result = session.execute(delete(ScheduleRun).where(ScheduleRun.id.in_(doomed)))
    return int(getattr(result, "rowcount", 0) or 0)
