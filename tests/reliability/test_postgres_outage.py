"""PostgreSQL stopped for 20 s under load: jobs retry, none succeeds without its effect, none lost.

The worker and the producer use a private cluster (`start_pg_cluster`), which
is stopped by its own data directory; RabbitMQ is the shared server, with
queues of this test's own prefix.  Jobs are `process_resource` messages, one
per pending item of one ingest: each upserts a resource row, marks its item
processed and counts it on the ingest, in the job's own transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

import brokers
from actors import process_resource
from db.migrate import upgrade_to_head
from db.models import DeadLetter, IngestItem, Job, Resource
from middleware.db_session import find_middleware
from middleware.outbox import find_outbox
from middleware.tenant_routing import TenantRouting
from services.ingest import get_ingest
from settings import Settings
from tests.reliability.outage_support import new_ingest, resource_message
from tests.reliability.pg_cluster import PgCluster
from tests.support import WorkerProcess, delete_queues, wait_for, worker_env

pytestmark = [pytest.mark.integration]

OUTAGE_SECONDS = 20.0
SEND_INTERVAL_SECONDS = 0.2  # 5 jobs a second
ITEMS = 400
# Sizing for the outage: attempt n waits up to min(MAX, MIN * 2^(n-1)) ms, so 30
# attempts with a 4 s ceiling span about a minute on average, three times the outage.
SIZED_ATTEMPTS = "30"
# One attempt: every job the outage hits gives up while its failure cannot be recorded.
ONE_ATTEMPT = "1"
MIN_BACKOFF_MS = "250"
# Jobs sent just before the outage with delays of 1 to 16 s: due while the cluster is down.
DUE_DURING_OUTAGE = 100
MAX_BACKOFF_MS = "4000"


@pytest.fixture
def cluster(start_pg_cluster: Callable[[], PgCluster]) -> PgCluster:
    """A private, migrated cluster."""
    cluster = start_pg_cluster()
    upgrade_to_head(cluster.url())
    return cluster


@pytest.fixture
def database(cluster: PgCluster) -> Iterator[Engine]:
    """An engine on the cluster's database."""
    engine = create_engine(cluster.url(), pool_pre_ping=True)
    yield engine
    engine.dispose()


