"""Fairness with many busy tenants on one worker: a quiet tenant first, the prefetch bounded."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from bench.unacked import unacked_messages
from db.models import Job, Tenant
from settings import Settings
from tests.integration import fair_actors
from tests.integration.test_tenant_scale import worker_child
from tests.support import IN_CI, WorkerProcess, wait_for, worker_env
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration

BUSY_TENANTS = 100
JOBS_EACH = 20
# Each busy job's length: 2,000 jobs on 4 threads last some 10 s.
PAUSE_SECONDS = 0.02
PREFETCH = 16
# The busy tenants hold some 100 jobs in hand, 0.5 s of work: first in first out, the
# quiet job would wait for them; served fairly, for one thread to come free.
QUIET_START_SECONDS = 0.25


def test_a_quiet_tenant_goes_ahead_of_100_busy_tenants_within_the_prefetch_bound(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    if shutil.which("rabbitmqctl") is None:
        if IN_CI:
            pytest.fail("rabbitmqctl is not installed (CI's machine runs RabbitMQ)")
        pytest.skip("rabbitmqctl is not installed here (it counts the unacknowledged messages)")
    # Given 100 busy tenants with backlogs queued, and a quiet one, on queues of their own
    run = uuid.uuid4().hex[:8]
    with sessions.begin() as session:
        ids = list(
            session.scalars(
                insert(Tenant).returning(Tenant.id),
                [{"name": f"fair-{run}-{i}", "status": "active"} for i in range(BUSY_TENANTS + 1)],
            )
        )
    busy, quiet = ids[:-1], ids[-1]
    own = dataclasses.replace(settings, queue_prefix=f"{settings.queue_prefix}fair{run}.")
    for tenant_id in busy:
        for _ in range(JOBS_EACH):
            message = fair_actors.fair_pause.message(tenant_id=tenant_id, seconds=PAUSE_SECONDS)
            message = dataclasses.replace(message, queue_name=own.tenant_queue(tenant_id))
            publish_now(brokers.broker, message)
    worker = WorkerProcess(
        tmp_path / "worker.log",
        worker_env(
            TASKYARD_QUEUE_PREFIX=own.queue_prefix,
            TASKYARD_TENANTS=",".join(map(str, ids)),
            TASKYARD_PREFETCH=str(PREFETCH),
        ),
        threads=4,
        modules=["tests.integration.fair_actors"],
    )
    peak = 0
    stop = threading.Event()

    def watch_unacked(child: int) -> None:
        nonlocal peak
        while not stop.wait(0.5):
            peak = max(peak, unacked_messages([child]))

    watcher: threading.Thread | None = None
    try:
        worker.wait_ready()
        child = worker_child(worker.proc.pid)
        watcher = threading.Thread(target=watch_unacked, args=(child,), daemon=True)
        watcher.start()
        time.sleep(1.0)

        # When the quiet tenant sends one job while the backlogs drain
        message = fair_actors.fair_pause.message(tenant_id=quiet, seconds=0)
        message = dataclasses.replace(message, queue_name=own.tenant_queue(quiet))
        publish_now(brokers.broker, message)

        # Then it starts within a second, while most of the busy tenants' jobs still wait
        def quiet_started() -> Job | None:
            with sessions() as session:
                job = session.get(Job, message.message_id)
                return job if job is not None and job.started_at is not None else None

        job = wait_for(quiet_started, timeout=60, what="the quiet tenant's job")
        with sessions() as session:
            busy_done = len(
                session.scalars(
                    select(Job.message_id).where(
                        Job.tenant_id.in_(busy), Job.started_at <= job.started_at
                    )
                ).all()
            )
        waited = (job.started_at - job.enqueued_at).total_seconds()
        still_unacked = unacked_messages([child])
        print(
            f"\nquiet job started {waited:.3f}s after its send, after {busy_done} of "
            f"{BUSY_TENANTS * JOBS_EACH} busy jobs; peak unacked {peak}, now {still_unacked}"
        )
        assert waited < QUIET_START_SECONDS
        assert busy_done < BUSY_TENANTS * JOBS_EACH // 2

        # And the worker never held more than one message per busy tenant plus the bound
        peak = max(peak, still_unacked)
        assert 0 < peak <= BUSY_TENANTS + PREFETCH + 1
        assert worker.stop() == 0
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        worker.stop()
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        channel = connection.channel()
        for tenant_id in ids:
            for name in (own.tenant_queue(tenant_id), own.system_queue):
                for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                    channel.queue_delete(queue)
        connection.close()
