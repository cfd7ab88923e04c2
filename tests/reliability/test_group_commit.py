"""The record's one statement: group-committed jobs are acked only once durable; copies run once.

- A job that never touches its session joins the group commit, and its
  message is acknowledged only after that commit: a worker SIGKILLed between
  the job's body and the commit leaves the message unacknowledged, RabbitMQ
  delivers it again, and its record is written once.
- Two copies of one DB-writing message running at the same moment on two
  threads: the second one's final statement waits for the first's row lock,
  finds the record final, and rolls its transaction back, so its rows never
  commit; it is counted as a duplicate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import DeadLetter
from settings import Settings
from tests.reliability.kill_actors import note_run
from tests.reliability.kill_support import KILL_MODULE, Rig, open_rig
from tests.support import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration]


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queue, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def _worker(rig: Rig, name: str, **env: str) -> WorkerProcess:
    worker = WorkerProcess(
        rig.tmp_path / f"{name}.log",
        worker_env(
            DATABASE_URL=rig.database_url,
            TASKYARD_QUEUE_PREFIX=rig.prefix,
            TASKYARD_TENANTS=str(rig.tenant_id),
            TASKYARD_METRICS_PORT="0",
            **env,
        ),
        threads=2,
        modules=[KILL_MODULE],
    )
    rig.workers.append(worker)
    worker.wait_ready()
    return worker


def test_a_worker_killed_before_its_group_commit_loses_nothing_and_records_once(
    rig: Rig,
) -> None:
    # Given a worker whose group commit waits a minute before it writes
    rig.producer.declare_actor(note_run)
    key = f"group-{uuid.uuid4().hex[:8]}"
    runs = rig.signal_dir / f"{key}.runs"
    held = _worker(rig, "held", TASKYARD_GROUP_COMMIT_LINGER_MS="60000")
    message = note_run.message_with_options(
        kwargs={"tenant_id": rig.tenant_id, "signal_dir": str(rig.signal_dir), "key": key}
    ).copy(queue_name=rig.queue)
    rig.outbox.send(rig.producer, message, None)

    # When it has run the job's body, and is killed before the commit
    wait_for(lambda: runs.exists() and runs.read_text().count("\n") == 1, what="the body")
    held.kill()
    # Then nothing was written for it: the record is still as the send left it
    status = rig.job(message.message_id).status
    assert status == "queued", status

    # And a new worker gets the message again, runs it, and records it once
    _worker(rig, "after")
    wait_for(lambda: rig.job(message.message_id).status == "succeeded", what="the record")
    job = rig.job(message.message_id)
    assert (job.attempts, job.deliveries) == (1, 1)
    assert runs.read_text().count("\n") == 2
    with Session(rig.engine) as session:
        letters = session.scalars(
            select(DeadLetter).where(DeadLetter.message_id == message.message_id)
        ).all()
    assert letters == []


def test_two_copies_running_at_once_write_their_rows_once(rig: Rig) -> None:
    # Given one DB-writing message whose body takes a second, published twice
    worker = _worker(rig, "copies")
    message = rig.send(f"copy-{uuid.uuid4().hex[:8]}", seconds=1.0)
    connection = pika.BlockingConnection(pika.URLParameters(rig.broker_url))
    body = json.dumps(message.asdict()).encode()
    connection.channel().basic_publish("", rig.queue, body)
    connection.close()

    # When both copies have run, on the worker's two threads at the same moment
    wait_for(lambda: "already finished" in worker.log(), what="the second copy to finish")

    # Then the job's effect row was written once, and its record says one attempt
    assert rig.effects() == {message.message_id: 1}
    job = rig.job(message.message_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
