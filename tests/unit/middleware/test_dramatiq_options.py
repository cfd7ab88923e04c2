"""Dramatiq's retry and age options on Taskyard's broker: honoured with its records, or refused."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import AgeLimit, Middleware, ShutdownNotifications
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.base import TaskyardActor, taskyard_actor
from db.models import DeadLetter, Job
from middleware.actor_options import OptionRefused
from middleware.age_limit import JobAgeLimit
from middleware.db_session import find_middleware
from settings import Settings
from tests.unit.middleware.stub_world import drain, stub_world
from transport.rabbitmq import Refusal, screen


@dataclass
class World:
    """A stub broker wired like production, its worker, and the database."""

    broker: StubBroker
    worker: Worker
    sessions: sessionmaker[Session]
    settings: Settings

    def declare(self, name: str, fn: Any, **options: Any) -> TaskyardActor:
        """Declare a tenant-scoped test actor on the world's broker."""
        actor = taskyard_actor(name=name, broker=self.broker, **options)(fn)
        self.broker.declare_queue(self.settings.tenant_queue(1))
        return actor

    def job(self, message_id: str) -> Job:
        """The job record of one message."""
        with self.sessions() as session:
            job = session.get(Job, message_id)
            assert job is not None, f"no job record for {message_id}"
            return job

    def dead_letter(self, message_id: str) -> DeadLetter | None:
        """The dead letter of one message, if any."""
        with self.sessions() as session:
            return session.scalar(select(DeadLetter).where(DeadLetter.message_id == message_id))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with stub_world(tmp_path) as (broker, worker, sessions, settings):
        yield World(broker=broker, worker=worker, sessions=sessions, settings=settings)


def failing(runs: list[int], error: type[Exception] = RuntimeError) -> Any:
    """An actor body that counts its runs, then raises `error`."""

    def fail(tenant_id: int) -> None:
        runs.append(tenant_id)
        raise error("boom")

    return fail


# --- declaration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 100}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"max_retries": 2.0}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": None}, "max_retries=99"),
        ({"max_retries": 2, "max_attempts": 3}, "give one"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": -5}, "max_age"),
        ({"max_age": 10**13}, "max_age"),
        ({"max_age": "60000"}, "max_age"),
        ({"throws": 1}, "throws must be an exception class"),
        ({"throws": (ValueError, "KeyError")}, "throws must be an exception class"),
        ({"throws": ()}, "throws must be an exception class"),
        ({"retry_when": 3}, "retry_when must be a function"),
        ({"on_retry_exhausted": 7}, "on_retry_exhausted must be an actor's name"),
        ({"notify_shutdown": "yes"}, "notify_shutdown"),
    ],
)
def test_a_bad_option_is_refused_at_declaration_naming_what_is_wrong(
    world: World, options: dict[str, Any], words: str
) -> None:
    for declare in (
        lambda: taskyard_actor(name="bad", broker=world.broker, **options)(lambda tenant_id: None),
        lambda: dramatiq.actor(actor_name="bad_plain", broker=world.broker, **options)(
            lambda: None
        ),
    ):
        with pytest.raises(OptionRefused, match=words) as refused:
            declare()
        assert isinstance(refused.value, ValueError)
    assert "bad" not in world.broker.actors and "bad_plain" not in world.broker.actors


def test_dramatiq_options_are_kept_on_the_actor(world: World) -> None:
    # Dramatiq's own: test_actors_can_be_assigned_predefined_options.
    @dramatiq.actor(broker=world.broker, max_retries=32, max_age=1_000, notify_shutdown=True)
    def add(x: int, y: int) -> int:
        return x + y

    assert add.options == {"max_retries": 32, "max_age": 1_000, "notify_shutdown": True}


def test_middleware_is_placed_before_and_after_age_limit_as_in_dramatiq(world: World) -> None:
    first, second = Middleware(), Middleware()
    world.broker.add_middleware(first, before=AgeLimit)
    world.broker.add_middleware(second, after=AgeLimit)

    assert world.broker.middleware[0] is first
    assert isinstance(world.broker.middleware[1], JobAgeLimit)
    assert world.broker.middleware[2] is second


# --- sending -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 10**6}, "max_retries"),
        ({"max_age": "soon"}, "max_age"),
        ({"max_attempts": 3, "max_retries": 2}, "give one"),
        ({"throws": (ValueError,)}, "set it on the actor"),
        ({"retry_when": lambda retries, exc: False}, "set it on the actor"),
        ({"on_retry_exhausted": "other"}, "set it on the actor"),
        ({"notify_shutdown": 1}, "notify_shutdown"),
    ],
)
def test_a_bad_message_option_is_refused_at_send_and_nothing_is_recorded(
    world: World, options: dict[str, Any], words: str
) -> None:
    actor = world.declare("plain_job", lambda tenant_id: None)

    with pytest.raises(OptionRefused, match=words):
        actor.send_with_options(kwargs={"tenant_id": 1}, **options)

    with world.sessions() as session:
        assert session.scalar(select(Job).where(Job.actor == "plain_job")) is None


