"""Sends through the outbox, long delays, cancellation: producer → RabbitMQ → worker → PG."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Request, Response

from actors import ingest_resources
from actors.transaction import taskyard_transaction
from db.models import Job, OutboxMessage, Tenant
from middleware.outbox import Outbox, find_outbox
from services.errors import UnknownTenant
from services.job_control import DEFAULT_STALE_AFTER, cancel_job, is_cancel_requested
from services.tenants import create_tenant
from services.workers import running_job
from settings import Settings
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

FEED = [{"id": "r1", "name": "One", "creation_date": "2024-01-02"}]
DELAY_MS = 3_000


@pytest.fixture
def producer_outbox(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    """This process's Outbox, with the long-delay threshold of the delay worker (1 s)."""
    outbox = find_outbox(ingest_resources.broker)
    assert outbox is not None
    monkeypatch.setattr(outbox, "delay_max_seconds", 1.0)
    return outbox


@pytest.fixture(scope="module")
def delay_worker(start_worker: Callable[..., WorkerProcess]) -> Iterator[WorkerProcess]:
    """A worker whose own sends and retries park any delay over 1 s in the outbox."""
    worker = start_worker(TASKYARD_BROKER_DELAY_MAX_SECONDS="1")
    yield worker
    worker.stop()


def job(sessions: sessionmaker[Session], message_id: str) -> Job | None:
    """The job record of one message, if any."""
    with sessions() as session:
        return session.get(Job, message_id)


def status(sessions: sessionmaker[Session], message_id: str) -> str | None:
    """The status of one message's record, if any."""
    record = job(sessions, message_id)
    return record.status if record is not None else None


def in_outbox(sessions: sessionmaker[Session], message_id: str) -> int:
    """How many outbox rows hold the message."""
    with sessions() as session:
        query = select(func.count()).where(OutboxMessage.message_id == message_id)
        return int(session.scalar(query) or 0)


def ready_in_rabbitmq(settings: Settings, tenant_id: int) -> dict[str, int]:
    """Ready messages in the tenant's queue and its delay queue (passive: creates nothing)."""
    counts: dict[str, int] = {}
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        for name in (settings.tenant_queue(tenant_id), f"{settings.tenant_queue(tenant_id)}.DQ"):
            channel = connection.channel()
            try:
                counts[name] = channel.queue_declare(name, passive=True).method.message_count
                channel.close()
            except ChannelClosedByBroker:  # 404: the queue does not exist yet
                counts[name] = 0
    finally:
        connection.close()
    return counts


