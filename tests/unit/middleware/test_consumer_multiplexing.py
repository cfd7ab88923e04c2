"""The multiplexing consumer without a server: registration, settling, delayed messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.errors import BrokerConnectionError

import transport.consumer as consumer_module
from services.errors import BrokerRefused
from transport.consumer import (
    ConsumerMultiplexing,
    MultiplexingConsumer,
    _Delivery,
    _Link,
    _settle_calls,
)
from transport.fair_queue import FairWorkQueue
from transport.rabbitmq import TaskyardRabbitmqBroker

QUEUE = "tenant.1"


class FakeChannel:
    """Records what the consumer asks of one pika channel."""

    def __init__(self, number: int) -> None:
        self.channel_number = number
        self.calls: list[tuple[Any, ...]] = []

    def basic_qos(self, *, prefetch_count: int, global_qos: bool) -> None:
        self.calls.append(("qos", prefetch_count, global_qos))

    def basic_consume(self, queue: str, on_message: Callable[..., None]) -> str:
        self.calls.append(("consume", queue))
        consumed = sum(1 for call in self.calls if call == ("consume", queue))
        return f"ctag-{queue}" if consumed == 1 else f"ctag-{queue}-{consumed}"

    def basic_cancel(self, tag: str) -> None:
        self.calls.append(("cancel", tag))

    def add_on_cancel_callback(self, callback: Callable[[Any], None]) -> None:
        self.on_cancel = callback

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, "and every one before") if multiple else ("ack", tag))

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.calls.append(("nack", tag, requeue))


class FakeConnection:
    """A pika connection whose thread-safe callbacks run at once."""

    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []
        self.is_open = True

    def channel(self) -> FakeChannel:
        self.opened.append(FakeChannel(len(self.opened) + 1))
        return self.opened[-1]

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        callback()

    def process_data_events(self, time_limit: float = 0) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


@pytest.fixture
def broker() -> TaskyardRabbitmqBroker:
    """A broker that never connects (nothing here publishes), with one actor on QUEUE."""
    broker = TaskyardRabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F")
    dramatiq.actor(lambda: None, actor_name="noop", queue_name=QUEUE, broker=broker, priority=5)
    return broker


@pytest.fixture
def consumer(broker: TaskyardRabbitmqBroker) -> MultiplexingConsumer:
    return MultiplexingConsumer(
        broker=broker,
        work_queue=Worker(broker).work_queue,
        prefetch_bound=8,
        delay_prefetch=4000,
        worker_timeout=100,
    )


@pytest.fixture
def link() -> _Link:
    return _Link(FakeConnection(), queue_prefetch=8, delay_prefetch=4000)


def answered(failure: BaseException | None = None) -> Future[None]:
    """A declaration RabbitMQ has already answered: done, or refused with `failure`."""
    future: Future[None] = Future()
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)
    return future


def body(queue_name: str = QUEUE, **options: Any) -> bytes:
    message = Message(queue_name=queue_name, actor_name="noop", args=(), kwargs={}, options=options)
    return message.encode()


def deliver(
    consumer: MultiplexingConsumer,
    link: _Link,
    queue_name: str,
    data: bytes,
    tag: int,
    consumer_tag: str = "",
) -> None:
    channel = link.channels[queue_name.endswith(".DQ")]
    method = SimpleNamespace(
        delivery_tag=tag, redelivered=False, consumer_tag=consumer_tag or f"ctag-{queue_name}"
    )
    consumer._on_message(link, queue_name, channel, method, None, data)


def test_every_queue_of_a_worker_shares_one_consumer(
    broker: TaskyardRabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker booted with the middleware (its thread is not started here)
    monkeypatch.setattr(MultiplexingConsumer, "start", lambda self: None)
    worker = Worker(broker, worker_threads=2)
    ConsumerMultiplexing().before_worker_boot(broker, worker)

    # When queues are added, one twice
    for queue_name in (QUEUE, f"{QUEUE}.DQ", "tenant.2", QUEUE):
        worker._add_consumer(queue_name, delay=queue_name.endswith(".DQ"))

    # Then one consumer is registered under each name, once
    consumers = set(map(id, worker.consumers.values()))
    assert list(worker.consumers) == [QUEUE, f"{QUEUE}.DQ", "tenant.2"]
    assert len(consumers) == 1
    consumer = worker.consumers[QUEUE]
    assert isinstance(consumer, MultiplexingConsumer)
    assert consumer.queue_names == [QUEUE, f"{QUEUE}.DQ", "tenant.2"]
    # And the queues are consumed oldest first, the delay queues after every other
    assert consumer.take_pending(limit=2) == [QUEUE, "tenant.2"]
    assert consumer.take_pending() == [f"{QUEUE}.DQ"]
    assert consumer.take_pending() == []


def test_a_pinned_worker_registers_only_its_queues(
    broker: TaskyardRabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MultiplexingConsumer, "start", lambda self: None)
    worker = Worker(broker, queues={"tenant.2"}, worker_threads=2)
    ConsumerMultiplexing().before_worker_boot(broker, worker)

    for queue_name in (QUEUE, f"{QUEUE}.DQ", "tenant.2", "tenant.2.DQ"):
        worker._add_consumer(queue_name)

    assert list(worker.consumers) == ["tenant.2", "tenant.2.DQ"]


def test_the_stub_broker_keeps_dramatiqs_consumers() -> None:
    broker = StubBroker()
    worker = Worker(broker, worker_threads=1)
    ConsumerMultiplexing().before_worker_boot(broker, worker)
    assert "_add_consumer" not in vars(worker)


def test_queues_and_delay_queues_get_their_own_prefetch_per_queue(link: _Link) -> None:
    assert link.channels[False].calls == [("qos", 8, False)]
    assert link.channels[True].calls == [("qos", 4000, False)]
    link.consume(QUEUE, print)
    link.consume(f"{QUEUE}.DQ", print)
    assert link.channels[False].calls[-1] == ("consume", QUEUE)
    assert link.channels[True].calls[-1] == ("consume", f"{QUEUE}.DQ")


@pytest.mark.parametrize(("failed", "expected"), [(False, ("ack", 7)), (True, ("nack", 7, False))])
def test_a_delivery_is_settled_on_the_channel_that_delivered_it(
    consumer: MultiplexingConsumer, link: _Link, failed: bool, expected: tuple[Any, ...]
) -> None:
    # Given a message delivered on the queue's channel
    consumer.consumer = link
    deliver(consumer, link, QUEUE, body(), tag=7)
    item = consumer.work_queue.get_nowait()
    assert item.priority == 5

    # When a worker thread is done with it
    if failed:
        item.message.fail()
    consumer.post_process_message(item.message)

    # Then it is acked or nacked there, once
    assert link.channels[False].calls[-1] == expected
    consumer.post_process_message(item.message)
    assert link.channels[False].calls[-1] == expected
    assert len([c for c in link.channels[False].calls if c[0] != "qos"]) == 1


def test_a_delivery_from_a_closed_connection_is_left_to_rabbitmq(
    consumer: MultiplexingConsumer, link: _Link, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a delivery on a connection that was then replaced
    deliver(consumer, link, QUEUE, body(), tag=3)
    message = consumer.work_queue.get_nowait().message
    link.close()
    consumer.consumer = _Link(FakeConnection(), queue_prefetch=8, delay_prefetch=4000)

    # When it is acked, nothing is sent on either connection
    with caplog.at_level(logging.WARNING):
        consumer.post_process_message(message)
    assert ("ack", 3) not in link.channels[False].calls
    assert consumer.consumer.channels[False].calls == [("qos", 8, False)]
    assert "redelivers" in caplog.text


def test_a_delivery_finished_while_the_consumer_reconnects_is_left_to_rabbitmq(
    consumer: MultiplexingConsumer, link: _Link, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a delivery whose connection was lost, with no new one yet (RabbitMQ is down)
    consumer.consumer = link
    deliver(consumer, link, QUEUE, body(), tag=4)
    message = consumer.work_queue.get_nowait().message
    consumer._disconnect()
    assert consumer.consumer is None

    # When a worker thread finishes it, settling neither raises nor sends anything
    with caplog.at_level(logging.WARNING):
        consumer.post_process_message(message)
    assert ("ack", 4) not in link.channels[False].calls
    assert "redelivers" in caplog.text


def test_a_poison_body_is_reported_and_rejected(
    broker: TaskyardRabbitmqBroker, consumer: MultiplexingConsumer, link: _Link
) -> None:
    poisoned: list[tuple[str, str]] = []
    broker.on_poison = lambda queue, _body, reason, _error: poisoned.append((queue, reason))

    deliver(consumer, link, QUEUE, b"\x80not json", tag=9)
    deliver(consumer, link, QUEUE, json.dumps({"queue_name": QUEUE}).encode(), tag=10)

    assert poisoned == [(QUEUE, "undecodable"), (QUEUE, "undecodable")]
    assert link.channels[False].calls[-2:] == [("nack", 9, False), ("nack", 10, False)]
    assert consumer.work_queue.empty()


def test_a_delayed_message_waits_until_due_then_moves_to_its_queue(
    broker: TaskyardRabbitmqBroker,
    consumer: MultiplexingConsumer,
    link: _Link,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given two delayed messages, one due and one an hour away
    enqueued: list[Message[Any]] = []
    monkeypatch.setattr(broker, "enqueue", lambda message, **_: enqueued.append(message))
    consumer.consumer = link
    dq = f"{QUEUE}.DQ"
    deliver(consumer, link, dq, body(dq, eta=current_millis() + 3_600_000), tag=1)
    deliver(consumer, link, dq, body(dq, eta=current_millis() - 1), tag=2)
    assert consumer.work_queue.empty()

    # When the consumer looks at its delay queue
    consumer.handle_delayed_messages()

    # Then the due one goes to the tenant's queue without its eta, and leaves the delay queue
    assert [(m.queue_name, "eta" in m.options) for m in enqueued] == [(QUEUE, False)]
    assert link.channels[True].calls[-1] == ("ack", 2)
    assert consumer.delay_queue.qsize() == 1


def test_closing_is_idempotent_and_flushes_settled_deliveries(link: _Link) -> None:
    connection = link.connection
    link.close()
    link.close()
    assert not connection.is_open


def test_delivery_keeps_its_origin(link: _Link) -> None:
    message = Message(queue_name=QUEUE, actor_name="noop", args=(), kwargs={}, options={})
    delivery = _Delivery(link, 1, 5, True, message)
    assert (delivery.link, delivery.channel_number, delivery._tag) == (link, 1, 5)
    assert delivery.redelivered and delivery.queue_name == QUEUE


def test_a_queue_deleted_on_the_server_is_declared_and_consumed_again(
    broker: TaskyardRabbitmqBroker, consumer: MultiplexingConsumer
) -> None:
    # Given a consumed queue
    link = _Link(
        FakeConnection(), queue_prefetch=8, delay_prefetch=4000, on_cancel=consumer._resume_queue
    )
    link.consume(QUEUE, print)

    # When RabbitMQ cancels its consumer (the queue was deleted)
    cancel = SimpleNamespace(method=SimpleNamespace(consumer_tag=f"ctag-{QUEUE}"))
    link.channels[False].on_cancel(cancel)

    # Then it is declared again on the next pass, and consumed
    assert QUEUE in broker.queues_pending
    assert consumer.take_pending() == [QUEUE]


def test_a_deleted_tenants_queue_is_let_go_not_declared_again(
    broker: TaskyardRabbitmqBroker,
) -> None:
    # Given a consumer told that the tenant of QUEUE is gone
    consumer = MultiplexingConsumer(
        broker=broker,
        work_queue=Worker(broker).work_queue,
        prefetch_bound=8,
        delay_prefetch=4000,
        worker_timeout=100,
        keep_queue=lambda queue_name: queue_name != QUEUE,
    )
    consumer.add_queue(QUEUE)
    consumer.add_queue("tenant.2")
    consumer.take_pending()
    link = _Link(
        FakeConnection(), queue_prefetch=8, delay_prefetch=4000, on_cancel=consumer._resume_queue
    )
    link.consume(QUEUE, print)
    link.consume("tenant.2", print)

    # When RabbitMQ cancels the consumers of both queues
    for name in (QUEUE, "tenant.2"):
        cancel = SimpleNamespace(method=SimpleNamespace(consumer_tag=f"ctag-{name}"))
        link.channels[False].on_cancel(cancel)

    # Then only the other tenant's queue is declared and consumed again
    assert consumer.queue_names == ["tenant.2"]
    assert consumer.take_pending() == ["tenant.2"]


def test_requeueing_after_the_thread_stopped_is_left_to_rabbitmq(
    consumer: MultiplexingConsumer, link: _Link
) -> None:
    # Given a message still in the work queue when the consumer closed its connection
    deliver(consumer, link, QUEUE, body(), tag=4)
    consumer.consumer = None

    # When the worker, shutting down, asks to requeue it, nothing fails
    consumer.requeue_messages([consumer.work_queue.get_nowait().message])
    consumer.close()


class WakeCountingConnection(FakeConnection):
    """Counts the thread-safe callbacks: each one wakes the consumer's wait for deliveries."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        self.wakes += 1
        callback()


