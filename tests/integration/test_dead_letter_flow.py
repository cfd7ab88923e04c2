"""Dead letters on the real path: poison bodies straight to a tenant queue, and a requeue."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pika
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors import ingest_resources
from db.models import DeadLetter, Ingest, Job
from services.dead_letters import take_for_requeue
from settings import Settings
from tests.support import WorkerProcess, wait_for
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration

FEED = [{"id": "r1", "name": "First", "creation_date": "2024-01-02"}]
Publish = Callable[[str, bytes], None]


@pytest.fixture
def publish(settings: Settings) -> Iterator[Publish]:
    """Publish a raw body straight to a queue, as a foreign or broken producer would."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    channel = connection.channel()

    def send(queue: str, body: bytes) -> None:
        # Declared as Dramatiq declares it, so the worker's own declaration matches.
        brokers.broker.declare_queue(queue, ensure=True)
        channel.basic_publish(exchange="", routing_key=queue, body=body)

    yield send
    connection.close()


def message(queue: str, actor: str = "ingest_resources", **kwargs: Any) -> dramatiq.Message[Any]:
    """A well-formed Dramatiq message."""
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=(), kwargs=kwargs, options={})


def dead_letter_on(sessions: sessionmaker[Session], queue: str) -> DeadLetter | None:
    """The one dead letter kept for a queue, once there is one."""
    with sessions() as session:
        return session.scalar(select(DeadLetter).where(DeadLetter.queue == queue))


def ingest_of(sessions: sessionmaker[Session], message_id: str, status: str) -> Ingest | None:
    """The ingest of one `ingest_resources` message, once it has `status`."""
    with sessions() as session:
        return session.scalar(
            select(Ingest).where(Ingest.message_id == message_id, Ingest.status == status)
        )


def job_of(sessions: sessionmaker[Session], message_id: str, status: str) -> Job | None:
    """The job record of a message once it has reached `status`."""
    with sessions() as session:
        job = session.get(Job, message_id)
        return job if job is not None and job.status == status else None


def poison_body(case: str, queue: str, tenant_id: int) -> bytes:
    """One kind of poison body for a tenant's queue."""
    if case == "not_json":
        return b"not json"
    if case == "pickle":
        return pickle.dumps(message(queue, tenant_id=tenant_id, source_url="http://x/").asdict())
    kwargs: dict[str, Any] = {
        "nul": {"source_url": "a\x00b"},
        "too_large": {"source_url": "x" * 2_000_000},
        "schema": {"source_url": 123},
    }.get(case, {})
    target = queue + "0" if case == "wrong_queue" else queue
    actor = "no_such_actor" if case == "unknown_actor" else "ingest_resources"
    built = message(target, actor, tenant_id=tenant_id, **kwargs)
    if case == "nul":  # nor can its id be stored: it is kept under a new one
        built = built.copy(message_id="nul\x00id")
    return built.encode()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("not_json", "undecodable"),
        ("pickle", "undecodable"),
        ("nul", "undecodable"),
        ("too_large", "too_large"),
        ("wrong_queue", "queue_mismatch"),
        ("unknown_actor", "unknown_actor"),
        ("schema", "invalid_arguments"),
    ],
)
def test_poison_message_is_kept_and_the_worker_goes_on(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
    publish: Publish,
    case: str,
    reason: str,
) -> None:
    # Given a tenant whose queue receives a poison body from outside Taskyard
    tenant_id = make_tenant(f"poison-{case}")
    queue = settings.tenant_queue(tenant_id)
    publish(queue, poison_body(case, queue, tenant_id))

    # When the worker serves the queue
    row = wait_for(lambda: dead_letter_on(sessions, queue), what=f"dead letter for {case}")

    # Then it is kept with its reason, undecodable ones with their raw body
    assert row.reason == reason
    if reason in ("undecodable", "too_large", "queue_mismatch"):
        assert row.message is None and row.raw_body
        assert len(row.raw_body) <= 70_000 and "\x00" not in row.raw_body
    else:
        assert row.message is not None and row.message["queue_name"] == queue
    if case == "pickle":
        assert "ingest_resources" in (row.raw_body or "")
    if case == "too_large":
        assert "over the limit" in (row.error or "")
    if case == "schema":
        assert "source_url" in (row.error or "") and "InvalidArguments" in (row.traceback or "")
        assert wait_for(lambda: job_of(sessions, row.message_id, "dead"), what="dead job")

    # And the worker goes on: an ordinary ingest on the same queue succeeds
    httpserver.expect_request(f"/feed-{case}.json").respond_with_json(FEED)
    sent = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for(f"/feed-{case}.json")
    )
    wait_for(lambda: ingest_of(sessions, sent.message_id, "completed"), what="ingest after poison")
    assert worker.proc.poll() is None


def test_dead_job_is_requeued_after_its_cause_is_fixed(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given an ingest that died because its feed was missing
    tenant_id = make_tenant("requeue")
    httpserver.expect_oneshot_request("/later.json").respond_with_data("", status=404)
    sent = ingest_resources.send(tenant_id=tenant_id, source_url=httpserver.url_for("/later.json"))
    wait_for(lambda: job_of(sessions, sent.message_id, "dead"), what="dead job")
    with sessions() as session:
        row = session.get(DeadLetter, sent.message_id)
        assert row is not None and row.reason == "fetch_refused" and "404" in (row.error or "")

    # When the feed is served and the dead letter is requeued (published before the commit)
    httpserver.expect_request("/later.json").respond_with_json(FEED)
    with sessions.begin() as session:
        [requeued] = take_for_requeue(session, message_id=sent.message_id)
        publish_now(brokers.broker, dramatiq.Message(**requeued))

    # Then the same message runs again from its first attempt and succeeds
    job = wait_for(lambda: job_of(sessions, sent.message_id, "succeeded"), what="requeued job")
    assert job.attempts == 1
    assert wait_for(lambda: ingest_of(sessions, sent.message_id, "completed"), what="ingest")
    with sessions() as session:
        row = session.get(DeadLetter, sent.message_id)
        assert row is not None and row.requeued_at is not None