def test_producer_transaction_sends_on_commit_and_nothing_on_rollback(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a producer that writes a row and sends a job in one transaction
    tenant_id = make_tenant("tx")
    httpserver.expect_request("/tx.json").respond_with_json(FEED)
    url = httpserver.url_for("/tx.json")

    # When one transaction commits and another rolls back
    with taskyard_transaction() as session:
        create_tenant(session, f"kept-{tenant_id}")
        kept = ingest_resources.send(tenant_id=tenant_id, source_url=url)
    with pytest.raises(RuntimeError, match="rolled back"), taskyard_transaction() as session:
        create_tenant(session, f"dropped-{tenant_id}")
        dropped = ingest_resources.send(tenant_id=tenant_id, source_url=url)
        raise RuntimeError("rolled back")

    # Then the committed one runs (with the job it sends in turn), the other leaves no trace
    wait_for(lambda: status(sessions, kept.message_id) == "succeeded", what="committed job")
    wait_for(
        lambda: len(httpserver.log) == 1 and in_outbox(sessions, kept.message_id) == 0,
        what="outbox emptied",
    )
    time.sleep(1.0)
    assert job(sessions, dropped.message_id) is None
    assert in_outbox(sessions, dropped.message_id) == 0
    assert len(httpserver.log) == 1
    with sessions() as session:
        names = set(session.scalars(select(Tenant.name).where(Tenant.name.like(f"%-{tenant_id}"))))
        children = session.scalar(
            select(func.count()).where(Job.tenant_id == tenant_id, Job.actor == "process_resource")
        )
    assert names == {f"kept-{tenant_id}"}
    assert children == 1


def test_long_delay_waits_in_the_outbox_not_in_rabbitmq_and_runs_once(
    delay_worker: WorkerProcess,
    producer_outbox: Outbox,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    # Given a delay over the threshold (1 s here, 60 s by default)
    tenant_id = make_tenant("delayed")
    httpserver.expect_request("/delayed.json").respond_with_json(FEED)

    # When it is sent
    message = ingest_resources.send_with_options(
        kwargs={"tenant_id": tenant_id, "source_url": httpserver.url_for("/delayed.json")},
        delay=DELAY_MS,
    )

    # Then meanwhile it waits in the outbox, queued, and RabbitMQ holds nothing of it
    time.sleep(1.5)
    assert in_outbox(sessions, message.message_id) == 1
    assert status(sessions, message.message_id) == "queued"
    assert set(ready_in_rabbitmq(settings, tenant_id).values()) == {0}
    assert httpserver.log == []

    # And it runs exactly once, about 3 s after it was sent
    wait_for(lambda: status(sessions, message.message_id) == "succeeded", what="delayed job")
    record = job(sessions, message.message_id)
    assert record is not None and record.attempts == 1
    assert record.started_at is not None and record.enqueued_at is not None
    waited = (record.started_at - record.enqueued_at).total_seconds()
    assert DELAY_MS / 1000 <= waited < DELAY_MS / 1000 + 5
    time.sleep(1.5)
    assert len(httpserver.log) == 1 and in_outbox(sessions, message.message_id) == 0


def test_cancelled_delayed_job_never_runs(
    delay_worker: WorkerProcess,
    producer_outbox: Outbox,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a job parked in the outbox for 3 s
    tenant_id = make_tenant("cancel")
    httpserver.expect_request("/cancel.json").respond_with_json(FEED)
    message = ingest_resources.send_with_options(
        kwargs={"tenant_id": tenant_id, "source_url": httpserver.url_for("/cancel.json")},
        delay=DELAY_MS,
    )

    # When it is cancelled
    with sessions.begin() as session:
        result = cancel_job(session, message.message_id)

    # Then it never runs, and nothing waits for it any more
    time.sleep(DELAY_MS / 1000 + 2)
    assert result == "cancelled"
    assert status(sessions, message.message_id) == "cancelled"
    assert in_outbox(sessions, message.message_id) == 0
    assert httpserver.log == []


def test_cancelling_a_job_its_worker_says_is_running_only_asks_it_to_stop(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a job whose feed answers slowly: a byte every half second (each read well
    # under the worker's read timeout) until the test has cancelled it
    tenant_id = make_tenant("busy")
    fetching, cancelled = threading.Event(), threading.Event()

    def trickle() -> Iterator[bytes]:
        yield b"["
        deadline = time.monotonic() + 20
        while not cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
            yield b" "
        yield b'{"id": "r1", "name": "One", "creation_date": "2024-01-02"}]'

    def slow(request: Request) -> Response:
        fetching.set()
        return Response(trickle())

    httpserver.expect_request("/slow.json").respond_with_handler(slow)
    message = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for("/slow.json")
    )
    assert fetching.wait(30)
    # Running, as its worker's heartbeat says (within a beat of its start)
    wait_for(lambda: shows_running(sessions, message.message_id), what="the heartbeat")

    # When it is cancelled while it runs
    with sessions.begin() as session:
        outcome = cancel_job(session, message.message_id)
    cancelled.set()

    # Then the request is recorded for the running actor to see; this actor
    # does not check it, so the attempt goes on and finishes
    assert outcome == "running"
    with sessions() as session:
        assert is_cancel_requested(session, message.message_id)
    wait_for(lambda: status(sessions, message.message_id) == "succeeded", what="busy job")


def shows_running(sessions: sessionmaker[Session], message_id: str) -> bool:
    """Whether a live worker's heartbeat says the job runs."""
    with sessions() as session:
        now = dt.datetime.now(dt.UTC)
        return (
            running_job(session, message_id, now=now, stale_after=DEFAULT_STALE_AFTER) is not None
        )


def test_send_to_an_unknown_tenant_is_refused_and_recorded_dead(
    worker: WorkerProcess, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        unknown = int(session.scalar(select(func.max(Tenant.id))) or 0) + 100_000

    with pytest.raises(UnknownTenant, match=f"tenant {unknown} does not exist"):
        ingest_resources.send(tenant_id=unknown, source_url="http://127.0.0.1:9/never")

    with sessions() as session:
        record = session.scalars(select(Job).where(Job.tenant_id == unknown)).one()
    assert (record.status, record.attempts, record.actor) == ("dead", 0, "ingest_resources")
    assert "does not exist" in (record.error or "")


def test_the_job_record_exists_as_soon_as_send_returns(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("record")
    httpserver.expect_request("/record.json").respond_with_json(FEED)

    message = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for("/record.json")
    )
    # A running attempt's status is not visible until it commits: queued, then succeeded.
    assert status(sessions, message.message_id) in ("queued", "succeeded")

    wait_for(lambda: status(sessions, message.message_id) == "succeeded", what="recorded job")
    record = job(sessions, message.message_id)
    assert record is not None and record.enqueued_at is not None