def test_a_queue_added_while_the_consumer_waits_wakes_it(
    consumer: MultiplexingConsumer,
) -> None:
    # Given a consumer connected and (as far as it knows) waiting for deliveries
    connection = WakeCountingConnection()
    consumer.consumer = _Link(connection, queue_prefetch=8, delay_prefetch=4000)

    # When a tenant's queue is registered after boot, and then again
    assert consumer.add_queue("tenant.7")
    assert not consumer.add_queue("tenant.7")

    # Then the connection's thread was woken once (not after its worker_timeout),
    # and the queue waits to be consumed on its next pass
    assert connection.wakes == 1
    assert consumer.take_pending() == ["tenant.7"]


def test_a_queue_added_before_the_first_connection_needs_no_wake(
    consumer: MultiplexingConsumer,
) -> None:
    assert consumer.consumer is None
    assert consumer.add_queue("tenant.8")
    assert consumer.take_pending() == ["tenant.8"]


def test_ready_means_every_registered_queue_is_consumed(
    broker: TaskyardRabbitmqBroker,
    consumer: MultiplexingConsumer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker, "declare_queue", lambda *args, **kwargs: None)
    monkeypatch.setattr(broker, "ensure_queues_async", lambda names: answered())
    # No queue at all: nothing to wait for
    assert consumer.wait_consuming(timeout=0)

    # Given a queue registered but not consumed yet: not caught up
    consumer.add_queue(QUEUE)
    assert not consumer.wait_consuming(timeout=0.01)

    # When a pass of the consumer's loop consumes it: caught up
    consumer.consumer = _Link(FakeConnection(), queue_prefetch=8, delay_prefetch=4000)
    consumer._serve_once()
    assert consumer.wait_consuming(timeout=0)

    # And a tenant's queue registered later waits for the next pass again
    consumer.add_queue("tenant.9")
    assert not consumer.wait_consuming(timeout=0.01)
    consumer._serve_once()
    assert consumer.wait_consuming(timeout=0)

    # And a delay queue still waiting for its pass does not hold the worker's readiness
    consumer.add_queue("tenant.9.DQ")
    consumer.add_queue("tenant.10")
    one_per_pass = MultiplexingConsumer.take_pending
    monkeypatch.setattr(consumer, "take_pending", lambda: one_per_pass(consumer, 1))
    consumer._serve_once()
    assert consumer._pending == ["tenant.9.DQ"]
    assert consumer.wait_consuming(timeout=0)

    # And a lost connection means nothing is consumed until the next one
    consumer._disconnect()
    assert not consumer.wait_consuming(timeout=0.01)