@dataclasses.dataclass
class ProducerLog:
    """What the producer saw: ids of sends that returned, and errors of those that raised."""

    returned: list[str] = dataclasses.field(default_factory=list)
    raised: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Sends that returned while the cluster was down (there must be none: no record, no send).
    while_down: list[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize(
    "max_attempts", [SIZED_ATTEMPTS, ONE_ATTEMPT], ids=["sized-for-the-outage", "one-attempt"]
)
def test_postgres_outage_retries_jobs_and_loses_or_duplicates_nothing(
    cluster: PgCluster, database: Engine, settings: Settings, tmp_path: Path, max_attempts: str
) -> None:
    # Given a worker and a producer on the private cluster, and one ingest's items to process
    tenant_id, ingest_id = new_ingest(database, items=ITEMS, name="pg-outage")
    prefix = f"p{uuid.uuid4().hex[:8]}."
    env = worker_env(
        DATABASE_URL=cluster.url(),
        TASKYARD_QUEUE_PREFIX=prefix,
        TASKYARD_TENANTS=str(tenant_id),
        TASKYARD_MAX_ATTEMPTS=max_attempts,
        TASKYARD_MIN_BACKOFF_MS=MIN_BACKOFF_MS,
        TASKYARD_MAX_BACKOFF_MS=MAX_BACKOFF_MS,
    )
    worker = WorkerProcess(tmp_path / "worker.log", env)
    producer = brokers.build_broker(
        dataclasses.replace(settings, database_url=cluster.url(), queue_prefix=prefix)
    )
    outbox, routing = find_outbox(producer), find_middleware(producer, TenantRouting)
    assert outbox is not None and routing is not None
    producer.declare_actor(process_resource)
    queue = routing.queue_for(tenant_id)
    log = ProducerLog()
    stop, down = threading.Event(), threading.Event()
    sent_count = iter(range(ITEMS))

    def send_one() -> str:
        n = next(sent_count)
        message = resource_message(tenant_id, ingest_id, n, queue)
        try:
            outbox.send(producer, message, None)
        except Exception as exc:  # the producer's view: whatever it raises is counted
            log.raised.append((message.message_id, f"{type(exc).__name__}: {exc}"))
        else:
            log.returned.append(message.message_id)
            if down.is_set():
                log.while_down.append(message.message_id)
        return message.message_id

    def produce() -> None:
        while not stop.wait(SEND_INTERVAL_SECONDS):
            send_one()

    def final_statuses() -> dict[str, str]:
        with Session(database) as session:
            rows = session.execute(
                select(Job.message_id, Job.status).where(Job.actor == "process_resource")
            )
            return {message_id: status for message_id, status in rows}

    producer_thread = threading.Thread(target=produce, name="producer", daemon=True)
    try:
        worker.wait_ready()
        producer_thread.start()
        wait_for(lambda: len(log.returned) >= 10, timeout=15, what="jobs flowing")
        wait_for(
            lambda: "succeeded" in final_statuses().values(), timeout=15, what="a first success"
        )

        # (And jobs that come due while it is down: a send needs PostgreSQL, so only jobs
        # already sent can meet the outage; these wait in RabbitMQ's delay queue.)
        for n in range(DUE_DURING_OUTAGE):
            message = resource_message(tenant_id, ingest_id, next(sent_count), queue)
            outbox.send(producer, message, 1_000 + n * 15_000 // DUE_DURING_OUTAGE)
            log.returned.append(message.message_id)

        # When the cluster is stopped for 20 s while jobs keep being sent, then started again
        cluster.stop()
        down.set()
        time.sleep(OUTAGE_SECONDS)
        down.clear()
        cluster.start()
        restarted = time.monotonic()
        time.sleep(3.0)
        stop.set()
        producer_thread.join(10)
        sent = log.returned + [message_id for message_id, _ in log.raised]

        # Then every job that the producer saw returned finishes, without a worker restart
        def all_final() -> bool:
            statuses = final_statuses()
            return all(statuses.get(m) in ("succeeded", "dead") for m in log.returned)

        wait_for(all_final, timeout=45, what="every sent job to finish")
        recovered = time.monotonic() - restarted
        # And a new job sent after the recovery succeeds
        fresh = send_one()
        wait_for(lambda: final_statuses().get(fresh) == "succeeded", timeout=15, what="a fresh job")
        assert worker.proc.poll() is None, "the worker exited"
    finally:
        stop.set()
        worker.stop()
        producer.close()
        for engine in (outbox.session_factory.kw["bind"], outbox.sends):
            engine.dispose()
        names = [queue, f"{queue}.DQ", f"{queue}.XQ"]
        delete_queues(settings.broker_url, names)

    with Session(database) as session:
        jobs = {
            job.message_id: job
            for job in session.scalars(select(Job).where(Job.actor == "process_resource"))
        }
        items = {
            item.resource_id: item.status
            for item in session.scalars(select(IngestItem).where(IngestItem.ingest_id == ingest_id))
        }
        resources = set(
            session.scalars(select(Resource.resource_id).where(Resource.tenant_id == tenant_id))
        )
        # Counted from its items while it runs (services.ingest.get_ingest)
        ingest = get_ingest(session, ingest_id)
        dead_letters = {
            letter.message_id: letter.reason
            for letter in session.scalars(
                select(DeadLetter).where(DeadLetter.tenant_id == tenant_id)
            )
        }
    assert ingest is not None
    worker_log = worker.log()
    statuses = [job.status for job in jobs.values()]
    retried = [job for job in jobs.values() if job.attempts > 1]
    print(
        f"\n[max attempts {max_attempts}] sent {len(sent) + 1}: returned {len(log.returned)}, "
        f"raised {len(log.raised)}, "
        f"returned while the cluster was down {len(log.while_down)}; "
        f"succeeded {statuses.count('succeeded')}, dead {statuses.count('dead')}, "
        f"retried {len(retried)} (max attempts {max(j.attempts for j in jobs.values())}); "
        f"all final {recovered:.1f}s after the restart"
    )
    # Every send is accounted for: returned ones finished, raised ones name their error
    assert not [m for m in [*log.returned, fresh] if m not in jobs]
    # A send is durable in PostgreSQL or it raises: none returned while it was down, and
    # the ones tried then raised the documented error
    assert not log.while_down, log.while_down
    assert log.raised and all(error.startswith("SendFailed: ") for _, error in log.raised)
    assert set(statuses) <= {"succeeded", "dead"}
    dead = {m: j for m, j in jobs.items() if j.status == "dead"}
    if max_attempts == SIZED_ATTEMPTS:
        assert not dead, [(j.message_id, j.error) for j in dead.values()]
    else:
        # Given up while the database was down: not acked and lost, but retried until
        # the failure could be recorded (the ones whose last attempt failed are dead, with why)
        assert "Could not record the failure" in worker_log
        # ... with a growing backoff, and never running the actor past its one attempt:
        # a later delivery is refused before it reaches the database, so it cannot fail
        # there (an OperationalError at attempt 2 or later would mean it ran again)
        assert not re.search(r"attempt (?:[2-9]|\d\d+) failed \(OperationalError", worker_log)
        unrecorded = re.findall(
            r"Could not record the failure of process_resource (\S+)", worker_log
        )
        # 20 s of outage at a wait of 0.25 s doubling to 4 s: a few tries a job, not 80
        assert max(collections.Counter(unrecorded).values()) <= 12, collections.Counter(unrecorded)
        # ... and each dead job's record says it ran once (the rest only came to be recorded)
        assert {job.attempts for job in dead.values()} == {1}
    assert set(dead_letters) == set(dead)
    assert all(dead_letters.values())
    # Jobs caught by the outage retried as transient failures (the worker's retry lines say so)
    assert retried or dead, "no job was retried or dead: the outage did not hit any job"
    assert "failed (OperationalError" in worker_log, worker_log[-3000:]
    # None succeeded without its effect, and each effect happened once
    done = {job.args["resource"]["id"] for job in jobs.values() if job.status == "succeeded"}
    assert len(done) == len(jobs) - len(dead)
    assert resources == done
    assert all(items[resource_id] == "processed" for resource_id in done)
    assert all(items[job.args["resource"]["id"]] == "failed" for job in dead.values())
    assert ingest["processed"] == len(done)
