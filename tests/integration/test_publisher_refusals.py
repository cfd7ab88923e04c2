"""RabbitMQ refusing a queue fails its sends at once with the reason; the publisher goes on.

Every queue here has a name of this run, and the tests delete what they create.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pika
import pika.exceptions
import pytest
from dramatiq import Message

from services.errors import BrokerRefused
from settings import Settings
from tests.support import delete_queues, queue_family
from transport.publisher import DECLARE_CHANNELS, Publisher, PublishFailed, wait_all
from transport.rabbitmq import TaskyardRabbitmqBroker, publish_now

pytestmark = pytest.mark.integration

# Well under what a reconnecting publisher took (its confirm timeout).
AT_ONCE_SECONDS = 1.0


@pytest.fixture
def new_queue(settings: Settings) -> Iterator[Callable[[str], str]]:
    """Names queues of this run; each is deleted (with its .DQ and .XQ) afterwards."""
    names: list[str] = []

    def name(what: str) -> str:
        names.append(f"{settings.queue_prefix}refusals.{what}.{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield name
    delete_queues(settings.broker_url, queue_family(names))


def declare_as_dramatiq(settings: Settings, name: str, max_priority: int) -> None:
    """Declare `name` as Dramatiq's broker does with `max_priority` (another deployment's)."""
    arguments = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{name}.XQ",
        "x-max-priority": max_priority,
    }
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


def count(settings: Settings, name: str) -> int:
    """Messages ready in a queue."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    finally:
        connection.close()


def message(queue: str, n: int = 0) -> Message[object]:
    return Message(queue, "noop", (), {"n": n}, {})


def test_a_queue_left_with_other_arguments_fails_a_send_at_once_with_rabbitmqs_reason(
    settings: Settings, new_queue: Callable[[str], str]
) -> None:
    # Given a queue a Dramatiq deployment declared with x-max-priority=10
    taken, other = new_queue("dramatiq"), new_queue("other")
    declare_as_dramatiq(settings, taken, max_priority=10)
    broker = TaskyardRabbitmqBroker(url=settings.broker_url)
    try:
        # When Taskyard sends to it
        started = time.monotonic()
        with pytest.raises(BrokerRefused) as refused:
            publish_now(broker, message(taken))
        elapsed = time.monotonic() - started
        # Then the send fails at once, with RabbitMQ's reply and what to do
        assert elapsed < AT_ONCE_SECONDS
        assert refused.value.reply_code == 406
        assert refused.value.queue_name == taken
        assert "PRECONDITION_FAILED - inequivalent arg" in str(refused.value)
        assert "delete it" in str(refused.value)
        # And the publisher goes on publishing to other queues
        broker.enqueue_many([(message(other, n), None) for n in range(100)])
        # On its one connection: the refused declaration's channel replaced, the publishing
        # channel kept, no reconnecting (give a storm time to show)
        time.sleep(AT_ONCE_SECONDS)
        assert broker.publisher.connections_made == 1
        assert broker.publisher.channels_opened == 1
        assert broker.publisher.declare_channels_opened == DECLARE_CHANNELS + 1
        assert broker.publisher.refusals == 1
    finally:
        broker.close()
    assert count(settings, other) == 100
    assert count(settings, taken) == 0


def test_a_burst_to_a_refused_queue_and_others_fails_only_the_refused_each_on_its_own(
    settings: Settings, new_queue: Callable[[str], str]
) -> None:
    # Given a refused queue, and two queues Taskyard may use
    taken, first, second = new_queue("taken"), new_queue("first"), new_queue("second")
    declare_as_dramatiq(settings, taken, max_priority=5)
    publisher = Publisher(
        pika.URLParameters(settings.broker_url),
        queue_arguments=lambda name: {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.XQ",
        },
    )
    try:
        # When messages to all three are in flight at once, interleaved
        futures: dict[str, list[Future[None]]] = {taken: [], first: [], second: []}
        for n in range(300):
            for queue in futures:
                futures[queue].append(
                    publisher.publish(queue, queue, b"{}", message_id=f"{queue}-{n}", priority=None)
                )
        wait_all(futures[first] + futures[second], timeout=30)
        for future in futures[taken]:
            future.exception(timeout=AT_ONCE_SECONDS)
        # Then every refused one failed with an error of its own (re-raising one grows no other)
        errors = [future.exception() for future in futures[taken]]
        assert all(isinstance(error, BrokerRefused) for error in errors)
        assert len({id(error) for error in errors}) == len(errors)
        # And RabbitMQ was asked once: one refusal, one new declaration channel, the
        # publishing channel kept, one connection
        assert (
            publisher.refusals,
            publisher.declare_channels_opened,
            publisher.channels_opened,
            publisher.connections_made,
        ) == (1, DECLARE_CHANNELS + 1, 1, 1)
    finally:
        publisher.close()
    # And every other message arrived, once
    assert count(settings, first) == count(settings, second) == 300


