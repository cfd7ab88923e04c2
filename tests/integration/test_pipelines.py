"""Pipelines and callbacks end to end (producer → RabbitMQ → worker → PostgreSQL), atomic."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import DeadLetter, Job, Resource
from settings import Settings
from tests.integration.pipeline_actors import add_resource, pipe_clash, pipe_count, pipe_done
from tests.security.support import body, publish
from tests.support import WorkerProcess, wait_for, worker_env
from transport.rabbitmq import TaskyardRabbitmqBroker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipe_worker(
    migrated_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker that knows the test's actors."""
    log = tmp_path_factory.mktemp("pipe-worker") / "worker.log"
    worker = WorkerProcess(log, worker_env(), modules=["tests.integration.pipeline_actors"])
    worker.wait_ready()
    yield worker
    worker.stop()


def keys(sessions: sessionmaker[Session], tenant_id: int, label: str) -> list[str]:
    with sessions() as session:
        query = select(Resource.resource_id).where(
            Resource.tenant_id == tenant_id, Resource.resource_id.startswith(label)
        )
        return sorted(session.scalars(query))


def status(sessions: sessionmaker[Session], message_id: str) -> str | None:
    with sessions() as session:
        job = session.get(Job, message_id)
        return job.status if job is not None else None


def test_a_two_stage_pipeline_and_its_callback_run_end_to_end(
    pipe_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("pipe")
    label = uuid.uuid4().hex[:8]
    first = pipe_count.message(tenant_id=tenant, label=label)
    last = pipe_count.message_with_options(
        kwargs={"tenant_id": tenant, "label": label}, on_success=pipe_done
    )

    pipe = (first | last).run()

    wait_for(lambda: len(keys(sessions, tenant, label)) == 3, what="both stages and the callback")
    assert keys(sessions, tenant, label) == [f"{label}-1", f"{label}-2", f"{label}-done-2"]
    assert [status(sessions, m.message_id) for m in pipe.messages] == ["succeeded"] * 2


def test_a_stage_whose_transaction_rolls_back_sends_nothing(
    pipe_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("pipe-clash")
    label = uuid.uuid4().hex[:8]
    with sessions.begin() as session:
        add_resource(session, tenant, label)
    clash = pipe_clash.message_with_options(
        kwargs={"tenant_id": tenant, "label": label}, on_success=pipe_done
    )
    after = pipe_count.message(tenant_id=tenant, label=f"{label}-after")

    pipe = (clash | after).run()

    wait_for(lambda: status(sessions, clash.message_id) == "dead", what="the stage recorded dead")
    # A job sent after it, on the same queue, has run: the worker is past the stage.
    probe = pipe_count.send(tenant_id=tenant, label=f"{label}-probe")
    wait_for(lambda: status(sessions, probe.message_id) == "succeeded", what="the probe")
    assert status(sessions, pipe.messages[1].message_id) is None
    assert keys(sessions, tenant, label) == [label, f"{label}-probe-1"]


@pytest.mark.parametrize(
    ("crafted", "reason"),
    [("pipe_target", "tenant_mismatch"), ("on_success", "invalid_options")],
)
def test_a_crafted_follow_up_never_reaches_another_tenant(
    pipe_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    settings: Settings,
    make_tenant: Callable[[str], int],
    crafted: str,
    reason: str,
) -> None:
    tenant_a, tenant_b = make_tenant("pipe-a"), make_tenant("pipe-b")
    label = uuid.uuid4().hex[:8]
    stage_b = pipe_count.message(tenant_id=tenant_b, label=label).asdict()
    queue_a = settings.tenant_queue(tenant_a)
    options = {
        # The next stage names B's tenant (and B's queue in its bytes).
        "pipe_target": {"pipe_target": stage_b},
        # A callback naming a system actor, which would run outside any tenant.
        "on_success": {"on_success": "purge_job_records"},
    }[crafted]
    crafted_body = body(queue_a, pipe_count.actor_name, {"tenant_id": tenant_a, "label": label})
    crafted_body["options"] = options
    # The queue exists before the worker's next look at the tenants: publish needs it.
    broker = pipe_count.broker
    assert isinstance(broker, TaskyardRabbitmqBroker)
    broker.declare_queue(queue_a)
    broker.ensure_queues([queue_a])
    [message_id] = publish(settings.broker_url, queue_a, [crafted_body])

    def kept() -> DeadLetter | None:
        with sessions() as session:
            query = select(DeadLetter).where(DeadLetter.error.contains(message_id))
            return session.scalars(query).first()

    letter = wait_for(kept, what="the crafted message's dead letter")
    assert letter.reason == reason and letter.tenant_id is None
    # Neither stage ran, for A or for B, and B's stage got no record.
    assert keys(sessions, tenant_a, label) == [] and keys(sessions, tenant_b, label) == []
    assert status(sessions, message_id) is None
    assert status(sessions, str(stage_b["message_id"])) is None