def test_a_boot_that_cannot_consume_in_time_says_so_and_goes_on(
    broker: TaskyardRabbitmqBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker whose consumer never gets to consume (its thread is not started)
    monkeypatch.setattr(MultiplexingConsumer, "start", lambda self: None)
    monkeypatch.setattr("transport.consumer.BOOT_WAIT_SECONDS", 0.01)
    worker = Worker(broker, worker_threads=1)
    middleware = ConsumerMultiplexing()
    middleware.before_worker_boot(broker, worker)
    worker._add_consumer(QUEUE)

    # When the boot ends, it is not held up for good: a warning says why
    with caplog.at_level(logging.WARNING):
        middleware.after_worker_boot(broker, worker)
    assert "Not consuming every queue" in caplog.text


def test_a_busy_queue_gets_the_bound_as_its_prefetch_and_gives_it_back(
    consumer: MultiplexingConsumer, link: _Link
) -> None:
    # Given a queue whose consumer (prefetch 1) holds a delivery at two looks in a row
    consumer.consumer = link
    link.consume(QUEUE, print, prefetch=1)
    deliver(consumer, link, QUEUE, body(), tag=1)
    assert consumer.rebalance(link) == 0

    # When the consumer looks again, a consumer with the bound (8) less what the queue
    # holds (1) replaces it
    assert consumer.rebalance(link) == 1
    calls = link.channels[False].calls
    assert calls[-3:] == [("qos", 7, False), ("consume", QUEUE), ("cancel", f"ctag-{QUEUE}")]
    assert link.prefetch_of(QUEUE) == 7
    # And what the replaced consumer holds still counts, and is still settled
    assert link.held(QUEUE) == (1, 0)

    # When another queue gets busy while the first holds 8, the first gets a prefetch of
    # one (its share, 4, is in hand already) and the other does not grow yet
    other = "tenant.2"
    link.consume(other, print, prefetch=1)
    for tag in range(2, 9):
        deliver(consumer, link, QUEUE, body(), tag=tag, consumer_tag=f"ctag-{QUEUE}-2")
    deliver(consumer, link, other, body(other), tag=10, consumer_tag=f"ctag-{other}")
    consumer.rebalance(link)
    consumer.rebalance(link)
    assert link.prefetch_of(QUEUE) == 1 and link.prefetch_of(other) == 1
    assert link.in_hand() == 9

    # Then, once everything is settled and the hold is over, both go back to one
    while not consumer.work_queue.empty():
        consumer.post_process_message(consumer.work_queue.get_nowait().message)
    assert link.in_hand() == 0
    for _ in range(20):
        consumer.rebalance(link)
    assert link.prefetch_of(QUEUE) == 1 and link.prefetch_of(other) == 1


def test_the_worker_takes_jobs_from_the_fair_queue(
    broker: TaskyardRabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MultiplexingConsumer, "start", lambda self: None)
    worker = Worker(broker, worker_threads=2)
    ConsumerMultiplexing(prefetch=5).before_worker_boot(broker, worker)
    worker._add_consumer(QUEUE)
    consumer = worker.consumers[QUEUE]
    assert isinstance(worker.work_queue, FairWorkQueue)
    assert consumer.work_queue is worker.work_queue
    assert isinstance(consumer, MultiplexingConsumer) and consumer.shares.bound == 5


def test_a_queue_rabbitmq_refuses_is_left_out_and_tried_again_later(
    broker: TaskyardRabbitmqBroker,
    consumer: MultiplexingConsumer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # tenant.2 exists on RabbitMQ with other arguments: its declaration is refused
    refused = BrokerRefused("tenant.2.DQ", 406, "PRECONDITION_FAILED", advice="delete it")
    declared: list[list[str]] = []

    def ensure_queues(names: list[str]) -> Future[None]:
        declared.append(list(names))
        if any(name.startswith("tenant.2") for name in names):
            return answered(refused)
        return answered()

    monkeypatch.setattr(broker, "declare_queue", lambda *args, **kwargs: None)
    monkeypatch.setattr(broker, "ensure_queues_async", ensure_queues)
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    for name in ("tenant.2", "tenant.2.DQ", "tenant.3", "tenant.3.DQ"):
        consumer.add_queue(name)
    link = _Link(FakeConnection(), queue_prefetch=8, delay_prefetch=4000)
    consumer.consumer = link

    # When the consumer's loop runs: the refusal is said once, the others are consumed
    with caplog.at_level(logging.ERROR, logger="MultiplexingConsumer"):
        consumer._serve_once()
        consumer._serve_once()
        consumer._serve_once()
    consumed = [
        call[1] for ch in link.connection.opened for call in ch.calls if call[0] == "consume"
    ]
    assert sorted(consumed) == ["tenant.3", "tenant.3.DQ"]
    assert [r.getMessage() for r in caplog.records] == [
        f"Not consuming tenant.2, tried again in 60 s: {refused}"
    ]
    # And the worker is ready: every queue it can consume is consumed
    assert consumer.wait_consuming(timeout=0)

    # Then, its time come and RabbitMQ fixed, it is consumed
    monkeypatch.setattr(
        broker, "ensure_queues_async", lambda names: declared.append(list(names)) or answered()
    )
    clock[0] += consumer_module.REFUSED_RETRY_SECONDS
    consumer._serve_once()
    consumed = [
        call[1] for ch in link.connection.opened for call in ch.calls if call[0] == "consume"
    ]
    assert sorted(set(consumed)) == ["tenant.2", "tenant.2.DQ", "tenant.3", "tenant.3.DQ"]


def test_queues_are_first_consumed_at_their_share_of_the_bound(
    broker: TaskyardRabbitmqBroker, consumer: MultiplexingConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "declare_queue", lambda *args, **kwargs: None)
    monkeypatch.setattr(broker, "ensure_queues_async", lambda names: answered())
    # Given a worker (bound 8) serving two queues, each with its delay queue
    for name in (QUEUE, f"{QUEUE}.DQ", "tenant.2", "tenant.2.DQ"):
        consumer.add_queue(name)
    link = _Link(FakeConnection(), queue_prefetch=1, delay_prefetch=4000)
    consumer.consumer = link

    # When they are consumed: each queue starts with half the bound, not one message
    consumer._serve_once()
    assert link.prefetch_of(QUEUE) == 4 and link.prefetch_of("tenant.2") == 4
    assert ("qos", 4, False) in link.channels[False].calls

    # And with more queues than the bound, each starts with one
    for n in range(3, 12):
        consumer.add_queue(f"tenant.{n}")
    consumer._serve_once()
    assert link.prefetch_of("tenant.11") == 1


def test_a_run_of_acks_is_sent_as_one_and_never_covers_a_nack_or_an_unsettled_delivery() -> None:
    queues, delays = FakeChannel(1), FakeChannel(2)

    # Every delivery up to 3 acked, none left: one ack with `multiple`
    assert _settle_calls([(queues, t, True) for t in (2, 1, 3)], {}) == {queues: [("ack", 3, True)]}
    # Delivery 2 still in a worker's hands: 1 and 3 are acked each on its own
    assert _settle_calls([(queues, 1, True), (queues, 3, True)], {1: 2}) == {
        queues: [("ack", 1, False), ("ack", 3, False)]
    }
    # A nack in the batch: the run stops below it, the nack and what follows go one by one
    settles = [(queues, 1, True), (queues, 2, True), (queues, 3, False), (queues, 4, True)]
    assert _settle_calls(settles, {}) == {
        queues: [("ack", 2, True), ("nack", 3, False), ("ack", 4, False)]
    }
    # Each channel has its own tags and its own unsettled deliveries
    settles = [(queues, 1, True), (queues, 2, True), (delays, 1, True), (delays, 3, True)]
    assert _settle_calls(settles, {2: 2}) == {
        queues: [("ack", 2, True)],
        delays: [("ack", 1, False), ("ack", 3, False)],
    }


class WaitRecordingConnection(WakeCountingConnection):
    """Records how long each of the consumer's waits for deliveries may last."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def process_data_events(self, time_limit: float = 0) -> None:
        self.waits.append(time_limit)


def test_queues_being_declared_do_not_hold_up_the_queues_already_consumed(
    broker: TaskyardRabbitmqBroker, consumer: MultiplexingConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given RabbitMQ slow to answer declarations, and a worker of three tenants' queues
    passes: list[tuple[list[str], Future[None]]] = []

    def declare_later(names: list[str]) -> Future[None]:
        passes.append((list(names), Future()))
        return passes[-1][1]

    monkeypatch.setattr(broker, "declare_queue", lambda *args, **kwargs: None)
    monkeypatch.setattr(broker, "ensure_queues_async", declare_later)
    one_per_pass = MultiplexingConsumer.take_pending
    monkeypatch.setattr(consumer, "take_pending", lambda: one_per_pass(consumer, 1))
    for name in (QUEUE, "tenant.2", "tenant.3"):
        consumer.add_queue(name)
    connection = WaitRecordingConnection()
    link = _Link(connection, queue_prefetch=8, delay_prefetch=4000)
    consumer.consumer = link

    # When a pass's declarations are handed over: the loop goes on to serve its
    # connection (not spinning: it waits for a delivery or for RabbitMQ's answer),
    # with one pass declared at a time and nothing consumed yet
    consumer._serve_once()
    consumer._serve_once()
    assert [names for names, _ in passes] == [[QUEUE]]
    assert connection.waits == [0.1, 0.1]
    assert link.prefetch_of(QUEUE) == 0
    assert not consumer.wait_consuming(timeout=0)

    # When RabbitMQ answers: the thread is woken, the pass consumed, the next handed over
    passes[0][1].set_result(None)
    assert connection.wakes == 1
    consumer._serve_once()
    assert link.prefetch_of(QUEUE) > 0
    assert [names for names, _ in passes] == [[QUEUE], ["tenant.2"]]

    # And the worker is ready only once every queue is consumed
    passes[1][1].set_result(None)
    consumer._serve_once()
    assert not consumer.wait_consuming(timeout=0)
    passes[2][1].set_result(None)
    consumer._serve_once()
    assert consumer.wait_consuming(timeout=0)
    assert all(link.prefetch_of(name) > 0 for name in (QUEUE, "tenant.2", "tenant.3"))


def test_declarations_never_answered_make_the_consumer_reconnect_and_keep_the_queues(
    broker: TaskyardRabbitmqBroker, consumer: MultiplexingConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given RabbitMQ that never answers a declaration
    never: Future[None] = Future()
    monkeypatch.setattr(broker, "declare_queue", lambda *args, **kwargs: None)
    monkeypatch.setattr(broker, "ensure_queues_async", lambda names: never)
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    consumer.add_queue(QUEUE)
    consumer.consumer = _Link(WaitRecordingConnection(), queue_prefetch=8, delay_prefetch=4000)
    consumer._serve_once()

    # When the publish timeout passes: the loop raises what the run loop reconnects on,
    # the declarations are given up, and the queue is still to be consumed
    clock[0] += broker.publish_timeout + 1
    with pytest.raises(BrokerConnectionError, match="did not declare 1 queue"):
        consumer._serve_once()
    assert never.cancelled()
    assert consumer.take_pending() == [QUEUE]
