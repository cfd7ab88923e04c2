"""delete_tenant through a real worker: batches, stopped and run again, others untouched."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pika
import pika.exceptions
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors import delete_tenant
from db.models import (
    TENANT_DELETING,
    CancelRequest,
    DeadLetter,
    GithubMember,
    GithubRepository,
    Ingest,
    IngestItem,
    Integration,
    Job,
    LockerEntry,
    OutboxMessage,
    Resource,
    Schedule,
    ScheduleRun,
    Tenant,
)
from settings import Settings
from tests.support import WorkerProcess, delete_prefix_queues, queue_state, wait_for
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration

ROWS = 120  # per bulk table: several batches of BATCH rows
BATCH = 50
FAR = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
TABLES = (
    Resource,
    Ingest,
    IngestItem,
    Integration,
    GithubMember,
    GithubRepository,
    LockerEntry,
    Schedule,
    ScheduleRun,
    OutboxMessage,
    DeadLetter,
    Job,
)


def fill(session: Session, tenant_id: int) -> str:
    """Give a tenant rows in every table that has a tenant_id; returns its cancelled job's id."""
    now = dt.datetime.now(dt.UTC)
    ingest = Ingest(tenant_id=tenant_id, source_url="https://feeds.example/x")
    integration = Integration(tenant_id=tenant_id, kind="github", config={"org": "o"})
    schedule = Schedule(tenant_id=tenant_id, actor="ingest_resources", args={}, cron="0 * * * *")
    session.add_all([ingest, integration, schedule])
    session.flush()
    for n in range(ROWS):
        session.add_all(
            [
                Resource(
                    tenant_id=tenant_id, resource_id=f"r{n}", name="n", tags=[], creation_date=now
                ),
                IngestItem(tenant_id=tenant_id, ingest_id=ingest.id, position=n, resource_id=None),
                Job(
                    message_id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    actor="process_resource",
                    queue="q",
                    args={},
                    status="succeeded",
                ),
            ]
        )
    session.add_all(
        [
            GithubMember(
                tenant_id=tenant_id, integration_id=integration.id, github_id=1, login="a"
            ),
            GithubRepository(
                tenant_id=tenant_id,
                integration_id=integration.id,
                github_id=1,
                name="r",
                full_name="o/r",
            ),
            LockerEntry(tenant_id=tenant_id, key="k", ciphertext="x"),
            ScheduleRun(tenant_id=tenant_id, schedule_id=schedule.id, slot_at=now),
            # Far in the future, so the sweeper never publishes it during the test.
            OutboxMessage(
                message_id=str(uuid.uuid4()),
                tenant_id=tenant_id,
                queue="q",
                body="{}",
                publish_at=FAR,
            ),
            DeadLetter(
                message_id=str(uuid.uuid4()), tenant_id=tenant_id, queue="q", reason="failed"
            ),
        ]
    )
    # A cancel request has no tenant_id: it belongs to the tenant through its job.
    cancelled = session.scalars(select(Job.message_id).where(Job.tenant_id == tenant_id)).first()
    assert cancelled is not None
    session.add(CancelRequest(message_id=cancelled))
    return cancelled


def cancel_requested(sessions: sessionmaker[Session], message_id: str) -> bool:
    """Whether the cancel request of `message_id` is still there."""
    with sessions() as session:
        return session.get(CancelRequest, message_id) is not None


def counts(sessions: sessionmaker[Session], tenant_id: int) -> dict[str, int]:
    """Rows per table of one tenant."""
    with sessions() as session:
        return {
            m.__tablename__: session.scalar(
                select(func.count()).select_from(m).where(m.tenant_id == tenant_id)
            )
            or 0
            for m in TABLES
        }


def queue_depth(settings: Settings, name: str) -> int | None:
    """Messages ready in a queue, or None when it does not exist."""
    state = queue_state(settings.broker_url, name)
    return None if state is None else state[0]


def declare_with_message(settings: Settings, tenant_id: int) -> list[str]:
    """Declare the tenant's three queues and leave one message in the main one."""
    name = settings.tenant_queue(tenant_id)
    names = [name, f"{name}.DQ", f"{name}.XQ"]
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    channel = connection.channel()
    for queue in names:
        channel.queue_declare(queue, durable=True)
    channel.basic_publish("", name, b"not for a worker")
    connection.close()
    return names


def job(sessions: sessionmaker[Session], message_id: str, status: str) -> Job | None:
    with sessions() as session:
        found = session.get(Job, message_id)
        return found if found is not None and found.status == status else None


def send_delete(settings: Settings, **kwargs: Any) -> str:
    """Send delete_tenant to the system queue of `settings` (the private worker's prefix)."""
    message = delete_tenant.message_with_options(kwargs=kwargs).copy(
        queue_name=settings.system_queue
    )
    publish_now(brokers.broker, message)
    return str(message.message_id)


