"""Queue depth read from the real RabbitMQ: `transport.queue_depth` and `taskyard summary`.

The queues are named under a queue prefix of this module's own (below the
run's), so no worker of the run consumes them; they are deleted at the end.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest

from settings import Settings
from tests.integration.cli_harness import BROKER_DOWN_URL, taskyard
from tests.support import dead_letter_arguments, delete_queues, queue_state, wait_for
from transport import queue_depth
from transport.queue_depth import IN_FLIGHT, QueueDepth, Ready, queue_depths, read_ready

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


def test_read_ready_reads_more_queues_than_it_has_channels(own: Settings) -> None:
    """Existing and missing queues mixed, more of them than declares in flight: each read
    right (a missing one's 404 closes its channel, the queues after it still read), none
    created, a name asked twice read once."""
    names = [f"{own.queue_prefix}many.{n}" for n in range(2 * IN_FLIGHT + 7)]
    existing = {name: n % 4 for n, name in enumerate(names) if n % 3 == 0}
    connection = pika.BlockingConnection(pika.URLParameters(own.broker_url))
    try:
        channel = connection.channel()
        for name, count in existing.items():
            channel.queue_declare(name)
            for _ in range(count):
                channel.basic_publish("", name, b"m")
        wait_for(
            lambda: all(
                queue_state(own.broker_url, name) == (count, 0) for name, count in existing.items()
            ),
            timeout=10,
            what="the messages in their queues",
        )
        found = read_ready(own.broker_url, [*names, *names[:5]])
        assert found == {
            name: Ready(existing[name], 0) if name in existing else None for name in names
        }
        missing = [name for name in names if name not in existing]
        assert [queue_state(own.broker_url, name) for name in missing[:3]] == [None] * 3
    finally:
        connection.close()
        delete_queues(own.broker_url, existing)


def test_read_ready_raises_a_refusal_other_than_a_missing_queue(own: Settings) -> None:
    """A queue another connection holds exclusively answers 405: an error that says so,
    not a queue reported missing."""
    owner = pika.BlockingConnection(pika.URLParameters(own.broker_url))
    try:
        locked = f"{own.queue_prefix}locked"
        owner.channel().queue_declare(locked, exclusive=True)
        names = [f"{own.queue_prefix}absent.{n}" for n in range(3)]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            read_ready(own.broker_url, [*names, locked])
        assert refused.value.reply_code == 405
        assert locked in refused.value.reply_text
    finally:
        owner.close()


def test_read_ready_gives_up_on_a_server_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes the connection and says nothing: an AMQP error after the
    reading's silence bound, well before pika's own 15 s handshake timeout."""
    monkeypatch.setattr(queue_depth, "TIMEOUT_SECONDS", 0.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    taken: list[socket.socket] = []
    threading.Thread(target=lambda: taken.append(server.accept()[0]), daemon=True).start()
    port = server.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(pika.exceptions.AMQPError):
            read_ready(f"amqp://guest:guest@127.0.0.1:{port}/%2F", ["any"])
        assert time.monotonic() - started < 10
        assert taken, "the reading never connected to the silent server"
    finally:
        for conn in taken:
            conn.close()
        server.close()


def test_read_ready_gives_up_when_rabbitmq_stops_answering(
    own: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open, then silent (here: the declares are never sent): an AMQP error naming the
    silence, after the bound, not a reading that hangs."""
    monkeypatch.setattr(queue_depth, "TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(queue_depth._PassiveReads, "_ask", lambda self, channel: None)
    with pytest.raises(pika.exceptions.AMQPConnectionError, match=r"did not answer for 0\.5 s"):
        read_ready(own.broker_url, [f"{own.queue_prefix}never-asked"])