def wire_body(options: dict[str, Any]) -> bytes:
    """A message body for tenant 1's queue carrying `options`."""
    message = dramatiq.Message(
        queue_name="tenant.1", actor_name="job", args=(), kwargs={"tenant_id": 1}, options=options
    )
    return json.dumps(message.asdict()).encode()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_retries": 100}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": 10**13}, "max_age"),
        ({"notify_shutdown": "yes"}, "notify_shutdown"),
        ({"max_retries": 1, "max_attempts": 2}, "give one"),
        ({"throws": ["ValueError"]}, "not one Taskyard takes"),
        ({"retry_when": "x"}, "not one Taskyard takes"),
        ({"on_retry_exhausted": "delete_tenant"}, "not one Taskyard takes"),
    ],
)
def test_a_bad_option_over_the_wire_is_refused_before_it_becomes_a_job(
    options: dict[str, Any], words: str
) -> None:
    verdict = screen(wire_body(options), queue_name="tenant.1", max_bytes=10_000)
    assert isinstance(verdict, Refusal) and verdict.reason == "invalid_options"
    assert words in verdict.error


def test_dramatiqs_options_in_range_are_taken_over_the_wire() -> None:
    options = {"max_retries": 99, "max_age": 60_000, "notify_shutdown": True}
    verdict = screen(wire_body(options), queue_name="tenant.1", max_bytes=10_000)
    assert not isinstance(verdict, Refusal) and verdict.options == options


# --- retries -------------------------------------------------------------------------------


def test_max_retries_limits_the_runs_to_one_more_than_it_says(world: World) -> None:
    runs: list[int] = []
    actor = world.declare("fails_twice", failing(runs), max_retries=1)

    message = actor.send(tenant_id=1)
    drain(world.broker, world.worker)

    job = world.job(message.message_id)
    assert (len(runs), job.status, job.attempts) == (2, "dead", 2)
    dead = world.dead_letter(message.message_id)
    assert dead is not None and dead.reason == "max_attempts_exceeded"


def test_a_message_max_retries_overrides_its_actors_limit(world: World) -> None:
    runs: list[int] = []
    actor = world.declare("fails_often", failing(runs), max_attempts=5)

    message = actor.send_with_options(kwargs={"tenant_id": 1}, max_retries=0)
    drain(world.broker, world.worker)

    assert len(runs) == 1
    assert world.job(message.message_id).status == "dead"