@pytest.fixture
def private(
    start_worker: Callable[..., WorkerProcess], settings: Settings, engine: Engine
) -> Iterator[Settings]:
    """A worker on a queue prefix of its own that never picks up new tenants.

    So no other test's worker consumes (or declares again) the queues under
    test, and this worker never declares the new tenants' queues itself.
    """
    own = replace(settings, queue_prefix=f"{settings.queue_prefix}del.")
    worker = start_worker(
        TASKYARD_QUEUE_PREFIX=own.queue_prefix, TASKYARD_TENANT_REFRESH_SECONDS="3600"
    )
    yield own
    worker.stop()
    delete_prefix_queues(own, engine)


def test_a_worker_consuming_a_deleted_tenants_queue_lets_it_go(
    start_worker: Callable[..., WorkerProcess],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
    engine: Engine,
) -> None:
    # Given a worker of its own that picks up new tenants every second, consuming one
    own = replace(settings, queue_prefix=f"{settings.queue_prefix}gone.")
    worker = start_worker(
        TASKYARD_QUEUE_PREFIX=own.queue_prefix, TASKYARD_TENANT_REFRESH_SECONDS="1"
    )
    try:
        doomed = make_tenant("consumed-then-deleted")
        queue = own.tenant_queue(doomed)
        wait_for(
            lambda: queue_state(own.broker_url, queue) == (0, 1), what="the worker to consume it"
        )

        # When the tenant is deleted while the worker consumes its queue
        deletion = send_delete(own, tenant_id=doomed)
        wait_for(lambda: job(sessions, deletion, "succeeded"), what="deletion")

        # Then its queues stay gone: the worker does not declare them again
        wait_for(lambda: "no longer consumed" in worker.log(), what="the worker to let go")
        time.sleep(1.5)  # a tenant refresh or two, which must not bring it back either
        assert [queue_depth(own, q) for q in (queue, f"{queue}.DQ", f"{queue}.XQ")] == [
            None,
            None,
            None,
        ]
        assert "declaring it again" not in worker.log()
    finally:
        worker.stop()
        delete_prefix_queues(own, engine)


def test_delete_tenant_stopped_half_way_finishes_when_run_again(
    private: Settings,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given two tenants with rows in every table and a message waiting in their queues
    settings = private
    doomed, kept = make_tenant("doomed"), make_tenant("kept")
    with sessions.begin() as session:
        doomed_cancel = fill(session, doomed)
        kept_cancel = fill(session, kept)
    doomed_queues = declare_with_message(settings, doomed)
    kept_queues = declare_with_message(settings, kept)
    before_kept = counts(sessions, kept)
    assert before_kept == counts(sessions, doomed)
    assert before_kept["resources"] == ROWS

    # When a deletion is stopped after 4 batches
    first = send_delete(settings, tenant_id=doomed, batch_size=BATCH, max_batches=4)
    dead = wait_for(lambda: job(sessions, first, "dead"), what="stopped deletion")
    assert "stopped after 4 batches" in (dead.error or "")

    # Then it deleted some rows, not all, and the tenant says it is being deleted
    half = counts(sessions, doomed)
    assert sum(half.values()) < sum(before_kept.values())
    assert sum(half.values()) > 0
    with sessions() as session:
        tenant = session.get(Tenant, doomed)
        assert tenant is not None and tenant.status == TENANT_DELETING
    assert queue_depth(settings, doomed_queues[0]) == 1

    # When it is run again
    second = send_delete(settings, tenant_id=doomed, batch_size=BATCH)
    done = wait_for(lambda: job(sessions, second, "succeeded"), what="deletion")

    # Then every row, every queue and the tenant are gone, and the result says so
    assert counts(sessions, doomed) == {m.__tablename__: 0 for m in TABLES}
    assert not cancel_requested(sessions, doomed_cancel)
    with sessions() as session:
        assert session.get(Tenant, doomed) is None
    assert [queue_depth(settings, q) for q in doomed_queues] == [None, None, None]
    result: dict[str, Any] = done.result or {}
    assert result["queues"] == 3
    assert result["tenants"] == 1
    # The second run deleted exactly what the first left behind
    assert sum(result.values()) - result["queues"] - result["tenants"] == sum(half.values())

    # And the other tenant is untouched: rows, queues and its waiting message
    assert counts(sessions, kept) == before_kept
    assert cancel_requested(sessions, kept_cancel)
    assert [queue_depth(settings, q) for q in kept_queues] == [1, 0, 0]

    # And a third run (the tenant is gone) succeeds and deletes nothing
    third = send_delete(settings, tenant_id=doomed)
    again = wait_for(lambda: job(sessions, third, "succeeded"), what="re-run")
    assert again.result is not None
    assert sum(again.result.values()) == 0
