"""Scheduler: many schedules, some due; one tick claims and enqueues every due slot."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import text
from sqlalchemy.orm import Session

import brokers
from actors.schedules import schedulable_actors, send_due_runs
from actors.transaction import taskyard_transaction
from bench.env import BenchError
from bench.report import Figure
from bench.systems import Taskyard, engine_of
from services.schedule_slots import claim_due_slots

SCENARIO = "7. Scheduler (one tick)"

# Bulk insert: `due` schedules whose next minute slot (a cron slot, so on the minute)
# has come, the rest due tomorrow.
INSERT = text(
    """
    INSERT INTO schedules (tenant_id, actor, args, cron, timezone, catch_up, enabled, next_slot_at)
    SELECT CASE WHEN g % 2 = 0 THEN :a ELSE :b END, 'bench_noop', '{}'::jsonb, '* * * * *',
           'UTC', 'latest', true,
           CASE WHEN g <= :due THEN date_trunc('minute', CAST(:now AS timestamptz))
                ELSE :now + interval '1 day' END
    FROM generate_series(1, :total) AS g
    """
)


def _reset(taskyard: Taskyard) -> None:
    with Session(engine_of(taskyard.env)) as session:
        session.execute(text("DELETE FROM schedule_runs"))
        session.execute(text("DELETE FROM schedules"))
        session.commit()
    taskyard.reset()


def tick_seconds(taskyard: Taskyard, *, total: int, due: int) -> float:
    """Seconds for one tick over `total` schedules with `due` of them due."""
    _reset(taskyard)
    now = dt.datetime.now(dt.UTC)
    a, b = taskyard.tenants[:2]
    with Session(engine_of(taskyard.env)) as session:
        session.execute(INSERT, {"a": a, "b": b, "due": due, "total": total, "now": now})
        session.execute(text("ANALYZE schedules"))
        session.commit()
    broker = brokers.broker
    started = time.perf_counter()
    # The body of `scheduler_tick`, in the transaction a worker would give it.
    with taskyard_transaction(broker) as session:
        runs = claim_due_slots(session, now=now, actors=schedulable_actors(broker))
        sent = send_due_runs(broker, runs)
    elapsed = time.perf_counter() - started
    if len(sent) != due:
        raise BenchError(f"the tick sent {len(sent)} jobs for {due} due schedules")
    _reset(taskyard)
    return elapsed


def run(taskyard: Taskyard, *, total: int, due: int, runs: int) -> list[Figure]:
    """The tick's time to claim and enqueue `due` of `total` schedules."""
    figure = Figure(
        SCENARIO,
        f"{total:,} schedules, {due:,} due: claim and enqueue",
        "taskyard",
        "s",
        at_most=10.0,
        higher_is_better=False,
    )
    for _ in range(runs):
        figure.values.append(tick_seconds(taskyard, total=total, due=due))
    return [figure]
