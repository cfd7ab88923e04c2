"""Quorum queues (`TASKYARD_QUEUE_TYPE=quorum`), and `taskyard migrate-queues` between kinds.

On the shared one-node RabbitMQ: a quorum queue on one node behaves as on a
cluster (the replication is what a cluster adds).  A queue's kind is read
from `rabbitmqctl list_queues`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from settings import Settings
from tests.reliability.kill_actors import record_effect
from tests.reliability.kill_support import Rig, open_rig
from tests.support import wait_for
from transport.queue_migration import HOLDING_SUFFIX, queue_family

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def kind_of(broker_url: str, name: str) -> str | None:
    """The kind of queue `name` is ("classic" or "quorum") as RabbitMQ lists it; None if absent.

    Read with `rabbitmqctl`, not through Taskyard's own arguments, so that the
    check does not depend on the code it checks.
    """
    del broker_url  # the shared node, which rabbitmqctl reaches on this host
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in listed.stdout.splitlines():
        queue, _, kind = line.partition("\t")
        if queue == name:
            return kind.strip()
    return None


def ready(broker_url: str, name: str) -> int:
    """How many messages wait in queue `name`."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        count: int = connection.channel().queue_declare(name, passive=True).method.message_count
        return count
    finally:
        connection.close()


def migrate_queues(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    """`taskyard migrate-queues ARGS` for the rig's database and queue prefix."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": rig.database_url,
        "BROKER_URL": rig.broker_url,
        "TASKYARD_QUEUE_PREFIX": rig.prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "migrate-queues", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


@pytest.fixture
def quorum_rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    with open_rig(reliability_database, settings, tmp_path, queue_type="quorum") as made:
        yield made


@pytest.fixture
def classic_rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made
        _delete(made.broker_url, [q + HOLDING_SUFFIX for q in queue_family(made.queue)])


def _delete(broker_url: str, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    for name in names:
        channel.queue_delete(name)
    connection.close()


def test_jobs_run_once_on_quorum_queues_with_their_delays(quorum_rig: Rig) -> None:
    rig = quorum_rig
    # Given a worker and a producer that declare quorum queues
    rig.start_worker("quorum")
    # When jobs are sent at once, and some with a delay (which waits in the .DQ queue)
    for n in range(20):
        rig.send(f"q{n}")
    for n in range(3):
        kwargs = {"tenant_id": rig.tenant_id, "key": f"later{n}", "signal_dir": str(rig.signal_dir)}
        message = record_effect.message_with_options(kwargs=kwargs).copy(queue_name=rig.queue)
        rig.outbox.send(rig.producer, message, 300)
        rig.sent.append(message.message_id)
    # Then every one runs exactly once
    wait_for(rig.all_succeeded, timeout=60, what="every job on the quorum queues")
    rig.assert_exactly_once()
    # And the tenant's queue, its delay queue and its dead-letter queue are quorum queues
    kinds = {name: kind_of(rig.broker_url, name) for name in queue_family(rig.queue)}
    assert kinds == dict.fromkeys(queue_family(rig.queue), "quorum")


def test_migrate_queues_moves_waiting_messages_to_quorum_queues(classic_rig: Rig) -> None:
    rig = classic_rig
    # Given 30 jobs waiting in classic queues, no worker running
    for n in range(30):
        rig.send(f"m{n}")
    wait_for(lambda: ready(rig.broker_url, rig.queue) == 30, what="30 messages queued")
    assert kind_of(rig.broker_url, rig.queue) == "classic"

    # When a consumer is still attached, the migration is refused with what to do
    connection = pika.BlockingConnection(pika.URLParameters(rig.broker_url))
    try:
        channel = connection.channel()
        channel.basic_consume(rig.queue, lambda *_: None)
        refused = migrate_queues(rig, "--to", "quorum")
    finally:
        connection.close()
    assert refused.returncode == 1, refused.stderr
    assert "stop every worker" in refused.stderr and "Traceback" not in refused.stderr
    # (nothing moved: the queue is still classic and keeps its messages)
    assert kind_of(rig.broker_url, rig.queue) == "classic"
    assert ready(rig.broker_url, rig.queue) == 30

    # And given a run interrupted part way: 10 of them already in the holding queue
    holding = rig.queue + HOLDING_SUFFIX
    connection = pika.BlockingConnection(pika.URLParameters(rig.broker_url))
    try:
        channel = connection.channel()
        channel.queue_declare(holding, durable=True, arguments={"x-queue-type": "quorum"})
        for _ in range(10):
            method, properties, body = channel.basic_get(rig.queue, auto_ack=False)
            channel.basic_publish("", holding, body, properties)
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()

    # When the queues are migrated (again) with no worker running
    done = migrate_queues(rig, "--to", "quorum", "--json")
    assert done.returncode == 0, done.stderr

    # Then the tenant's queues are quorum queues and keep every message, the 10 included
    outcome = {row["queue"]: row for row in _json(done.stdout)}
    assert outcome[rig.queue]["outcome"] == "migrated"
    assert outcome[rig.queue]["messages"] == 20
    assert all(kind_of(rig.broker_url, name) == "quorum" for name in queue_family(rig.queue))
    assert ready(rig.broker_url, rig.queue) == 30
    assert kind_of(rig.broker_url, holding) is None
    # And a second run finds nothing to do
    again = migrate_queues(rig, "--to", "quorum", "--json")
    assert {row["outcome"] for row in _json(again.stdout) if row["queue"] == rig.queue} == {
        "already"
    }
    # And a worker on quorum queues runs each job exactly once
    rig.queue_type = "quorum"
    rig.start_worker("after-migration")
    wait_for(rig.all_succeeded, timeout=60, what="every migrated job")
    rig.assert_exactly_once()


def _json(stdout: str) -> Any:
    return json.loads(stdout)
