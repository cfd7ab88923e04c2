"""A producer process SIGKILLed between its send's commit and its publish: nothing is lost.

The producer is a process of its own whose publisher never publishes (its
thread is held), so the kill lands after `send()` returned, with the job's
record and outbox row committed and nothing in RabbitMQ. A worker's outbox
sweeper publishes the row once its grace has passed; the job runs once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from db.models import Job
from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.support import REPO, wait_for

pytestmark = [pytest.mark.integration]

# The outbox grace (10 s) plus the sweeper's poll and a worker's pick-up, with room.
SWEPT_WITHIN_SECONDS = 30.0

PRODUCER = """
import sys, threading
import dataclasses, brokers
from middleware.outbox import find_outbox
from transport.rabbitmq import TaskyardRabbitmqBroker
from tests.reliability.kill_actors import record_effect
from settings import load_settings

settings = load_settings()
broker = brokers.build_broker(settings)
outbox = find_outbox(broker)
broker.declare_actor(record_effect)
# The publisher never gets the message: enqueue_async blocks for ever.
TaskyardRabbitmqBroker.enqueue_async = lambda *a, **k: threading.Event().wait()
message = record_effect.message_with_options(
    kwargs={"tenant_id": int(sys.argv[1]), "key": sys.argv[2], "signal_dir": ""}
).copy(queue_name=sys.argv[3])
print(message.message_id, flush=True)
outbox.send(broker, message, None)
"""


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queue, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def status(rig: Rig, message_id: str) -> str | None:
    """The status of a message's job record, None while it has none."""
    with Session(rig.engine) as session:
        job = session.get(Job, message_id)
        return job.status if job is not None else None


def test_a_producer_killed_after_its_commit_loses_nothing(rig: Rig) -> None:
    # Given a worker serving the tenant
    rig.start_worker("worker")
    key = f"{rig.prefix}killed-producer"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env |= {
        "DATABASE_URL": rig.database_url,
        "TASKYARD_QUEUE_PREFIX": rig.prefix,
        "TASKYARD_SECRET_KEYS": os.environ.get("TASKYARD_SECRET_KEYS", ""),
    }
    # When a producer sends a job and is killed before it publishes
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(rig.tenant_id), key, rig.queue],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert producer.stdout is not None
    message_id = producer.stdout.readline().strip()
    wait_for(lambda: status(rig, message_id) == "queued", what="the committed send")
    os.kill(producer.pid, signal.SIGKILL)
    producer.wait(10)
    producer.stdout.close()
    killed = time.monotonic()
    rig.sent.append(message_id)
    # Then the sweeper publishes it within its grace and poll, and it runs once
    wait_for(
        lambda: status(rig, message_id) == "succeeded",
        timeout=SWEPT_WITHIN_SECONDS,
        what="the job to be swept and run",
    )
    print(f"\nran {time.monotonic() - killed:.1f}s after the producer was killed")
    assert rig.effects() == {message_id: 1}
