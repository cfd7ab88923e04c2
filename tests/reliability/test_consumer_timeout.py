"""Long delays against RabbitMQ's consumer_timeout: bare Dramatiq churns, Taskyard does not.

RabbitMQ 3.10 checks each channel's oldest unacknowledged delivery against
`consumer_timeout` only when the channel ticks (`channel_tick_interval`, 60 s
by default, settable only in advanced.config): a timeout fires between
`consumer_timeout` and `consumer_timeout + tick` after the delivery.  The
private node here lowers both, to 3 s and 1 s, so what takes 30 to 31 minutes
in production takes 3 to 4 seconds.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session
from werkzeug import Request, Response

import brokers
from actors import ingest_resources
from db.models import Job
from middleware.db_session import find_middleware
from middleware.outbox import find_outbox
from middleware.tenant_routing import TenantRouting
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.rabbit_node import RabbitNode
from tests.support import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration]

CONSUMER_TIMEOUT_MS = 3_000
CHANNEL_TICK_MS = 1_000
# Longer than the timeout and its tick, twice over: the timeout fires during it.
DELAY_MS = 8_000
# What the node logs when it closes a channel for an unacknowledged delivery.
TIMEOUT_LOG = "timed out waiting for delivery acknowledgement"
CONSUMER_ERRORS = ("Consumer encountered a connection error", "Restarting consumer")
FEED = [{"id": "r1", "name": "One", "creation_date": "2024-01-02"}]


@pytest.fixture(scope="module")
def node(start_rabbit_node: Callable[..., RabbitNode]) -> RabbitNode:
    """A private node with a 3 s consumer_timeout, checked every second."""
    return start_rabbit_node(
        config={"consumer_timeout": str(CONSUMER_TIMEOUT_MS)},
        advanced=f"[{{rabbit, [{{channel_tick_interval, {CHANNEL_TICK_MS}}}]}}].",
    )


class Deliveries(Middleware):
    """Counts how often RabbitMQ hands the worker a delayed message: (seconds, redelivered)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool]] = []
        self.started = time.monotonic()

    def before_delay_message(self, broker: Broker, message: Any) -> None:
        """One more delivery of a message that waits in the worker's memory."""
        redelivered = bool(getattr(message, "redelivered", False))
        self.seen.append((round(time.monotonic() - self.started, 1), redelivered))


def track_consumers(broker: RabbitmqBroker) -> list[Any]:
    """Every consumer the broker makes from now on (Dramatiq keeps no list of them)."""
    consumers: list[Any] = []
    consume = broker.consume

    def tracked(*args: Any, **kwargs: Any) -> Any:
        consumer = consume(*args, **kwargs)
        consumers.append(consumer)
        return consumer

    broker.consume = tracked  # type: ignore[method-assign]
    return consumers


def test_bare_dramatiq_redelivers_a_long_delay_when_the_consumer_timeout_fires(
    node: RabbitNode,
) -> None:
    # Given bare Dramatiq on the node: its worker holds a delayed message unacknowledged
    deliveries = Deliveries()
    broker = RabbitmqBroker(url=node.url)
    broker.add_middleware(deliveries)
    consumers = track_consumers(broker)
    runs: list[float] = []

    @dramatiq.actor(broker=broker, actor_name="count_runs", queue_name="bare")
    def count_runs() -> None:
        runs.append(time.monotonic())

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # When a message is sent with a delay longer than the timeout and its tick
        sent = time.monotonic()
        count_runs.send_with_options(delay=DELAY_MS)
        wait_for(lambda: runs, timeout=DELAY_MS / 1000 + 20, what="the delayed run")
    finally:
        worker.stop()
        broker.close()
        # Dramatiq 2.2 never closes the connection of a consumer whose channel the
        # timeout closed (it closes the channel first, which raises): close it here.
        for consumer in consumers:
            if consumer.connection.is_open:
                consumer.connection.close()

    # Then RabbitMQ closed the channel that held it and delivered it again
    assert TIMEOUT_LOG in node.log()
    assert len(deliveries.seen) >= 2, deliveries.seen
    assert any(redelivered for _, redelivered in deliveries.seen), deliveries.seen
    # (It still ran once and on time: the worker drops its held copies on a lost
    # channel.  The churn is the redelivery, again every timeout for a longer delay.)
    assert len(runs) == 1 and runs[0] - sent >= DELAY_MS / 1000


@pytest.fixture
def database(reliability_database: str) -> Iterator[Engine]:
    """An engine on the reliability database."""
    engine = create_engine(reliability_database)
    yield engine
    engine.dispose()


def new_tenant(engine: Engine, name: str) -> int:
    """Create and commit a tenant; returns its id."""
    with Session(engine) as session, session.begin():
        return create_tenant(session, f"{name}-{uuid.uuid4().hex[:8]}").id


def job(engine: Engine, message_id: str) -> Job:
    """The job record of one message."""
    with Session(engine) as session:
        record = session.get(Job, message_id)
    assert record is not None, message_id
    return record


def children(engine: Engine, tenants: list[int]) -> int:
    """Succeeded `process_resource` jobs of the tenants."""
    with Session(engine) as session:
        query = select(func.count()).where(
            Job.actor == "process_resource",
            Job.tenant_id.in_(tenants),
            Job.status == "succeeded",
        )
        return int(session.scalar(query) or 0)


