"""Callbacks and pipelines: follow-ups held in the job's transaction, within its tenant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, pipeline
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import DeadLetter, Resource
from middleware import current_session
from middleware.follow_ups import FollowUpRefused
from middleware.tenant_routing import RouteRefused
from services.tenants import create_tenant
from tests.unit.middleware.outbox_harness import Harness, outbox_harness, spy_on_publish
from transport.rabbitmq import publish_now


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with outbox_harness(tmp_path) as harness:
        yield harness


def add_resource(session: Session, tenant_id: int, key: str) -> None:
    """The effect the test actors write: a resource keyed `key` (unique per tenant)."""
    session.add(
        Resource(
            tenant_id=tenant_id,
            resource_id=key,
            name=key,
            tags=[],
            creation_date=dt.datetime.now(dt.UTC),
        )
    )


def resource_keys(harness: Harness) -> list[str]:
    with harness.sessions() as session:
        return sorted(session.scalars(select(Resource.resource_id)))


def letter(harness: Harness, message_id: str) -> DeadLetter | None:
    with harness.sessions() as session:
        return session.get(DeadLetter, message_id)


def make_tenant(harness: Harness, name: str) -> int:
    with harness.sessions.begin() as session:
        tenant_id = create_tenant(session, name).id
    harness.broker.declare_queue(harness.settings.tenant_queue(tenant_id))
    return tenant_id


def test_on_success_callback_gets_the_result_and_the_jobs_tenant_once_it_has_committed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[tuple[int, str, Any]] = []
    done = harness.declare(
        "t_done",
        lambda tenant_id, message_data, result: got.append(
            (tenant_id, message_data["message_id"], result)
        ),
    )

    def work(tenant_id: int) -> dict[str, int]:
        add_resource(current_session(), tenant_id, "work")
        return {"n": 1}

    seen = spy_on_publish(harness, monkeypatch)
    message = harness.declare("t_work", work).send_with_options(
        kwargs={"tenant_id": 1}, on_success=done
    )
    harness.drain()

    assert got == [(1, message.message_id, {"n": 1})]
    # Published once its record and outbox row had committed with the job's effect.
    assert seen == [("t_work", ("queued", True)), ("t_done", ("queued", True))]
    assert resource_keys(harness) == ["work"]
    assert harness.outbox_rows() == []


def test_a_pipeline_of_taskyard_actors_hands_each_result_on_as_pipe_result(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[Any] = []

    def count(tenant_id: int, pipe_result: dict[str, int] | None = None) -> dict[str, int]:
        n = (pipe_result or {"n": 0})["n"] + 1
        add_resource(current_session(), tenant_id, f"stage-{n}")
        return {"n": n}

    stage = harness.declare("t_count", count)
    last = harness.declare("t_last", lambda tenant_id, pipe_result=None: got.append(pipe_result))
    ignoring = last.message_with_options(kwargs={"tenant_id": 1}, pipe_ignore=True)
    seen = spy_on_publish(harness, monkeypatch)

    stages = [stage.message(tenant_id=1), stage.message(tenant_id=1), last.message(tenant_id=1)]
    pipe = pipeline([*stages, ignoring], broker=harness.broker)
    pipe.run()
    harness.drain()

    assert resource_keys(harness) == ["stage-1", "stage-2"]
    # The third stage got the second's result; the fourth ignored the third's.
    assert got == [{"n": 2}, None]
    assert [harness.status(m.message_id) for m in pipe.messages] == ["succeeded"] * 4
    # Every later stage was written with its predecessor's commit, under the id pipeline gave it.
    assert seen[1:] == [(m.actor_name, ("queued", True)) for m in pipe.messages[1:]]


def test_a_stage_whose_transaction_rolls_back_sends_nothing(harness: Harness) -> None:
    ran: list[Any] = []
    with harness.sessions.begin() as session:
        add_resource(session, 1, "taken")

    def clash(tenant_id: int) -> dict[str, int]:
        # The body returns; the commit then fails on the unique key.
        add_resource(current_session(), tenant_id, "taken")
        return {"n": 1}

    first = harness.declare("t_clash", clash, max_attempts=1)
    second = harness.declare("t_after_clash", lambda tenant_id, pipe_result=None: ran.append(1))
    done = harness.declare("t_clash_done", lambda tenant_id, message_data, result: ran.append(2))
    head = first.message_with_options(kwargs={"tenant_id": 1}, on_success=done.actor_name)
    pipe = pipeline([head, second.message(tenant_id=1)], broker=harness.broker)
    pipe.run()
    harness.drain()

    assert harness.status(pipe.messages[0].message_id) == "dead"
    assert ran == [] and harness.status(pipe.messages[1].message_id) is None
    assert harness.outbox_rows() == [] and resource_keys(harness) == ["taken"]


def test_on_failure_is_sent_once_when_the_job_gives_up_not_after_a_retried_attempt(
    harness: Harness,
) -> None:
    got: list[tuple[int, str, dict[str, str]]] = []
    attempts: list[str] = []
    report = harness.declare(
        "t_report",
        lambda tenant_id, message_data, exception_data: got.append(
            (tenant_id, message_data["actor_name"], exception_data)
        ),
    )

    def flaky(tenant_id: int, fail_times: int) -> None:
        attempts.append("flaky")
        if attempts.count("flaky") <= fail_times:
            raise RuntimeError("boom")

    actor = harness.declare("t_flaky", flaky, on_failure=report.actor_name)
    recovered = actor.send(tenant_id=1, fail_times=2)
    harness.drain()
    assert harness.status(recovered.message_id) == "succeeded" and got == []

    attempts.clear()
    dead = actor.send(tenant_id=1, fail_times=99)
    harness.drain()

    assert harness.status(dead.message_id) == "dead" and len(attempts) == 3
    assert got == [(1, "t_flaky", {"type": "RuntimeError", "message": "boom"})]


def test_a_follow_up_outside_the_jobs_tenant_is_refused_at_send(harness: Harness) -> None:
    other = make_tenant(harness, "other")
    system = harness.declare("t_system", lambda message_data, result: None, tenant_scoped=False)
    work = harness.declare("t_refused_work", lambda tenant_id: None)
    theirs = harness.declare("t_theirs", lambda tenant_id, pipe_result=None: None)

    with pytest.raises(FollowUpRefused, match="not an actor of tenant 1"):
        work.send_with_options(kwargs={"tenant_id": 1}, on_success=system)
    with pytest.raises(FollowUpRefused, match="on_failure names no known actor"):
        work.send_with_options(kwargs={"tenant_id": 1}, on_failure="no_such_actor")
    with pytest.raises(FollowUpRefused, match=f"runs for tenant {other}, not for tenant 1"):
        work.send_with_options(
            kwargs={"tenant_id": 1}, pipe_target=theirs.message(tenant_id=other).asdict()
        )
    assert harness.outbox_rows() == []


@pytest.mark.parametrize(
    ("crafted", "reason"),
    [
        ("pipe_target_of_another_tenant", "tenant_mismatch"),
        ("on_success_to_a_system_actor", "invalid_options"),
        ("on_failure_to_an_unknown_actor", "unknown_actor"),
        ("positional_arguments_in_a_stage", "invalid_arguments"),
    ],
)
def test_a_crafted_follow_up_is_dead_lettered_before_its_job_runs(
    harness: Harness, crafted: str, reason: str
) -> None:
    other = make_tenant(harness, "other")
    ran: list[str] = []
    harness.declare("t_sys", lambda message_data, result: ran.append("system"), tenant_scoped=False)
    work = harness.declare("t_crafted", lambda tenant_id: ran.append("work"))
    theirs = harness.declare("t_b_stage", lambda tenant_id, pipe_result=None: ran.append("B"))
    options: dict[str, Any] = {
        "pipe_target_of_another_tenant": {"pipe_target": theirs.message(tenant_id=other).asdict()},
        "on_success_to_a_system_actor": {"on_success": "t_sys"},
        "on_failure_to_an_unknown_actor": {"on_failure": "no_such_actor"},
        "positional_arguments_in_a_stage": {
            "pipe_target": theirs.message(tenant_id=1).asdict() | {"args": [1]}
        },
    }[crafted]
    # Around send(): as bytes on A's queue would arrive.
    message = work.message(tenant_id=1).copy(options=options)
    publish_now(harness.broker, message)
    harness.drain()

    kept = letter(harness, message.message_id)
    assert kept is not None and kept.reason == reason and kept.tenant_id is None
    assert ran == []
    assert harness.waiting(harness.settings.tenant_queue(other)) == 0


def test_plain_dramatiq_actors_pipe_and_call_back_as_dramatiq_does(harness: Harness) -> None:
    saved: list[Any] = []

    @dramatiq.actor(broker=harness.broker)
    def plain_add(x: int, y: int) -> int:
        return x + y

    @dramatiq.actor(broker=harness.broker)
    def plain_save(message_data: dict[str, Any], result: Any) -> None:
        saved.append((message_data["args"], result))

    last = plain_add.message_with_options(args=(3,), on_success=plain_save)
    pipeline([plain_add.message(1, 2), last], broker=harness.broker).run()
    harness.drain()

    assert saved == [([3, 3], 6)]


def test_a_plain_actors_follow_up_to_a_taskyard_actor_is_not_sent(harness: Harness) -> None:
    ran: list[str] = []
    taskyard = harness.declare("t_from_plain", lambda tenant_id, pipe_result=None: ran.append(1))

    @dramatiq.actor(broker=harness.broker)
    def plain_first() -> int:
        return 1

    first: Message[Any] = plain_first.message()
    pipe = pipeline([first, taskyard.message(tenant_id=1)], broker=harness.broker)
    # Refused at send, as the consumer and the engine would refuse it
    with pytest.raises(RouteRefused, match="not for a plain Dramatiq actor"):
        pipe.run()
    harness.drain()

    assert ran == [] and harness.status(pipe.messages[0].message_id) is None
    assert harness.status(pipe.messages[1].message_id) is None
