"""Plain `@dramatiq.actor` actors end to end on RabbitMQ: recorded, run in a transaction,
delayed and retried through the delay queue, sending Taskyard jobs from their body."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from dramatiq import group, pipeline
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, Resource
from settings import Settings
from tests.integration.pipeline_actors import plain_sender, plain_write
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def keys(sessions: sessionmaker[Session], tenant_id: int) -> list[str]:
    with sessions() as session:
        query = select(Resource.resource_id).where(Resource.tenant_id == tenant_id)
        return sorted(session.scalars(query))


def job(sessions: sessionmaker[Session], message_id: str) -> Job | None:
    with sessions() as session:
        return session.get(Job, message_id)


def test_plain_actors_are_recorded_run_delayed_retried_and_send_from_their_body(
    settings: Settings,
    worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("plain")
    label = uuid.uuid4().hex[:8]

    # When plain actors are sent as Dramatiq code sends them: at once, delayed (the
    # worker moves it from the delay queue when due), failing once (its retry waits
    # in the delay queue), and one that sends a Taskyard actor's job from its body
    now = plain_write.send(tenant, f"{label}-now")
    later = plain_write.send_with_options(args=(tenant, f"{label}-later"), delay=300)
    flaky = plain_write.send(tenant, f"{label}-flaky")
    sender = plain_sender.send(tenant, label)
    # And Dramatiq's composition runs a pipeline and a group of them
    stages = [plain_write.message(tenant, f"{label}-first"), plain_write.message(tenant)]
    pipe = pipeline(stages).run()
    members = group([plain_write.message(tenant, f"{label}-m{n}") for n in (1, 2)]).run()

    # Then every one of them runs and is recorded
    expected = sorted(
        [
            f"{label}-now",
            f"{label}-later",
            f"{label}-flaky",
            f"{label}-1",  # written by the Taskyard job the plain actor sent
            f"{label}-first",
            f"{label}-first-next",  # the second stage, given the first one's result
            f"{label}-m1",
            f"{label}-m2",
        ]
    )
    wait_for(lambda: keys(sessions, tenant) == expected, timeout=30, what="every key")
    messages = [now, later, flaky, sender, *pipe.messages, *members.children]
    wait_for(
        lambda: all(
            (found := job(sessions, m.message_id)) is not None and found.status == "succeeded"
            for m in messages
        ),
        timeout=30,
    )
    first = job(sessions, now.message_id)
    assert first is not None and first.args == {
        "args": [tenant, f"{label}-now"],
        "kwargs": {},
    }
    assert first.result == f"{label}-now-next" and first.tenant_id is None
    # On the run's own queue: its plain actors' queue is under the queue prefix too
    assert now.queue_name == f"{settings.queue_prefix}default"
    retried = job(sessions, flaky.message_id)
    assert retried is not None and retried.attempts == 2
