"""Queue depth read from the real RabbitMQ: `transport.queue_depth` and `taskyard summary`.

The queues are named under a queue prefix of this module's own (below the
run's), so no worker of the run consumes them; they are deleted at the end.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest

from settings import Settings
from tests.integration.cli_harness import BROKER_DOWN_URL, taskyard
from tests.support import dead_letter_arguments, delete_queues, queue_state, wait_for
from transport.queue_depth import QueueDepth, queue_depths

SENT = 3


@pytest.fixture
def own(settings: Settings) -> Settings:
    """The run's settings with a queue prefix of this test's own and no management API."""
    prefix = f"{settings.queue_prefix}qd{uuid.uuid4().hex[:6]}."
    return dataclasses.replace(settings, queue_prefix=prefix, rabbitmq_api_url="")


@pytest.fixture
def held(own: Settings, make_tenant: Callable[[str], int]) -> Iterator[int]:
    """A tenant whose queue holds SENT messages, one of them delivered and not acknowledged."""
    tenant_id = make_tenant("depth")
    name = own.tenant_queue(tenant_id)
    publisher = pika.BlockingConnection(pika.URLParameters(own.broker_url))
    consumer = pika.BlockingConnection(pika.URLParameters(own.broker_url))
    try:
        channel = publisher.channel()
        channel.queue_declare(name, durable=True, arguments=dead_letter_arguments(name))
        for n in range(SENT):
            channel.basic_publish("", name, f"m{n}".encode())
        held_channel = consumer.channel()
        held_channel.basic_qos(prefetch_count=1)
        delivered: list[bytes] = []
        held_channel.basic_consume(name, lambda ch, method, props, body: delivered.append(body))

        def one_delivered() -> bool:
            consumer.process_data_events(time_limit=0.1)
            return len(delivered) == 1

        wait_for(one_delivered, timeout=10, what="one message delivered")
        wait_for(lambda: queue_state(own.broker_url, name) == (SENT - 1, 1), timeout=10)
        yield tenant_id
    finally:
        consumer.close()
        publisher.close()
        delete_queues(own.broker_url, [name])


def test_queue_depths_reads_ready_and_consumers_and_creates_no_queue(
    own: Settings, held: int
) -> None:
    missing = held + 1_000_000
    assert queue_depths(own, [held, missing]) == {
        held: QueueDepth(ready=SENT - 1, unacked=None, consumers=1),
        missing: None,
    }
    assert queue_state(own.broker_url, own.tenant_queue(missing)) is None


def test_summary_shows_a_tenants_queue(own: Settings, held: int) -> None:
    result = taskyard(
        "summary", "--tenant", str(held), "--json", TASKYARD_QUEUE_PREFIX=own.queue_prefix
    )
    assert result.returncode == 0, result.stderr
    [queue] = json.loads(result.stdout)["queues"]
    assert queue == {
        "tenant_id": held,
        "queue": own.tenant_queue(held),
        "exists": True,
        "ready": SENT - 1,
        "unacked": None,
        "consumers": 1,
    }


def test_summary_without_rabbitmq_prints_the_rest_and_exits_3(
    own: Settings, make_tenant: Callable[[str], int]
) -> None:
    tenant_id = make_tenant("depth-down")
    result = taskyard("summary", "--tenant", str(tenant_id), BROKER_URL=BROKER_DOWN_URL)
    assert result.returncode == 3, result.stderr
    assert "dead letters waiting" in result.stdout
    assert "queues not read: cannot reach the broker" in result.stdout
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