def test_a_reserved_name_is_refused_with_403_and_nothing_is_retried(
    settings: Settings,
) -> None:
    publisher = Publisher(pika.URLParameters(settings.broker_url), queue_arguments=lambda _: {})
    # RabbitMQ keeps amq.* names to itself: nothing is created.
    name = f"amq.{settings.queue_prefix}{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match="403 ACCESS_REFUSED") as refused:
            wait_all([publisher.declare(name)], timeout=30)
        assert time.monotonic() - started < AT_ONCE_SECONDS
        assert refused.value.reply_code == 403
        assert publisher.connections_made == 1
    finally:
        publisher.close()


def test_a_queue_refused_while_another_connection_holds_it_is_published_once_it_is_free(
    settings: Settings, new_queue: Callable[[str], str]
) -> None:
    # Given a queue another connection holds exclusively
    queue = new_queue("exclusive")
    holder = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    holder.channel().queue_declare(queue, exclusive=True)
    publisher = Publisher(
        pika.URLParameters(settings.broker_url),
        queue_arguments=lambda _: {},
        refused_hold_seconds=0.2,
    )
    try:
        # When a message goes to it: refused (405), and again while the refusal holds
        with pytest.raises(BrokerRefused, match="405 RESOURCE_LOCKED"):
            wait_all([publisher.publish(queue, queue, b"1", message_id="a", priority=None)], 30)
        assert publisher.refusal_of(queue) is not None
        with pytest.raises(BrokerRefused, match="405 RESOURCE_LOCKED"):
            wait_all([publisher.publish(queue, queue, b"2", message_id="b", priority=None)], 30)
        assert publisher.refusals == 1
        # Then, once the holder is gone and the refusal's hold is over, RabbitMQ is asked again
        holder.close()
        time.sleep(0.3)
        wait_all([publisher.publish(queue, queue, b"3", message_id="c", priority=None)], 30)
        assert publisher.refusal_of(queue) is None
        assert publisher.connections_made == 1
    finally:
        publisher.close()
        if holder.is_open:
            holder.close()
    assert count(settings, queue) == 1


def test_a_queue_name_amqp_cannot_carry_fails_alone_at_once(
    settings: Settings, new_queue: Callable[[str], str]
) -> None:
    publisher = Publisher(pika.URLParameters(settings.broker_url), queue_arguments=lambda _: {})
    queue = new_queue("fine")
    try:
        started = time.monotonic()
        with pytest.raises(PublishFailed, match="longer than AMQP's 252 bytes"):
            wait_all(
                [publisher.publish("x" * 253, "x" * 253, b"1", message_id="a", priority=None)], 30
            )
        assert time.monotonic() - started < AT_ONCE_SECONDS
        wait_all([publisher.publish(queue, queue, b"2", message_id="b", priority=None)], 30)
        assert publisher.connections_made == 1
    finally:
        publisher.close()
    assert count(settings, queue) == 1


@pytest.fixture
def writeless_url(settings: Settings) -> Iterator[str]:
    """A RabbitMQ user of this run that may declare queues but not publish to them."""
    user, password = f"{settings.queue_prefix}writeless{uuid.uuid4().hex[:8]}", "writeless"

    def rabbitmqctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", "^no-such-exchange$", ".*")
        parsed = pika.URLParameters(settings.broker_url)
        yield f"amqp://{user}:{password}@{parsed.host}:{parsed.port}/%2F"
    finally:
        rabbitmqctl("delete_user", user)


def test_a_refused_publish_fails_what_was_unconfirmed_and_leaves_declarations_alone(
    settings: Settings, new_queue: Callable[[str], str], writeless_url: str
) -> None:
    publisher = Publisher(pika.URLParameters(writeless_url), queue_arguments=lambda _: {})
    queue, other = new_queue("writeless"), new_queue("declared")
    try:
        # When a message goes to a queue the user may declare but not write to:
        # its queue is declared, its publish refused (403) at once
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match="403 ACCESS_REFUSED"):
            wait_all([publisher.publish(queue, queue, b"1", message_id="a", priority=None)], 30)
        assert time.monotonic() - started < AT_ONCE_SECONDS
        # Then the publishing channel is replaced, and declarations go on on their own
        # channels, none of which the refusal closed
        wait_all([publisher.declare(other)], 30)
        assert (
            publisher.refusals,
            publisher.channels_opened,
            publisher.declare_channels_opened,
            publisher.connections_made,
        ) == (1, 2, DECLARE_CHANNELS, 1)
    finally:
        publisher.close()
    assert count(settings, queue) == count(settings, other) == 0
