"""Tenant schedules through the whole path: tick → outbox → RabbitMQ → worker → job record."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors.schedules import run_schedule_now, schedulable_actors, scheduler_tick
from db.models import Job, Schedule, ScheduleRun
from services.schedules import create_schedule
from tests.support import REPO, WorkerProcess, free_port, wait_for, worker_env

pytestmark = pytest.mark.integration

LAST_YEAR = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def latest_new_year(timezone: str) -> dt.datetime:
    """The latest 1 January 00:00 in `timezone` (in UTC): a yearly schedule's newest missed slot.

    Worked out from the calendar, not from a fixed year, so the tests below hold in
    any year (for a few minutes after each new year the slot is late, not missed,
    and the scheduler would run two).
    """
    zone = ZoneInfo(timezone)
    year = dt.datetime.now(zone).year
    return dt.datetime(year, 1, 1, tzinfo=zone).astimezone(dt.UTC)


def make_schedule(
    sessions: sessionmaker[Session], tenant_id: int, url: str, *, cron: str, timezone: str
) -> int:
    """A committed schedule of `ingest_resources`, created long ago so a slot is due now."""
    with sessions.begin() as session:
        schedule = create_schedule(
            session,
            tenant_id,
            actor="ingest_resources",
            args={"source_url": url},
            cron=cron,
            timezone=timezone,
            actors=schedulable_actors(brokers.broker),
            now=LAST_YEAR,
        )
        return schedule.id


def jobs_of(sessions: sessionmaker[Session], schedule_id: int) -> list[Job]:
    """The job records a schedule's sends made, once every one has succeeded."""
    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.schedule_id == schedule_id)))
        return jobs if jobs and all(job.status == "succeeded" for job in jobs) else []


def schedule_state(sessions: sessionmaker[Session], schedule_id: int, tick_id: str) -> str:
    """What a failed wait found: the tick's record, the schedule, its claims and its jobs."""
    with sessions() as session:
        tick = session.get(Job, tick_id)
        schedule = session.get(Schedule, schedule_id)
        runs = session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id))
        jobs = session.scalars(select(Job).where(Job.schedule_id == schedule_id))
        due = session.scalars(
            select(Schedule.id).where(
                Schedule.enabled, Schedule.next_slot_at <= dt.datetime.now(dt.UTC)
            )
        )
        return (
            f"tick {tick and (tick.status, tick.attempts, tick.error, tick.result)}; "
            f"schedule {schedule and (schedule.next_slot_at, schedule.last_slot_at)}; "
            f"claims {[run.slot_at for run in runs]}; "
            f"jobs {[(j.message_id, j.status, j.attempts, j.error) for j in jobs]}; "
            f"due schedules {list(due)}"
        )


def test_a_due_slot_is_run_by_a_worker_and_its_record_names_schedule_and_slot(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a yearly schedule in Asia/Kolkata whose slots have passed since last year
    tenant_id = make_tenant("scheduled")
    httpserver.expect_request("/feed.json").respond_with_json([])
    schedule_id = make_schedule(
        sessions,
        tenant_id,
        httpserver.url_for("/feed.json"),
        cron="@yearly",
        timezone="Asia/Kolkata",
    )

    # When the scheduler's tick runs on the worker
    tick = scheduler_tick.send()

    # Then the worker runs the job, whose record shows the schedule and the slot
    jobs = wait_for(
        lambda: jobs_of(sessions, schedule_id),
        what="the scheduled job",
        state=lambda: schedule_state(sessions, schedule_id, tick.message_id),
    )
    assert len(jobs) == 1
    assert jobs[0].tenant_id == tenant_id and jobs[0].actor == "ingest_resources"
    assert jobs[0].slot_at == latest_new_year("Asia/Kolkata")
    assert jobs[0].args == {"source_url": httpserver.url_for("/feed.json"), "tenant_id": tenant_id}


def test_two_ticks_for_the_same_minute_send_one_job(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a schedule with one due slot
    tenant_id = make_tenant("twice")
    httpserver.expect_request("/feed.json").respond_with_json([])
    schedule_id = make_schedule(
        sessions, tenant_id, httpserver.url_for("/feed.json"), cron="0 0 1 1 *", timezone="UTC"
    )

    # When two ticks run at once (two schedulers, or one tick delivered twice)
    ticks = [scheduler_tick.send(), scheduler_tick.send()]
    wait_for(lambda: all(jobs_of_tick(sessions, t.message_id) for t in ticks), what="both ticks")

    # Then the slot was claimed and sent once
    jobs = wait_for(lambda: jobs_of(sessions, schedule_id), what="the scheduled job")
    with sessions() as session:
        runs = list(
            session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id))
        )
    assert [job.slot_at for job in jobs] == [latest_new_year("UTC")]
    assert [run.slot_at for run in runs] == [latest_new_year("UTC")]


def test_run_now_sends_an_extra_run_at_once(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("now")
    httpserver.expect_request("/feed.json").respond_with_json([])
    schedule_id = make_schedule(
        sessions, tenant_id, httpserver.url_for("/feed.json"), cron="0 0 1 1 *", timezone="UTC"
    )
    now = dt.datetime.now(dt.UTC)

    message_id = run_schedule_now(schedule_id, now=now)

    jobs = wait_for(lambda: jobs_of(sessions, schedule_id), what="the run-now job")
    assert [(job.message_id, job.slot_at) for job in jobs] == [(message_id, now)]


def jobs_of_tick(sessions: sessionmaker[Session], message_id: str) -> bool:
    """Whether a tick's job record is final."""
    with sessions() as session:
        job = session.get(Job, message_id)
        return job is not None and job.status in ("succeeded", "skipped")


def start_scheduler(log_path: Path, probe_port: int = 0) -> subprocess.Popen[bytes]:
    """A real `periodiq schedules` process of this test run (probes on `probe_port`, if any)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("periodiq")), "schedules"],
            cwd=REPO,
            env=worker_env(TASKYARD_SCHEDULER_PROBE_PORT=str(probe_port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_two_periodiq_schedulers_at_once_run_each_slot_once(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    # Given an every-minute schedule with slots due, and two schedulers started together
    # (periodiq sends an every-minute actor at once when it starts: the two race)
    tenant_id = make_tenant("two-schedulers")
    httpserver.expect_request("/feed.json").respond_with_json([])
    with sessions.begin() as session:
        schedule_id = create_schedule(
            session,
            tenant_id,
            actor="ingest_resources",
            args={"source_url": httpserver.url_for("/feed.json")},
            cron="* * * * *",
            catch_up="skip",
            actors=schedulable_actors(brokers.broker),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2),
        ).id
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    ports = [free_port(), free_port()]
    schedulers = [start_scheduler(log, port) for log, port in zip(logs, ports, strict=True)]
    try:
        # When both have sent their tick
        wait_for(
            lambda: all("Scheduling" in log.read_text(errors="replace") for log in logs),
            timeout=75,
            what="both schedulers to send a tick",
        )
        jobs = wait_for(lambda: jobs_of(sessions, schedule_id), what="the scheduled job")

        # (and each scheduler's probes say it is live, and ready once its send went through)
        def answers(port: int, path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as got:
                    return int(got.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert [answers(port, "/healthz") for port in ports] == [200, 200]
        wait_for(
            lambda: [answers(port, "/readyz") for port in ports] == [200, 200],
            what="both schedulers ready",
        )
    finally:
        for proc in schedulers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)

    # Then every slot was sent once
    slots = [job.slot_at for job in jobs]
    assert slots and len(slots) == len(set(slots))
