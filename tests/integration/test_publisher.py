"""The process's one publisher: pipelined confirms, one connection, clear failures."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pika
import pika.channel
import pytest
from dramatiq import Message

from settings import Settings
from tests.support import dead_letter_arguments, delete_queues, message_count, queue_family
from transport.publisher import DECLARE_CHANNELS, Publisher, PublishFailed, wait_all
from transport.rabbitmq import TaskyardRabbitmqBroker, publish_now


def _publisher(settings: Settings, **options: float) -> Publisher:
    return Publisher(
        pika.URLParameters(settings.broker_url), queue_arguments=dead_letter_arguments, **options
    )


def test_a_batch_is_confirmed_on_one_connection_and_every_message_arrives(
    settings: Settings, queue: str
) -> None:
    publisher = _publisher(settings)
    try:
        futures = [
            publisher.publish(queue, queue, b"{}", message_id=str(i), priority=None)
            for i in range(2_000)
        ]
        wait_all(futures, timeout=30)
        assert all(f.done() and f.exception() is None for f in futures)
        assert publisher.connections_made == 1
    finally:
        publisher.close()
    assert message_count(settings.broker_url, queue) == 2_000
    # The delay and dead-letter queues were declared with it, as Dramatiq declares them.
    assert message_count(settings.broker_url, f"{queue}.DQ") == 0
    assert message_count(settings.broker_url, f"{queue}.XQ") == 0


def test_a_queue_deleted_behind_the_publishers_back_is_declared_again(
    settings: Settings, queue: str
) -> None:
    publisher = _publisher(settings)
    try:
        wait_all([publisher.publish(queue, queue, b"1", message_id="a", priority=None)], 10)
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        connection.channel().queue_delete(queue)
        connection.close()
        # Returned as unroutable (mandatory), declared again, published again.
        wait_all([publisher.publish(queue, queue, b"2", message_id="b", priority=None)], 10)
    finally:
        publisher.close()
    assert message_count(settings.broker_url, queue) == 1


def test_an_unreachable_broker_fails_the_send_quickly_with_a_clear_error() -> None:
    publisher = Publisher(
        pika.URLParameters("amqp://guest:guest@127.0.0.1:1/"),
        queue_arguments=dead_letter_arguments,
        reconnect_seconds=0.1,
    )
    started = time.monotonic()
    try:
        with pytest.raises(PublishFailed, match="cannot connect to RabbitMQ"):
            wait_all([publisher.publish("q", "q", b"{}", message_id="x", priority=None)], 20)
    finally:
        publisher.close(timeout=1)
    assert time.monotonic() - started < 10


def test_many_sending_threads_share_one_connection(settings: Settings, queue: str) -> None:
    broker = TaskyardRabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            for i in range(50):
                publish_now(broker, Message(queue, "noop", (), {}, {}, message_id=f"{n}-{i}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert broker.publisher.connections_made == 1
        # No connection per sending thread: Dramatiq's own were never opened.
        assert broker.connections == set()
    finally:
        broker.close()
    assert message_count(settings.broker_url, queue) == 400


def test_a_flush_drops_every_message_handed_over_before_it(settings: Settings, queue: str) -> None:
    broker = TaskyardRabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    try:
        # Given messages handed to the publisher and not yet confirmed (as an outbox
        # send leaves them: it returns once PostgreSQL has the job)
        sent = [
            broker.enqueue_async(Message(queue, "noop", (), {}, {}, message_id=str(n)))[1]
            for n in range(200)
        ]
        # When the queue is flushed at once
        broker.flush(queue)
        # Then every one of them was confirmed before the purge, and the purge dropped them all
        assert all(future.done() and future.exception() is None for future in sent)
    finally:
        broker.close()
    assert message_count(settings.broker_url, queue) == 0


def test_a_delayed_message_goes_to_the_delay_queue_with_its_eta(
    settings: Settings, queue: str
) -> None:
    broker = TaskyardRabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    try:
        sent = publish_now(broker, Message(queue, "noop", (), {}, {}), delay=60_000)
    finally:
        broker.close()
    assert sent.queue_name == f"{queue}.DQ"
    assert sent.options["eta"] > time.time() * 1000 + 50_000
    assert message_count(settings.broker_url, f"{queue}.DQ") == 1


def test_declare_creates_the_queue_again_even_after_this_connection_declared_it(
    settings: Settings, queue: str
) -> None:
    publisher = _publisher(settings)
    try:
        wait_all([publisher.declare(queue)], 10)
        assert message_count(settings.broker_url, queue) == 0
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        connection.channel().queue_delete(queue)
        connection.close()
        # A consumer told "404" declares again: that must reach RabbitMQ.
        wait_all([publisher.declare(queue)], 10)
        assert message_count(settings.broker_url, queue) == 0
        assert publisher.connections_made == 1
    finally:
        publisher.close()


def _get_body(settings: Settings, queue: str) -> bytes:
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        _method, _props, body = connection.channel().basic_get(queue, auto_ack=True)
        assert body is not None, f"nothing on {queue}"
        return bytes(body)
    finally:
        connection.close()


def test_a_body_encoded_already_is_published_as_is_unless_a_delay_changes_the_message(
    settings: Settings, queue: str
) -> None:
    # An outbox row's body is what goes out: the message is not encoded twice.
    message = Message(queue, "noop", (), {"n": 1}, {})
    # Laid out unlike Dramatiq's encoder would: only the given bytes can arrive like this.
    as_stored = json.dumps(message.asdict(), indent=1).encode()
    assert as_stored != message.encode()
    broker = TaskyardRabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    try:
        _, now = broker.enqueue_async(message, body=as_stored)
        delayed, later = broker.enqueue_async(message, delay=60_000, body=as_stored)
        wait_all([now, later], 10)
    finally:
        broker.close()
    assert _get_body(settings, queue) == as_stored
    # The delay queue's copy carries its eta: encoded anew, not the stored body.
    on_delay_queue = _get_body(settings, f"{queue}.DQ")
    assert on_delay_queue != as_stored
    assert Message.decode(on_delay_queue).options["eta"] == delayed.options["eta"]


def test_many_queues_are_declared_on_several_channels_at_once(
    settings: Settings, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pika sends one declaration at a time per channel: many queues (a worker of many
    # tenants) are spread over the declaration channels, so that many are in flight
    declared_on: list[tuple[int, str]] = []
    original = pika.channel.Channel.queue_declare

    def recording(channel: pika.channel.Channel, queue: str, *args: Any, **kwargs: Any) -> Any:
        declared_on.append((channel.channel_number, queue))
        return original(channel, queue, *args, **kwargs)

    monkeypatch.setattr(pika.channel.Channel, "queue_declare", recording)
    names = [f"{queue}.{n}" for n in range(2 * DECLARE_CHANNELS)]
    publisher = _publisher(settings)
    try:
        wait_all([publisher.declare(name) for name in names], 30)
        futures = [
            publisher.publish(name, name, b"{}", message_id=name, priority=None) for name in names
        ]
        wait_all(futures, 30)
        monkeypatch.undo()  # what follows reads the queues with declarations of its own
        # And a message published after its queue's declaration arrives
        assert [message_count(settings.broker_url, name) for name in names] == [1] * len(names)
    finally:
        publisher.close()
        delete_queues(settings.broker_url, queue_family(names))
    # Each queue with its delay and dead-letter queues, on one channel; every channel used
    channels = {number for number, _ in declared_on}
    assert len(channels) == DECLARE_CHANNELS
    for name in names:
        on = {number for number, declared in declared_on if declared.startswith(name + ".")}
        on |= {number for number, declared in declared_on if declared == name}
        assert len(on) == 1, name
    assert len(declared_on) == 3 * len(names)
