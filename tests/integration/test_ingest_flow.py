"""The whole path: producer → RabbitMQ → `dramatiq actors` → services → PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors import ingest_resources
from db.models import Ingest, IngestItem, Job, Resource
from tests.support import WorkerProcess, wait_for
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration

GOOD = [
    {"id": "r1", "name": " First ", "creation_date": "2024-01-02T03:04:05+02:00", "tags": ["a"]},
    {"id": 2, "name": "Second", "creation_date": "2024-02-03"},
    {"id": "r3", "name": "Third", "creation_date": "2024-03-04T00:00:00Z", "description": "x"},
]
BAD = [
    {"id": "r4", "name": "No date"},
    {"id": "r5", "name": "Bad tags", "creation_date": "2024-01-01", "tags": "nope"},
    "not an object",
    {"id": "r1", "name": "Duplicate", "creation_date": "2024-01-01"},
]


def ingest_of(sessions: sessionmaker[Session], message_id: str) -> Ingest | None:
    """The ingest created by one `ingest_resources` message, once it has finished."""
    with sessions() as session:
        ingest = session.scalar(select(Ingest).where(Ingest.message_id == message_id))
        if ingest is not None and ingest.status != "running":
            return ingest
        return None


def job_of(sessions: sessionmaker[Session], message_id: str, status: str) -> Job | None:
    """The job record of a message once it has reached `status`."""
    with sessions() as session:
        job = session.get(Job, message_id)
        return job if job is not None and job.status == status else None


def stamps(session: Session, tenant_id: int) -> dict[str, object]:
    """Each stored resource of a tenant with the time it last changed."""
    rows = session.scalars(select(Resource).where(Resource.tenant_id == tenant_id))
    return {r.resource_id: r.updated_at for r in rows}


def test_feed_is_ingested_processed_and_recorded(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a tenant whose feed has three valid items and four bad ones
    tenant_id = make_tenant("ingest")
    httpserver.expect_request("/feed.json").respond_with_json(GOOD + BAD)

    # When a producer sends the ingest
    message = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for("/feed.json")
    )

    # Then the worker fetches, rejects the bad items and processes the good ones
    ingest = wait_for(lambda: ingest_of(sessions, message.message_id), what="ingest to finish")
    assert (ingest.status, ingest.fetched, ingest.valid, ingest.rejected) == ("completed", 7, 3, 4)
    assert (ingest.processed, ingest.failed) == (3, 0)
    with sessions() as session:
        stored = {
            r.resource_id: r
            for r in session.scalars(select(Resource).where(Resource.tenant_id == tenant_id))
        }
        assert sorted(stored) == ["2", "r1", "r3"]
        assert stored["r1"].name == "First"
        assert stored["r1"].creation_date.isoformat() == "2024-01-02T01:04:05+00:00"
        errors = dict(
            session.execute(
                select(IngestItem.position, IngestItem.error).where(
                    IngestItem.ingest_id == ingest.id, IngestItem.status == "rejected"
                )
            ).all()
        )
        assert set(errors) == {3, 4, 5, 6}
        assert "creation_date" in (errors[3] or "")
        assert "duplicate" in (errors[6] or "")
        statuses = dict(
            session.execute(
                select(Job.actor, func.count())
                .where(Job.tenant_id == tenant_id, Job.status == "succeeded")
                .group_by(Job.actor)
            ).all()
        )
    assert statuses == {"ingest_resources": 1, "process_resource": 3}


def test_same_feed_twice_changes_nothing(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a feed already ingested once
    tenant_id = make_tenant("twice")
    httpserver.expect_request("/twice.json").respond_with_json(GOOD)
    url = httpserver.url_for("/twice.json")
    first = ingest_resources.send(tenant_id=tenant_id, source_url=url)
    wait_for(lambda: ingest_of(sessions, first.message_id), what="first ingest")
    with sessions() as session:
        before = {
            r.resource_id: r.updated_at
            for r in session.scalars(select(Resource).where(Resource.tenant_id == tenant_id))
        }

    # When it is ingested again
    second = ingest_resources.send(tenant_id=tenant_id, source_url=url)
    ingest = wait_for(lambda: ingest_of(sessions, second.message_id), what="second ingest")

    # Then the same three rows remain, and every item reports no change
    assert ingest.processed == 3
    with sessions() as session:
        after = {
            r.resource_id: r.updated_at
            for r in session.scalars(select(Resource).where(Resource.tenant_id == tenant_id))
        }
        results = list(
            session.scalars(
                select(Job.result).where(
                    Job.tenant_id == tenant_id, Job.actor == "process_resource"
                )
            )
        )
    assert after == before
    assert sum(1 for r in results if r and r["changed"] is False) == 3


@pytest.mark.parametrize(
    ("path", "respond", "reason_part"),
    [
        ("/not-json", lambda h, p: h.expect_request(p).respond_with_data("<html>"), "not JSON"),
        ("/not-list", lambda h, p: h.expect_request(p).respond_with_json({"a": 1}), "list"),
        ("/gone", lambda h, p: h.expect_request(p).respond_with_data("", status=404), "404"),
    ],
)
def test_bad_feed_is_dead_lettered_with_a_recorded_error(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    path: str,
    respond: Callable[[HTTPServer, str], None],
    reason_part: str,
) -> None:
    # Given a feed that can never be ingested
    tenant_id = make_tenant("badfeed")
    respond(httpserver, path)

    # When it is sent
    message = ingest_resources.send(tenant_id=tenant_id, source_url=httpserver.url_for(path))

    # Then the job is dead after one attempt, and the ingest says why; no resource is written
    job = wait_for(lambda: job_of(sessions, message.message_id, "dead"), what="dead job")
    assert job.attempts == 1
    assert reason_part in (job.error or "")
    ingest = wait_for(lambda: ingest_of(sessions, message.message_id), what="failed ingest")
    assert ingest.status == "failed"
    assert reason_part in (ingest.error or "")
    with sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(Resource).where(Resource.tenant_id == tenant_id)
        )
    assert count == 0


def test_unreachable_feed_is_retried_then_dead(
    worker: WorkerProcess, make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    # Given a feed URL where nothing listens
    tenant_id = make_tenant("unreachable")

    # When it is sent
    message = ingest_resources.send(tenant_id=tenant_id, source_url="http://127.0.0.1:9/feed")

    # Then it is tried three times (transient), then dead with the connection error recorded
    job = wait_for(lambda: job_of(sessions, message.message_id, "dead"), what="dead job")
    assert job.attempts == 3
    assert "FetchFailed" in (job.error or "")
    ingest = wait_for(lambda: ingest_of(sessions, message.message_id), what="failed ingest")
    assert ingest.status == "failed"


def test_a_message_delivered_twice_has_its_effects_once(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given an ingest that has run and committed
    tenant_id = make_tenant("redelivered")
    httpserver.expect_request("/again.json").respond_with_json(GOOD)
    message = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for("/again.json")
    )
    wait_for(lambda: ingest_of(sessions, message.message_id), what="first delivery")

    # When RabbitMQ delivers the very same message again (as after a worker
    # was killed between its commit and its acknowledgement)
    publish_now(brokers.broker, message)
    time.sleep(2.0)

    # Then the copy is skipped: one ingest, one job record, three resources
    with sessions() as session:
        ingests = session.scalars(select(Ingest).where(Ingest.tenant_id == tenant_id)).all()
        job = session.get(Job, message.message_id)
        assert len(ingests) == 1
        assert job is not None and (job.status, job.attempts) == ("succeeded", 1)
        assert sorted(stamps(session, tenant_id)) == ["2", "r1", "r3"]