def test_an_exception_the_actor_throws_is_dead_lettered_without_retry_at_info(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an actor that throws ValueError and is allowed 5 attempts
    runs: list[int] = []
    actor = world.declare(
        "throws_value", failing(runs, ValueError), max_attempts=5, throws=ValueError
    )

    # When it raises ValueError
    with caplog.at_level(logging.INFO):
        message = actor.send(tenant_id=1)
        drain(world.broker, world.worker)

    # Then it ran once, is dead with reason `throws`, said once at INFO
    job = world.job(message.message_id)
    assert (len(runs), job.status) == (1, "dead")
    assert "raised an exception its actor throws; not retried" in (job.error or "")
    dead = world.dead_letter(message.message_id)
    assert dead is not None and dead.reason == "throws" and dead.traceback
    about = [r for r in caplog.records if message.message_id in r.getMessage()]
    assert [r.levelname for r in about if r.name == "RetryPolicy"] == ["INFO"]
    assert not [r for r in about if r.levelno >= logging.ERROR]


def test_an_exception_the_actor_does_not_throw_is_retried(world: World) -> None:
    runs: list[int] = []
    actor = world.declare("throws_other", failing(runs, KeyError), throws=(ValueError,))

    message = actor.send(tenant_id=1)
    drain(world.broker, world.worker)

    assert len(runs) == 3  # TASKYARD_MAX_ATTEMPTS in the stub world
    assert world.job(message.message_id).status == "dead"


def test_the_worker_does_not_log_a_failure_the_policy_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    actor = world.declare("fails_once", failing([]), max_attempts=1)

    with caplog.at_level(logging.INFO):
        actor.send(tenant_id=1)
        drain(world.broker, world.worker)

    worker_lines = [r for r in caplog.records if r.name == "dramatiq.worker.WorkerThread"]
    assert not [r for r in worker_lines if "Failed to process message" in r.getMessage()]
    assert [r.levelname for r in caplog.records if "gave up" in r.getMessage()] == ["ERROR"]


def test_retry_when_decides_with_the_retries_so_far(world: World) -> None:
    runs: list[int] = []
    asked: list[tuple[int, str]] = []

    def retry_when(retries: int, exc: BaseException) -> bool:
        asked.append((retries, type(exc).__name__))
        return retries < 3

    actor = world.declare("asks", failing(runs), retry_when=retry_when)

    message = actor.send(tenant_id=1)
    drain(world.broker, world.worker, rounds=6)

    # Not the default 3 attempts: retry_when replaces the limit.
    assert len(runs) == 4
    assert asked == [(retries, "RuntimeError") for retries in range(4)]
    job = world.job(message.message_id)
    assert job.status == "dead" and "retry_when declined" in (job.error or "")


def test_on_retry_exhausted_is_sent_the_failed_message_once_retries_run_out(world: World) -> None:
    received: list[dict[str, Any]] = []

    def exhausted(tenant_id: int, message: dict[str, Any], retries: int, max_retries: int) -> None:
        received.append({"tenant_id": tenant_id, "retries": retries, "max_retries": max_retries})
        received.append(message)

    world.declare("on_exhausted", exhausted)
    actor = world.declare("runs_out", failing([]), max_retries=1, on_retry_exhausted="on_exhausted")

    message = actor.send(tenant_id=1)
    drain(world.broker, world.worker, rounds=5)

    assert received[0] == {"tenant_id": 1, "retries": 1, "max_retries": 1}
    assert received[1]["message_id"] == message.message_id


def test_on_retry_exhausted_is_not_sent_for_an_exception_the_actor_throws(world: World) -> None:
    received: list[int] = []
    world.declare("on_thrown", lambda tenant_id, message, retries, max_retries: received.append(1))
    actor = world.declare(
        "thrown", failing([], ValueError), throws=ValueError, on_retry_exhausted="on_thrown"
    )

    actor.send(tenant_id=1)
    drain(world.broker, world.worker)

    assert received == []


# --- max_age -------------------------------------------------------------------------------


def age_limit(world: World) -> JobAgeLimit:
    found = find_middleware(world.broker, JobAgeLimit)
    assert found is not None
    return found


@pytest.mark.parametrize("where", ["actor", "message"])
def test_a_message_older_than_its_max_age_is_recorded_expired_and_never_runs(
    world: World, where: str
) -> None:
    # Given a job whose max_age is 1 s, taken by a worker 5 s after it was sent
    runs: list[int] = []
    actor_options = {"max_age": 1_000} if where == "actor" else {}
    actor = world.declare("ages", lambda tenant_id: runs.append(tenant_id), **actor_options)
    age_limit(world).clock = lambda: current_millis() + 5_000

    # When it is sent (with the option on the message, or on its actor)
    options = {"max_age": 1_000} if where == "message" else {}
    message = actor.send_with_options(kwargs={"tenant_id": 1}, **options)
    drain(world.broker, world.worker)

    # Then it never ran, its record is final and expired, and it is kept as a dead letter
    assert runs == []
    job = world.job(message.message_id)
    assert job.status == "expired" and job.finished_at is not None
    assert "over its max_age of 1000 ms" in (job.error or "")
    dead = world.dead_letter(message.message_id)
    assert dead is not None and dead.reason == "expired" and dead.message is not None
    # failed as Dramatiq fails it: nacked to the dead-letter queue
    assert [m.message_id for m in world.broker.dead_letters] == [message.message_id]


def test_a_message_younger_than_its_max_age_runs(world: World) -> None:
    runs: list[int] = []
    actor = world.declare("young", lambda tenant_id: runs.append(tenant_id), max_age=60_000)

    message = actor.send(tenant_id=1)
    drain(world.broker, world.worker)

    assert runs == [1]
    assert world.job(message.message_id).status == "succeeded"


# --- notify_shutdown -----------------------------------------------------------------------


def test_notify_shutdown_interrupts_the_actor_and_the_attempt_is_recorded_for_a_retry(
    world: World,
) -> None:
    started, finished = threading.Event(), threading.Event()

    def long(tenant_id: int) -> None:
        started.set()
        for _ in range(500):
            threading.Event().wait(0.01)
        finished.set()

    actor = world.declare("long", long, notify_shutdown=True, max_attempts=1)
    message = actor.send(tenant_id=1)
    assert started.wait(5)

    notifications = find_middleware(world.broker, ShutdownNotifications)
    assert notifications is not None
    notifications.before_worker_shutdown(world.broker, world.worker)
    world.worker.join()

    assert not finished.is_set()
    job = world.job(message.message_id)
    assert job.status == "dead" and "Shutdown" in (job.error or "")
