"""Tenants' schedules on SQLite: checked input, and runtime changes that the next tick sees."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.orm import Session

from db.models import Schedule, ScheduleRun, Tenant
from services.errors import NotFound, ValidationFailed
from services.schedule_slots import claim_due_slots
from services.schedules import (
    create_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
    schedule_info,
    update_schedule,
)
from tests.unit.services.schedule_helpers import ACTORS, NOON, count, make


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"cron": "61 * * * *"}, "minute"),
        ({"cron": "@often"}, "unknown shortcut"),
        ({"timezone": "Europe/Atlantis"}, "unknown timezone"),
        ({"actor": "nope"}, "unknown actor 'nope'"),
        ({"args": {}}, "url"),
        ({"args": {"url": "x", "extra": 1}}, "extra"),
        ({"args": {"url": 5}}, "url"),
        ({"args": {"url": "x", "tenant_id": 2}}, "tenant_id"),
        ({"args": ["x"]}, "JSON object"),
        ({"catch_up": "some"}, "catch_up"),
        ({"start_at": dt.datetime(2026, 1, 1)}, "timezone"),
        ({"start_at": NOON, "end_at": NOON}, "before end_at"),
    ],
)
def test_bad_input_is_refused_clearly_and_nothing_is_stored(
    sqlite_session: Session, tenant: Tenant, overrides: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationFailed, match=says):
        make(sqlite_session, tenant, **overrides)

    assert count(sqlite_session, Schedule) == 0


def test_a_schedule_for_an_unknown_tenant_is_refused(sqlite_session: Session) -> None:
    with pytest.raises(NotFound):
        create_schedule(
            sqlite_session, 99, actor="free", args={}, cron="@daily", actors=ACTORS, now=NOON
        )


def test_a_new_schedule_waits_for_its_first_slot_after_now(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant, now=NOON + dt.timedelta(seconds=1))

    assert schedule.next_slot_at == NOON + dt.timedelta(minutes=5)
    info = schedule_info(sqlite_session, schedule)
    assert (info["blocked"], info["timezone"], info["catch_up"]) == (None, "UTC", "latest")


def test_a_rejected_edit_changes_nothing_and_a_good_one_reschedules(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant)

    with pytest.raises(ValidationFailed):
        update_schedule(sqlite_session, schedule.id, actors=ACTORS, now=NOON, cron="bad")
    with pytest.raises(ValidationFailed, match="cannot change"):
        update_schedule(sqlite_session, schedule.id, actors=ACTORS, now=NOON, tenant_id=2)
    assert (schedule.cron, schedule.next_slot_at) == ("*/5 * * * *", NOON + dt.timedelta(minutes=5))

    update_schedule(sqlite_session, schedule.id, actors=ACTORS, now=NOON, cron="0 13 * * *")
    assert schedule.next_slot_at == NOON + dt.timedelta(hours=1)


def test_pause_resume_and_remove_take_effect_at_the_next_tick(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule = make(sqlite_session, tenant)
    later = NOON + dt.timedelta(minutes=30)

    pause_schedule(sqlite_session, schedule.id)
    assert claim_due_slots(sqlite_session, now=later, actors=ACTORS) == []
    assert schedule_info(sqlite_session, schedule)["blocked"] == "paused"

    resume_schedule(sqlite_session, schedule.id, now=later)
    # The paused half hour is not run; the next slot after resuming is.
    assert claim_due_slots(sqlite_session, now=later, actors=ACTORS) == []
    due = claim_due_slots(sqlite_session, now=later + dt.timedelta(minutes=5), actors=ACTORS)
    assert [run["slot_at"] for run in due] == [later + dt.timedelta(minutes=5)]

    remove_schedule(sqlite_session, schedule.id)
    assert list_schedules(sqlite_session) == []
    assert count(sqlite_session, ScheduleRun) == 0


def test_a_deleted_tenants_schedules_go_with_it(sqlite_session: Session, tenant: Tenant) -> None:
    make(sqlite_session, tenant)
    sqlite_session.delete(tenant)
    sqlite_session.flush()

    assert count(sqlite_session, Schedule) == 0
