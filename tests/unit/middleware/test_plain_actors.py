"""Plain `@dramatiq.actor` actors on Taskyard's broker get a job record and the DB session;
Dramatiq's own sends (`broker.enqueue`, `pipeline.run`, `group.run`) write the record first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import group, pipeline
from sqlalchemy import func, select

from db.models import DeadLetter, Resource
from middleware import current_session
from middleware.plain_actors import is_adopted
from tests.unit.middleware.outbox_harness import Harness, outbox_harness, spy_on_publish


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with outbox_harness(tmp_path) as harness:
        yield harness


def resources(harness: Harness) -> list[str]:
    with harness.sessions() as session:
        return sorted(session.scalars(select(Resource.resource_id)))


def add_resource(key: str) -> None:
    current_session().add(
        Resource(
            tenant_id=1, resource_id=key, name=key, tags=[], creation_date=dt.datetime.now(dt.UTC)
        )
    )


def test_a_plain_actor_runs_with_its_record_and_the_db_session(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plain Dramatiq actor that takes positional arguments and writes in its session
    @dramatiq.actor(broker=harness.broker)
    def plain_write(key: str, times: int) -> int:
        add_resource(key)
        return times * 2

    assert is_adopted(plain_write)
    seen = spy_on_publish(harness, monkeypatch)

    # When it is sent as Dramatiq code sends it
    message = plain_write.send("plain-1", 21)

    # Then its record was queued, with its outbox row, before it was published
    assert seen == [("plain_write", ("queued", True))]
    job = harness.job(message.message_id)
    assert job is not None and job.args == {"args": ["plain-1", 21], "kwargs": {}}

    # And run by the worker, its effect and its record commit together
    harness.drain()
    job = harness.job(message.message_id)
    assert job is not None and (job.status, job.result) == ("succeeded", 42)
    assert job.tenant_id is None
    assert resources(harness) == ["plain-1"]


def test_a_plain_actor_called_directly_runs_its_function(harness: Harness) -> None:
    @dramatiq.actor(broker=harness.broker)
    def plain_add(a: int, b: int) -> int:
        return a + b

    assert plain_add(2, 3) == 5


def test_a_send_from_a_plain_actor_is_written_with_its_job(harness: Harness) -> None:
    # Given a Taskyard actor and a plain actor that sends it (the send was held and lost)
    taskyard = harness.declare("t_from_plain_body", lambda tenant_id, key: add_resource(key))

    @dramatiq.actor(broker=harness.broker)
    def plain_sender() -> None:
        taskyard.send(tenant_id=1, key="sent-by-plain")

    # When the plain actor runs
    message = plain_sender.send()
    harness.drain()

    # Then its send was written in its transaction, published, and ran
    assert harness.status(message.message_id) == "succeeded"
    assert resources(harness) == ["sent-by-plain"]


def test_a_failing_plain_actor_is_retried_then_dead_lettered_with_its_effects_rolled_back(
    harness: Harness,
) -> None:
    @dramatiq.actor(broker=harness.broker)
    def plain_fails(key: str) -> None:
        add_resource(key)
        raise ValueError(f"bad input {key}")

    message = plain_fails.send("never")
    harness.drain()

    job = harness.job(message.message_id)
    assert job is not None and job.status == "dead" and job.attempts == 3
    assert "ValueError: bad input never" in (job.error or "")
    assert resources(harness) == []
    with harness.sessions() as session:
        assert session.get(DeadLetter, message.message_id) is not None


def test_a_pipeline_and_a_group_run_by_dramatiq_record_every_message(harness: Harness) -> None:
    # Given plain actors in a pipeline and in a group
    @dramatiq.actor(broker=harness.broker)
    def plain_double(n: int) -> int:
        return n * 2

    @dramatiq.actor(broker=harness.broker)
    def plain_keep(n: int) -> None:
        add_resource(f"kept-{n}")

    # When Dramatiq's composition runs them (it calls broker.enqueue)
    pipe = pipeline([plain_double.message(5), plain_keep.message()], broker=harness.broker)
    pipe.run()
    members = group([plain_keep.message(n) for n in (1, 2)], broker=harness.broker)
    members.run()

    # Then the pipeline's first stage and every member had a record once sent
    # (the stub worker may have run them already)
    assert harness.status(pipe.messages[0].message_id) is not None
    assert None not in [harness.status(m.message_id) for m in members.children]

    # And everything ran, the second stage with the first one's result
    harness.drain()
    assert resources(harness) == ["kept-1", "kept-10", "kept-2"]
    assert harness.status(pipe.messages[1].message_id) == "succeeded"


def test_a_message_that_would_be_refused_is_refused_at_send(harness: Harness) -> None:
    from dataclasses import replace

    from middleware.tenant_routing import RouteRefused

    taskyard = harness.declare("t_routed", lambda tenant_id: None)
    # Built for tenant 2, pointed at tenant 1's queue: the consumer would refuse it
    crafted = replace(taskyard.message(tenant_id=2), queue_name=harness.settings.tenant_queue(1))
    with pytest.raises(RouteRefused, match="arrived on queue"):
        harness.broker.enqueue(crafted)
    assert harness.status(crafted.message_id) is None
    assert harness.waiting(harness.settings.tenant_queue(1)) == 0


def test_a_delayed_plain_send_runs_once_due(harness: Harness) -> None:
    # The worker moves a due delayed message with broker.enqueue: that must publish it
    # (its record exists), not write it again and drop it.
    @dramatiq.actor(broker=harness.broker)
    def plain_later(key: str) -> None:
        add_resource(key)

    message = plain_later.send_with_options(args=("later",), delay=50)
    harness.drain()

    assert harness.status(message.message_id) == "succeeded"
    with harness.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Resource)) == 1


def test_a_plain_actor_sending_at_the_same_time_twice_keeps_one_record(
    harness: Harness,
) -> None:
    # Enqueueing the same message twice (Dramatiq would run it twice) records and runs it once
    ran: list[Any] = []

    @dramatiq.actor(broker=harness.broker)
    def plain_once() -> None:
        ran.append(1)

    message = plain_once.message()
    harness.broker.enqueue(message)
    harness.broker.enqueue(message)
    harness.drain()

    assert ran == [1] and harness.status(message.message_id) == "succeeded"


def test_a_send_from_a_middleware_hook_after_the_job_is_published(harness: Harness) -> None:
    # Given a middleware that sends a job from its after-hook, once the job's own
    # transaction is over (Dramatiq's GroupCallbacks and Pipelines send from there)
    taskyard = harness.declare("t_after_hook", lambda tenant_id, key: add_resource(key))

    class SendAfter(dramatiq.Middleware):
        def after_process_message(
            self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
        ) -> None:
            if message.actor_name == "plain_noop":
                taskyard.send(tenant_id=1, key="from-hook")

    harness.broker.add_middleware(SendAfter())

    @dramatiq.actor(broker=harness.broker)
    def plain_noop() -> None:
        return None

    # When the job runs, then the hook's send is recorded and runs (it was held and lost)
    plain_noop.send()
    harness.drain()
    assert resources(harness) == ["from-hook"]
