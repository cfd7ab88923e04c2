"""The tick's service on SQLite: claim once, catch-up modes, DST days and timezones, run-now."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session

from db.models import TENANT_DISABLED, ScheduleRun, Tenant
from services.cron import parse_cron
from services.errors import NotFound, TenantDisabled
from services.schedule_slots import (
    MAX_CATCH_UP_SLOTS,
    claim_due_slots,
    claim_run_now,
    plan_slots,
    purge_schedule_runs,
)
from services.schedules import schedule_info
from services.tenants import create_tenant, set_tenant_status
from tests.unit.services.schedule_helpers import ACTORS, NOON, UTC, count, make, minutes


def test_the_same_tick_twice_claims_each_slot_once(sqlite_session: Session, tenant: Tenant) -> None:
    make(sqlite_session, tenant)
    now = NOON + dt.timedelta(minutes=5)

    first = claim_due_slots(sqlite_session, now=now, actors=ACTORS)
    second = claim_due_slots(sqlite_session, now=now, actors=ACTORS)

    assert [(r["actor"], r["args"], r["slot_at"]) for r in first] == [
        ("ping", {"url": "https://example.test"}, now)
    ]
    assert second == []


def test_a_slot_already_claimed_elsewhere_is_not_returned(
    sqlite_session: Session, tenant: Tenant
) -> None:
    """Given another scheduler claimed the slot but this one read the schedule before it moved."""
    schedule = make(sqlite_session, tenant)
    now = NOON + dt.timedelta(minutes=5)
    sqlite_session.add(ScheduleRun(tenant_id=tenant.id, schedule_id=schedule.id, slot_at=now))
    sqlite_session.flush()

    assert claim_due_slots(sqlite_session, now=now, actors=ACTORS) == []
    assert schedule.next_slot_at == now + dt.timedelta(minutes=5)


def test_a_skipped_tick_loses_no_slot(sqlite_session: Session, tenant: Tenant) -> None:
    make(sqlite_session, tenant, cron="* * * * *", catch_up="skip")

    # Ticks at 12:01 and 12:04: the ticks of 12:02 and 12:03 were dropped.
    first = claim_due_slots(sqlite_session, now=NOON + dt.timedelta(minutes=1), actors=ACTORS)
    later = claim_due_slots(sqlite_session, now=NOON + dt.timedelta(minutes=4), actors=ACTORS)

    slots = [run["slot_at"] for run in first + later]
    assert slots == [NOON + dt.timedelta(minutes=m) for m in (1, 2, 3, 4)]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        # Down from 12:00 to 15:02: the 15:00 slot is on time, the rest were missed.
        ("latest", [dt.time(14, 55), dt.time(15, 0)]),
        ("skip", [dt.time(15, 0)]),
        ("all", None),
    ],
)
def test_catch_up_after_downtime_follows_the_schedules_mode(
    catch_up: str, expected: list[dt.time] | None
) -> None:
    plan = plan_slots(
        parse_cron("*/5 * * * *"),
        "UTC",
        next_slot_at=NOON + dt.timedelta(minutes=5),
        now=NOON + dt.timedelta(hours=3, minutes=2),
        catch_up=catch_up,
    )

    times = [slot.time() for slot in plan.run]
    if expected is None:
        assert len(times) == 36 and times[0] == dt.time(12, 5) and times[-1] == dt.time(15, 0)
    else:
        assert times == expected
    assert plan.next_slot_at == NOON + dt.timedelta(hours=3, minutes=5)


def test_catch_up_all_is_bounded_to_the_latest_missed_slots() -> None:
    now = NOON + dt.timedelta(days=2)
    plan = plan_slots(parse_cron("* * * * *"), "UTC", next_slot_at=NOON, now=now, catch_up="all")

    assert plan.run[-1] == now
    # The bounded missed slots plus the on-time ones of the last few minutes.
    assert MAX_CATCH_UP_SLOTS < len(plan.run) <= MAX_CATCH_UP_SLOTS + 6
    assert plan.run == sorted(set(plan.run))


def test_start_and_end_times_bound_the_slots(sqlite_session: Session, tenant: Tenant) -> None:
    start, end = NOON + dt.timedelta(minutes=20), NOON + dt.timedelta(minutes=30)
    schedule = make(sqlite_session, tenant, start_at=start, end_at=end)
    assert schedule.next_slot_at == start

    runs = [
        run["slot_at"]
        for now in minutes(NOON, NOON + dt.timedelta(hours=1))
        for run in claim_due_slots(sqlite_session, now=now, actors=ACTORS)
    ]

    assert runs == [start, start + dt.timedelta(minutes=5), end]
    assert schedule.next_slot_at is None
    assert schedule_info(sqlite_session, schedule)["blocked"] == "ended"


@pytest.mark.parametrize(
    ("first_day", "dst_day"),
    [
        (dt.datetime(2026, 3, 28, tzinfo=UTC), dt.date(2026, 3, 29)),  # 02:30 does not exist
        (dt.datetime(2026, 10, 24, tzinfo=UTC), dt.date(2026, 10, 25)),  # 02:30 happens twice
    ],
)
def test_paris_0230_runs_once_a_day_across_a_dst_change(
    sqlite_session: Session, tenant: Tenant, first_day: dt.datetime, dst_day: dt.date
) -> None:
    make(sqlite_session, tenant, cron="30 2 * * *", timezone="Europe/Paris", now=first_day)

    runs = [
        run["slot_at"]
        for now in minutes(first_day, first_day + dt.timedelta(days=3), step=10)
        for run in claim_due_slots(sqlite_session, now=now, actors=ACTORS)
    ]

    days = [slot.astimezone(dt.UTC).date() for slot in runs]
    assert days == [first_day.date() + dt.timedelta(days=d) for d in range(3)]
    assert dst_day in days


def test_new_york_and_kolkata_run_at_their_own_nine_oclock(
    sqlite_session: Session, tenant: Tenant
) -> None:
    day = dt.datetime(2026, 7, 1, tzinfo=UTC)
    for zone in ("America/New_York", "Asia/Kolkata"):
        make(sqlite_session, tenant, cron="0 9 * * *", timezone=zone, now=day)

    runs = {
        run["schedule_id"]: run["slot_at"]
        for now in minutes(day, day + dt.timedelta(hours=20), step=15)
        for run in claim_due_slots(sqlite_session, now=now, actors=ACTORS)
    }

    assert sorted(runs.values()) == [day.replace(hour=3, minute=30), day.replace(hour=13)]


def test_a_disabled_tenants_schedule_is_not_run_and_says_so(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant)
    set_tenant_status(sqlite_session, tenant.id, TENANT_DISABLED)

    assert claim_due_slots(sqlite_session, now=NOON + dt.timedelta(hours=1), actors=ACTORS) == []
    assert schedule_info(sqlite_session, schedule)["blocked"] == "tenant_disabled"
    with pytest.raises(TenantDisabled):
        claim_run_now(sqlite_session, schedule.id, now=NOON)


def test_a_schedule_whose_actor_is_gone_is_left_unclaimed(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant)

    assert claim_due_slots(sqlite_session, now=NOON + dt.timedelta(hours=1), actors={"free"}) == []
    assert schedule.next_slot_at == NOON + dt.timedelta(minutes=5)


def test_run_now_claims_an_extra_slot_at_now(sqlite_session: Session, tenant: Tenant) -> None:
    other = create_tenant(sqlite_session, "other")
    schedule = make(sqlite_session, other)
    now = NOON + dt.timedelta(seconds=42)

    run = claim_run_now(sqlite_session, schedule.id, now=now)

    assert (run["schedule_id"], run["tenant_id"], run["slot_at"]) == (schedule.id, other.id, now)
    assert count(sqlite_session, ScheduleRun) == 1
    with pytest.raises(NotFound):
        claim_run_now(sqlite_session, 12345, now=now)


def test_old_claims_are_purged_and_recent_ones_kept(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant)
    for days_ago in (40, 35, 1):
        sqlite_session.add(
            ScheduleRun(
                tenant_id=tenant.id,
                schedule_id=schedule.id,
                slot_at=NOON - dt.timedelta(days=days_ago),
                created_at=NOON - dt.timedelta(days=days_ago),
            )
        )
    sqlite_session.flush()

    deleted = purge_schedule_runs(
        sqlite_session, older_than=NOON - dt.timedelta(days=30), batch_size=1
    )

    assert (deleted, count(sqlite_session, ScheduleRun)) == (1, 2)
