"""The per-message transaction on the in-process broker and SQLite: commit, rollback, skip, hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.base import InvalidArguments, TaskyardActor, taskyard_actor
from brokers import build_broker
from db.models import DeadLetter, Job, OutboxMessage, Tenant
from middleware import current_session
from services.errors import PermanentError, TransientError
from services.tenants import create_tenant
from settings import Settings
from tests.unit.middleware.stub_world import drain, stub_world
from transport.rabbitmq import publish_now


@dataclass
class Harness:
    """A stub broker wired like production, its worker, and a way to read the database."""

    broker: StubBroker
    worker: Worker
    sessions: sessionmaker[Session]
    settings: Settings

    def drain(self) -> None:
        """Run every queued message, retries included, to completion."""
        drain(self.broker, self.worker)

    def job(self, message_id: str) -> Job:
        """The job record of one message."""
        with self.sessions() as session:
            job = session.get(Job, message_id)
            assert job is not None, f"no job record for {message_id}"
            return job

    def tenant_names(self) -> list[str]:
        """Names of every tenant, the effect the test actors write."""
        with self.sessions() as session:
            return sorted(session.scalars(select(Tenant.name)))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with stub_world(tmp_path) as (broker, worker, sessions, settings):
        yield Harness(broker=broker, worker=worker, sessions=sessions, settings=settings)


def declare(harness: Harness, name: str, fn: Any, **options: Any) -> TaskyardActor:
    """Declare a test actor on the harness's broker."""
    actor = taskyard_actor(name=name, broker=harness.broker, **options)(fn)
    # The worker consumes the new tenant queue as soon as it is declared.
    harness.broker.declare_queue(harness.settings.tenant_queue(1))
    return actor


def test_success_commits_the_actors_writes_with_its_job_record(harness: Harness) -> None:
    def write(tenant_id: int, name: str) -> dict[str, Any]:
        create_tenant(current_session(), name)
        return {"wrote": name}

    actor = declare(harness, "write", write)
    message = actor.send(tenant_id=1, name="written")
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"wrote": "written"})
    assert job.tenant_id == 1 and job.queue == harness.settings.tenant_queue(1)
    assert harness.tenant_names() == ["acme", "written"]


def test_transient_failure_rolls_back_and_retries(harness: Harness) -> None:
    calls: list[int] = []

    def flaky(tenant_id: int) -> None:
        calls.append(1)
        create_tenant(current_session(), f"attempt-{len(calls)}")
        if len(calls) == 1:
            raise TransientError("try again")

    actor = declare(harness, "flaky", flaky)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.attempts, job.error) == ("succeeded", 2, None)
    # The first attempt's write was rolled back with it.
    assert harness.tenant_names() == ["acme", "attempt-2"]


def test_permanent_failure_is_dead_at_once_and_runs_the_give_up_hook(harness: Harness) -> None:
    gave_up: list[tuple[dict[str, Any], str]] = []

    def hopeless(tenant_id: int) -> None:
        create_tenant(current_session(), "never-kept")
        raise PermanentError("cannot be done", reason="hopeless")

    def on_give_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
        gave_up.append((kwargs, error))
        create_tenant(session, "compensated")

    actor = declare(harness, "hopeless", hopeless, on_give_up=on_give_up)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.attempts) == ("dead", 1)
    assert job.error == "PermanentError: cannot be done"
    assert gave_up == [({"tenant_id": 1}, "PermanentError: cannot be done")]
    assert harness.tenant_names() == ["acme", "compensated"]


def test_a_send_from_the_give_up_hook_is_published_when_the_failure_commits(
    harness: Harness,
) -> None:
    received: list[str] = []

    def hopeless(tenant_id: int) -> None:
        raise PermanentError("cannot be done", reason="hopeless")

    def told(tenant_id: int, about: str) -> None:
        received.append(about)

    notice = declare(harness, "told", told)

    def on_give_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
        notice.send(tenant_id=kwargs["tenant_id"], about=error)

    actor = declare(harness, "hopeless_notifying", hopeless, on_give_up=on_give_up)
    actor.send(tenant_id=1)
    harness.drain()

    # Published at once after the failure's commit, not left to the outbox sweeper.
    assert received == ["PermanentError: cannot be done"]
    with harness.sessions() as session:
        assert session.scalars(select(OutboxMessage)).all() == []


def test_transient_failure_gives_up_after_max_attempts(harness: Harness) -> None:
    def always_down(tenant_id: int) -> None:
        raise TransientError("still down")

    actor = declare(harness, "always_down", always_down)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.attempts) == ("dead", 3)
    assert "still down" in (job.error or "")


def test_redelivered_message_after_success_is_skipped(harness: Harness) -> None:
    def once(tenant_id: int, name: str) -> None:
        create_tenant(current_session(), name)

    actor = declare(harness, "once", once)
    message = actor.send(tenant_id=1, name="only-once")
    harness.drain()
    # The same message again, as RabbitMQ redelivers it after a lost acknowledgement.
    publish_now(harness.broker, message)
    harness.drain()

    assert harness.tenant_names() == ["acme", "only-once"]
    assert harness.job(message.message_id).status == "succeeded"


