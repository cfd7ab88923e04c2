"""Scenario 6: a load over 100 tenants, two workers, 1% transient and 0.1% permanent failures.

Every job is accounted for at the end: job records = jobs sent; succeeded =
sent - permanent; each permanent one dead with its reason and a dead-letter
row; each transient one succeeded on its second attempt; one effect row per
succeeded job, none twice; every tenant's counts right.

The size is `LOAD_JOBS`: the issue's 50,000 unless `TASKYARD_LOAD_JOBS` says
otherwise (a smaller run while working on it):

    TASKYARD_LOAD_JOBS=5000 .venv/bin/pytest tests/reliability/test_load.py
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from dramatiq import Broker
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

import brokers
from actors.base import TaskyardActor, taskyard_actor
from db.models import JOB_DEAD, JOB_SUCCEEDED, DeadLetter, Job
from middleware.db_session import find_middleware
from middleware.tenant_routing import TenantRouting
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.load_actors import ACTOR_NAME, PERMANENT_REASON, record_load_effect
from tests.support import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration]

LOAD_JOBS = int(os.environ.get("TASKYARD_LOAD_JOBS", "50000"))
TENANTS = 100
# Every 100th job fails once, every 1000th for good: 1% and 0.1%.
TRANSIENT_EVERY = 100
PERMANENT_EVERY = 1000
# Messages per `send_many` call: one transaction and one publish burst each.
CHUNK = 500
# Generous for 2 shared cores: the jobs themselves take well under this.
DRAIN_SECONDS = 60 + LOAD_JOBS / 100
# Sending and the checks come on top of the drain.
TEST_TIMEOUT = int(60 + DRAIN_SECONDS + LOAD_JOBS / 200)

LOAD_MODULE = "tests.reliability.load_actors"
EFFECTS_DDL = """CREATE TABLE IF NOT EXISTS rel_load_effects (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL,
    tenant_id bigint NOT NULL,
    index integer NOT NULL
)"""


def outcome_of(index: int) -> str:
    """How job `index` fails: "permanent", "transient" or "" (not at all)."""
    if index % PERMANENT_EVERY == PERMANENT_EVERY - 1:
        return "permanent"
    if index % TRANSIENT_EVERY == TRANSIENT_EVERY // 2:
        return "transient"
    return ""


@dataclasses.dataclass
class Load:
    """The scenario's engine, tenants, producer and its copy of the actor."""

    engine: Engine
    tenant_ids: list[int]
    producer: Broker
    actor: TaskyardActor
    routing: TenantRouting


@pytest.fixture
def load(reliability_database: str, settings: Settings) -> Iterator[Load]:
    """100 fresh tenants, a producer on a queue prefix of its own; its queues deleted after."""
    engine = create_engine(reliability_database)
    with engine.begin() as conn:
        conn.execute(text(EFFECTS_DDL))
    run = uuid.uuid4().hex[:8]
    with Session(engine) as session, session.begin():
        tenant_ids = [create_tenant(session, f"load-{run}-{n}").id for n in range(TENANTS)]
    prefix = f"l{run}."
    producer = brokers.build_broker(
        dataclasses.replace(settings, database_url=reliability_database, queue_prefix=prefix)
    )
    routing = find_middleware(producer, TenantRouting)
    assert routing is not None
    # The same function as the workers' actor, bound to this producer's broker.
    actor = taskyard_actor(name=ACTOR_NAME, broker=producer)(record_load_effect.fn)
    try:
        yield Load(engine, tenant_ids, producer, actor, routing)
    finally:
        producer.close()
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        channel = connection.channel()
        names = [routing.queue_for(t) for t in tenant_ids] + [routing.system_queue]
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)
        connection.close()
        engine.dispose()


def finished(load: Load) -> int:
    """How many of the scenario's jobs are final (succeeded or dead)."""
    with Session(load.engine) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.tenant_id.in_(load.tenant_ids))
                .where(Job.status.in_([JOB_SUCCEEDED, JOB_DEAD]))
            )
            or 0
        )