def held_by_rabbitmq(node: RabbitNode) -> tuple[int, int]:
    """Messages the node holds in all its queues, and deliveries unacknowledged on all channels."""
    queues = node.ctl("list_queues", "--no-table-headers", "messages")
    channels = node.ctl("list_channels", "--no-table-headers", "messages_unacknowledged")
    return sum(map(int, queues.split())), sum(map(int, channels.split()))


def test_taskyard_long_delay_and_long_retry_wait_outside_rabbitmq_and_run_once(
    node: RabbitNode,
    database: Engine,
    reliability_database: str,
    settings: Settings,
    httpserver: HTTPServer,
    tmp_path: Path,
) -> None:
    # Given a Taskyard worker on the node, whose sends and retries park any delay over 1 s
    prefix = f"r{uuid.uuid4().hex[:8]}."
    delayed_tenant, retried_tenant = new_tenant(database, "delayed"), new_tenant(database, "retry")
    tenants = [delayed_tenant, retried_tenant]
    log_start = len(node.log())
    fetches: dict[str, list[float]] = {"delayed": [], "retried": []}

    def feed(request: Request) -> Response:
        name = request.path.strip("/").removesuffix(".json")
        fetches[name].append(time.monotonic())
        if name == "retried" and len(fetches[name]) == 1:
            # The second attempt waits DELAY_MS: a retry's backoff as long as the send's delay.
            return Response("busy", status=503, headers={"Retry-After": str(DELAY_MS // 1000)})
        return Response(json.dumps(FEED), content_type="application/json")

    httpserver.expect_request("/delayed.json").respond_with_handler(feed)
    httpserver.expect_request("/retried.json").respond_with_handler(feed)
    env = worker_env(
        BROKER_URL=node.url,
        DATABASE_URL=reliability_database,
        TASKYARD_QUEUE_PREFIX=prefix,
        TASKYARD_BROKER_DELAY_MAX_SECONDS="1",
        TASKYARD_TENANTS=",".join(map(str, tenants)),
    )
    worker = WorkerProcess(tmp_path / "worker.log", env)
    # And a producer on the node (this process's own broker is the shared server's)
    producer = brokers.build_broker(
        dataclasses.replace(
            settings,
            broker_url=node.url,
            database_url=reliability_database,
            queue_prefix=prefix,
            broker_delay_max_seconds=1.0,
        )
    )
    outbox, routing = find_outbox(producer), find_middleware(producer, TenantRouting)
    assert outbox is not None and routing is not None
    # Its job records name the actor's options; nothing is declared on the node by this.
    producer.declare_actor(ingest_resources)

    def message(tenant_id: int, path: str) -> Any:
        kwargs = {"tenant_id": tenant_id, "source_url": httpserver.url_for(path)}
        built = ingest_resources.message_with_options(kwargs=kwargs)
        return built.copy(queue_name=routing.queue_for(tenant_id))

    try:
        worker.wait_ready()
        # When one job is sent with a long delay, and another fails and retries after as long
        delayed = message(delayed_tenant, "/delayed.json")
        outbox.send(producer, delayed, DELAY_MS)
        sent = time.monotonic()
        retried = message(retried_tenant, "/retried.json")
        outbox.send(producer, retried, None)
        wait_for(lambda: job(database, retried.message_id).status == "retrying", what="retry")

        # Then while both wait, RabbitMQ holds nothing of them, acknowledged or not
        samples = []
        while time.monotonic() < min(sent, fetches["retried"][0]) + DELAY_MS / 1000 - 1.5:
            samples.append(held_by_rabbitmq(node))
        assert len(samples) >= 2 and set(samples) == {(0, 0)}, samples

        # And each runs once more, when due, and its child jobs after it
        for sent_message in (delayed, retried):
            wait_for(
                lambda m=sent_message: job(database, m.message_id).status == "succeeded",
                timeout=DELAY_MS / 1000 + 20,
                what=f"{sent_message.message_id} to succeed",
            )
        wait_for(lambda: children(database, tenants) == 2, what="the child jobs")
        # (Two sweeper polls: a second publish of either would show as a third fetch.)
        time.sleep(2.0)
        # With nothing held now, nothing can time out later either.
        assert held_by_rabbitmq(node) == (0, 0)
    finally:
        worker.stop()
        producer.close()
        # The producer's engines: its sessions' and its sends' records.
        for engine in (outbox.session_factory.kw["bind"], outbox.sends):
            engine.dispose()

    delayed_job, retried_job = job(database, delayed.message_id), job(database, retried.message_id)
    assert (delayed_job.status, delayed_job.attempts) == ("succeeded", 1)
    assert delayed_job.started_at is not None and delayed_job.enqueued_at is not None
    assert (delayed_job.started_at - delayed_job.enqueued_at).total_seconds() >= DELAY_MS / 1000
    assert (retried_job.status, retried_job.attempts) == ("succeeded", 2)
    assert len(fetches["delayed"]) == 1 and len(fetches["retried"]) == 2
    assert fetches["retried"][1] - fetches["retried"][0] >= DELAY_MS / 1000
    # And no channel was closed for an unacknowledged delivery: no churn
    assert TIMEOUT_LOG not in node.log()[log_start:]
    assert not [error for error in CONSUMER_ERRORS if error in worker.log()]