def test_a_late_copy_of_a_succeeded_job_leaves_no_dead_letter(harness: Harness) -> None:
    # Given a job that succeeded, although its worker saw the commit fail (the database
    # went down as it committed) and had its failure retried, past the last attempt
    def once(tenant_id: int, name: str) -> None:
        create_tenant(current_session(), name)

    actor = declare(harness, "once_more", once)
    message = actor.send(tenant_id=1, name="committed")
    harness.drain()
    late = message.copy(options={**message.options, "retries": 5})

    # When that copy comes back only to have its failure recorded
    publish_now(harness.broker, late)
    harness.drain()

    # Then the record stays succeeded, and no dead letter says otherwise
    assert harness.job(message.message_id).status == "succeeded"
    with harness.sessions() as session:
        assert session.get(DeadLetter, message.message_id) is None
    assert harness.tenant_names() == ["acme", "committed"]


def test_sends_are_held_until_commit_and_dropped_on_rollback(harness: Harness) -> None:
    def child(tenant_id: int, name: str) -> None:
        create_tenant(current_session(), name)

    child_actor = declare(harness, "child", child)

    def parent(tenant_id: int, fail: bool) -> None:
        child_actor.send(tenant_id=tenant_id, name=f"child-of-{'failed' if fail else 'ok'}")
        if fail:
            raise PermanentError("parent failed")

    parent_actor = declare(harness, "parent", parent)
    parent_actor.send(tenant_id=1, fail=True)
    parent_actor.send(tenant_id=1, fail=False)
    harness.drain()

    assert harness.tenant_names() == ["acme", "child-of-ok"]


def test_unknown_tenant_is_dead_lettered_with_its_reason(harness: Harness) -> None:
    def noop(tenant_id: int) -> None:
        return None

    actor = declare(harness, "noop", noop)
    harness.broker.declare_queue(harness.settings.tenant_queue(99))
    # Published without send(), which would refuse it (as a message from before the check).
    message = actor.message(tenant_id=99)
    publish_now(harness.broker, message)
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.tenant_id) == ("dead", 99)
    assert "tenant 99 does not exist" in (job.error or "")


def test_message_on_another_tenants_queue_is_refused(harness: Harness) -> None:
    def noop(tenant_id: int) -> None:
        return None

    actor = declare(harness, "noop2", noop)
    crafted = actor.message(tenant_id=2)
    crafted = replace(crafted, queue_name=harness.settings.tenant_queue(1))
    publish_now(harness.broker, crafted)
    harness.drain()

    job = harness.job(crafted.message_id)
    assert job.status == "dead"
    assert "arrived on queue" in (job.error or "")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({}, "needs tenant_id"),
        ({"tenant_id": "7"}, "needs tenant_id"),
        ({"tenant_id": True}, "needs tenant_id"),
        ({"tenant_id": 0}, "needs tenant_id"),
    ],
)
def test_send_without_a_valid_tenant_id_is_refused(
    harness: Harness, kwargs: dict[str, Any], problem: str
) -> None:
    actor = declare(harness, f"routed-{len(kwargs)}-{problem[:3]}-{id(kwargs)}", lambda **kw: None)
    with pytest.raises(InvalidArguments, match=problem):
        actor.send(**kwargs)


def test_positional_arguments_are_refused(harness: Harness) -> None:
    actor = declare(harness, "kwonly", lambda tenant_id: None)
    with pytest.raises(InvalidArguments, match="keyword arguments only"):
        actor.send(1)


def test_worker_refuses_to_start_when_migrations_are_behind(tmp_path: Path) -> None:
    settings = Settings(broker_url="stub://", database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    broker = build_broker(settings)
    worker = Worker(broker, worker_threads=1)
    with pytest.raises(SystemExit):
        worker.start()


def test_a_retry_logs_one_warning_line_and_the_last_failure_its_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def always_down(tenant_id: int) -> None:
        raise TransientError("still down")

    actor = declare(harness, "logged", always_down)
    with caplog.at_level("WARNING", logger="RetryPolicy"):
        actor.send(tenant_id=1)
        harness.drain()

    records = [r for r in caplog.records if r.name == "RetryPolicy"]
    warnings = [r for r in records if r.levelname == "WARNING"]
    errors = [r for r in records if r.levelname == "ERROR"]
    assert len(warnings) == 2 and all(r.exc_info is None for r in warnings)
    assert all("\n" not in r.getMessage() for r in warnings)
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "max_attempts_exceeded" in errors[0].getMessage()


def test_a_stale_scheduler_tick_is_recorded_as_skipped(harness: Harness) -> None:
    from periodiq import cron

    ran: list[int] = []
    actor = declare(
        harness, "ticker", lambda: ran.append(1), tenant_scoped=False, periodic=cron("* * * * *")
    )
    # periodiq drops a tick older than its skip delay (30 s) before it runs
    stale = actor.send_with_options(scheduled_at="2020-01-01T00:00:00+00:00")
    harness.drain()

    job = harness.job(stale.message_id)
    assert ran == []
    assert (job.status, job.error) == ("skipped", "skipped before it ran")