@pytest.mark.timeout(TEST_TIMEOUT)
def test_every_job_of_a_load_is_accounted_for(
    load: Load, reliability_database: str, tmp_path: Path
) -> None:
    # Given two worker processes serving the 100 tenants, with fast retries
    env = worker_env(
        DATABASE_URL=reliability_database,
        TASKYARD_QUEUE_PREFIX=load.routing.queue_prefix,
        TASKYARD_TENANTS=",".join(map(str, load.tenant_ids)),
        TASKYARD_METRICS_PORT="0",
        TASKYARD_MIN_BACKOFF_MS="50",
        TASKYARD_MAX_BACKOFF_MS="200",
    )
    workers = [
        WorkerProcess(tmp_path / f"worker{n}.log", env, threads=8, modules=[LOAD_MODULE])
        for n in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready(60)

        # When LOAD_JOBS jobs are sent round-robin over the tenants, in bulk
        started = time.monotonic()
        expected: dict[str, tuple[int, str]] = {}
        kwargs_list = [
            {"tenant_id": load.tenant_ids[i % TENANTS], "index": i, "fail": outcome_of(i)}
            for i in range(LOAD_JOBS)
        ]
        for start in range(0, LOAD_JOBS, CHUNK):
            chunk = kwargs_list[start : start + CHUNK]
            for kwargs, message in zip(chunk, load.actor.send_many(chunk), strict=True):
                expected[message.message_id] = (kwargs["tenant_id"], kwargs["fail"])
        sent_seconds = time.monotonic() - started
        wait_for(
            lambda: finished(load) == LOAD_JOBS,
            timeout=DRAIN_SECONDS,
            what=f"{LOAD_JOBS} jobs to finish",
        )
        total_seconds = time.monotonic() - started
    finally:
        for worker in workers:
            worker.stop()
    print(
        f"load: {LOAD_JOBS} jobs sent in {sent_seconds:.1f} s, all final in"
        f" {total_seconds:.1f} s ({LOAD_JOBS / total_seconds:.0f} jobs/s)"
    )

    # Then every job has a record, and each ended as its argument said
    permanent = {m for m, (_, fail) in expected.items() if fail == "permanent"}
    transient = {m for m, (_, fail) in expected.items() if fail == "transient"}
    assert len(expected) == LOAD_JOBS
    assert len(permanent) == LOAD_JOBS // PERMANENT_EVERY
    with Session(load.engine) as session:
        jobs = {
            job.message_id: job
            for job in session.scalars(select(Job).where(Job.tenant_id.in_(load.tenant_ids)))
        }
        dead_letters = {
            dead.message_id: dead
            for dead in session.scalars(
                select(DeadLetter).where(DeadLetter.tenant_id.in_(load.tenant_ids))
            )
        }
    assert set(jobs) == set(expected)
    assert {m for m, job in jobs.items() if job.status == JOB_DEAD} == permanent
    succeeded = {m for m, job in jobs.items() if job.status == JOB_SUCCEEDED}
    assert succeeded == set(expected) - permanent
    assert {m: jobs[m].attempts for m in transient if jobs[m].attempts != 2} == {}
    assert {m for m in succeeded - transient if jobs[m].attempts != 1} == set()
    # The job record says what failed; the dead letter says why it is dead.
    assert {
        m: jobs[m].error
        for m in permanent
        if jobs[m].error != f"PermanentError: load job {jobs[m].args['index']} always fails"
    } == {}
    # Each dead job has its dead-letter row with the reason, and nothing else is dead.
    assert set(dead_letters) == permanent
    assert {dead.reason for dead in dead_letters.values()} == {PERMANENT_REASON}
    assert {dead.attempts for dead in dead_letters.values()} == {1}

    # And one effect row per succeeded job, none twice, none of a dead job
    with load.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT message_id, count(*) FROM rel_load_effects"
                " WHERE tenant_id = ANY(:tenants) GROUP BY message_id"
            ),
            {"tenants": load.tenant_ids},
        )
        effects = {message_id: int(count) for message_id, count in rows}
    assert set(effects) == succeeded
    assert {m: n for m, n in effects.items() if n != 1} == {}

    # And every tenant's counts are right
    per_tenant: dict[int, dict[str, int]] = {t: {} for t in load.tenant_ids}
    for job in jobs.values():
        assert job.tenant_id is not None
        per_tenant[job.tenant_id][job.status] = per_tenant[job.tenant_id].get(job.status, 0) + 1
    want: dict[int, dict[str, int]] = {t: {} for t in load.tenant_ids}
    for i in range(LOAD_JOBS):
        status = JOB_DEAD if outcome_of(i) == "permanent" else JOB_SUCCEEDED
        counts = want[load.tenant_ids[i % TENANTS]]
        counts[status] = counts.get(status, 0) + 1
    assert per_tenant == want
