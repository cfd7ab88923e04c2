"""Tenants through the real RabbitMQ and PostgreSQL: routing, pinning, pick-up, disabled tenants."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import pika
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors import ingest_resources
from db.models import DeadLetter, Job, Tenant
from services.tenants import served_tenant_ids, set_tenant_status
from settings import Settings
from tests.support import WorkerProcess, queue_state, wait_for
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration

FEED = [{"id": "x1", "name": "One", "creation_date": "2024-01-01"}]


def job_status(sessions: sessionmaker[Session], message_id: str) -> str | None:
    """The status of a message's job record, or None while it has none."""
    with sessions() as session:
        job = session.get(Job, message_id)
        return job.status if job is not None else None


def ready_count(settings: Settings, queue: str) -> int:
    """How many messages wait, ready, in a RabbitMQ queue."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


@pytest.fixture
def feed_url(httpserver: HTTPServer) -> str:
    httpserver.expect_request("/tenant-feed.json").respond_with_json(FEED)
    return str(httpserver.url_for("/tenant-feed.json"))


def test_message_goes_to_its_tenants_queue_without_a_lookup(settings: Settings) -> None:
    message = ingest_resources.message(tenant_id=424242, source_url="http://example.invalid/")
    assert message.queue_name == settings.tenant_queue(424242)


def test_new_tenant_is_served_without_a_restart(
    worker: WorkerProcess,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    feed_url: str,
) -> None:
    # Given a worker that was running before the tenant existed
    tenant_id = make_tenant("newcomer")

    # When a job is sent for the new tenant
    started = time.monotonic()
    message = ingest_resources.send(tenant_id=tenant_id, source_url=feed_url)

    # Then the worker picks up the tenant's queue by itself and runs it
    wait_for(lambda: job_status(sessions, message.message_id) == "succeeded", what="pick-up")
    assert time.monotonic() - started < 60


def test_disabled_tenants_message_is_dead_lettered_not_run(
    worker: WorkerProcess,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    feed_url: str,
) -> None:
    # Given a disabled tenant
    tenant_id = make_tenant("disabled")
    with sessions.begin() as session:
        set_tenant_status(session, tenant_id, "disabled")

    # When a job is sent for it
    message = ingest_resources.send(tenant_id=tenant_id, source_url=feed_url)

    # Then it is not run: it is dead with the reason, waiting to be requeued
    wait_for(lambda: job_status(sessions, message.message_id) == "dead", what="dead letter")
    with sessions() as session:
        job = session.get(Job, message.message_id)
        assert job is not None
        assert "disabled" in (job.error or "")
        assert job.result is None


def test_message_crafted_onto_another_tenants_queue_is_refused(
    worker: WorkerProcess,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
    feed_url: str,
) -> None:
    # Given tenants A and B, and a message naming B published on A's queue
    tenant_a, tenant_b = make_tenant("victim-a"), make_tenant("attacker-b")
    crafted = ingest_resources.message(tenant_id=tenant_b, source_url=feed_url)
    crafted = dataclasses.replace(crafted, queue_name=settings.tenant_queue(tenant_a))

    # When it is delivered
    publish_now(brokers.broker, crafted)

    # Then it is refused before it becomes a job: a dead letter of no tenant names it
    def refusal() -> DeadLetter | None:
        with sessions() as session:
            query = select(DeadLetter).where(DeadLetter.error.contains(crafted.message_id))
            return session.scalars(query).first()

    letter = wait_for(refusal, what="refusal")
    assert (letter.reason, letter.tenant_id) == ("tenant_mismatch", None)
    assert "arrived on queue" in (letter.error or "")
    assert job_status(sessions, crafted.message_id) is None


@pytest.fixture
def pinned(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """Settings with a queue prefix of their own, out of the shared worker's way."""
    pinned = dataclasses.replace(settings, queue_prefix=f"{settings.queue_prefix}pin.")
    yield pinned
    with Session(engine) as session:
        names = [pinned.tenant_queue(t) for t in session.scalars(select(Tenant.id))]
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    channel = connection.channel()
    for name in [pinned.system_queue, *names]:
        for queue in (name, f"{name}.DQ", f"{name}.XQ"):
            channel.queue_delete(queue)
    connection.close()


def test_pinned_worker_serves_only_its_tenants(
    start_worker: Callable[..., WorkerProcess],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
    pinned: Settings,
    feed_url: str,
) -> None:
    # Given a worker pinned to tenant A, with queues of its own prefix
    tenant_a, tenant_b = make_tenant("pinned-a"), make_tenant("pinned-b")
    pinned_worker = start_worker(
        TASKYARD_QUEUE_PREFIX=pinned.queue_prefix, TASKYARD_TENANTS=str(tenant_a)
    )

    # When a job is sent to each tenant's queue under that prefix
    sent = {}
    for tenant_id in (tenant_a, tenant_b):
        message = ingest_resources.message(tenant_id=tenant_id, source_url=feed_url)
        message = dataclasses.replace(message, queue_name=pinned.tenant_queue(tenant_id))
        sent[tenant_id] = publish_now(brokers.broker, message)

    # Then A's runs and B's stays in its queue, untouched
    a_id, b_id = sent[tenant_a].message_id, sent[tenant_b].message_id
    wait_for(lambda: job_status(sessions, a_id) == "succeeded", what="pinned tenant's job")
    time.sleep(1.0)
    assert job_status(sessions, b_id) in (None, "queued")
    assert ready_count(settings, pinned.tenant_queue(tenant_b)) == 1
    # Stopped now, so that it does not declare its queue again once the fixture deletes it.
    assert pinned_worker.stop() == 0


def test_a_new_tenants_first_job_starts_within_two_seconds_with_default_settings(
    start_worker: Callable[..., WorkerProcess],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    pinned: Settings,
    feed_url: str,
) -> None:
    # Given a worker with the default tenant refresh, running before the tenant exists
    default = Settings().tenant_refresh_seconds
    start_worker(
        TASKYARD_QUEUE_PREFIX=pinned.queue_prefix, TASKYARD_TENANT_REFRESH_SECONDS=str(default)
    )
    # (consuming every existing tenant's queue by now: the suite's tenants are hundreds, and
    # a booting worker starts them in the background a hundred at a time)
    with sessions() as session:
        existing = served_tenant_ids(session)

    def consumed() -> bool:
        if not existing:
            return True
        state = queue_state(pinned.broker_url, pinned.tenant_queue(max(existing)))
        return state is not None and state[1] > 0

    wait_for(consumed, timeout=60, what="every existing tenant's queue consumed")
    tenant_id = make_tenant("first-job")

    # When the new tenant's first job is sent
    message = ingest_resources.message(tenant_id=tenant_id, source_url=feed_url)
    publish_now(
        brokers.broker, dataclasses.replace(message, queue_name=pinned.tenant_queue(tenant_id))
    )

    # Then it starts within two seconds of its send (it waited 30 s and more before)
    wait_for(lambda: job_status(sessions, message.message_id) == "succeeded", what="first job")
    with sessions() as session:
        job = session.get(Job, message.message_id)
        assert job is not None and job.started_at is not None and job.enqueued_at is not None
        waited = (job.started_at - job.enqueued_at).total_seconds()
    assert waited <= 2.0, waited
