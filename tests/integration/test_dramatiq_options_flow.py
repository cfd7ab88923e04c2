"""Dramatiq's retry and age options on the real path: producer → RabbitMQ → worker → PostgreSQL."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors.base import TaskyardActor
from db.models import DeadLetter, Job
from middleware.runtime import runtime_of
from settings import Settings
from tests.integration import option_actors
from tests.support import WorkerProcess, wait_for, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def sent_by(settings: Settings, tmp_path: Path) -> Iterator[dict[str, TaskyardActor]]:
    """The test's actors on a queue prefix of their own, and a worker that serves only it."""
    own = dataclasses.replace(
        settings, queue_prefix=f"{settings.queue_prefix}opt{uuid.uuid4().hex[:8]}."
    )
    broker = brokers.build_broker(own)
    worker = WorkerProcess(
        tmp_path / "worker.log",
        worker_env(TASKYARD_QUEUE_PREFIX=own.queue_prefix),
        modules=["tests.integration.option_actors"],
    )
    try:
        worker.wait_ready()
        yield option_actors.declare(broker)
    finally:
        worker.stop()
        broker.close()
        runtime = runtime_of(broker)
        assert runtime is not None
        runtime.session_factory.kw["bind"].dispose()


def final_job(sessions: sessionmaker[Session], message_id: str) -> Job | None:
    """The record of one message once it is final."""
    with sessions() as session:
        job = session.get(Job, message_id)
        done = ("succeeded", "dead", "expired")
        return job if job is not None and job.status in done else None


def dead_letter(sessions: sessionmaker[Session], message_id: str) -> DeadLetter | None:
    """The dead letter of one message."""
    with sessions() as session:
        return session.scalar(select(DeadLetter).where(DeadLetter.message_id == message_id))


def runs_in(path: Path) -> int:
    """How many times the actor given `path` ran."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_max_retries_limits_the_runs_and_throws_dead_letters_without_a_retry(
    sent_by: dict[str, TaskyardActor],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    # Given an actor with max_retries=1 and one that throws ValueError (5 attempts allowed)
    tenant_id = make_tenant("options")
    retried, thrown = tmp_path / "retried", tmp_path / "thrown"

    # When both fail every time
    first = sent_by["retries"].send(tenant_id=tenant_id, path=str(retried))
    second = sent_by["throws"].send(tenant_id=tenant_id, path=str(thrown))

    # Then the first ran twice and is dead; the second ran once, dead-lettered `throws`
    job = wait_for(lambda: final_job(sessions, first.message_id), what="the retried job")
    assert (job.status, job.attempts, runs_in(retried)) == ("dead", 2, 2)
    job = wait_for(lambda: final_job(sessions, second.message_id), what="the thrown job")
    assert (job.status, job.attempts, runs_in(thrown)) == ("dead", 1, 1)
    kept = dead_letter(sessions, second.message_id)
    assert kept is not None and kept.reason == "throws"


@pytest.mark.parametrize("where", ["actor", "message"])
def test_an_expired_message_is_recorded_expired_and_never_runs(
    sent_by: dict[str, TaskyardActor],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    tmp_path: Path,
    where: str,
) -> None:
    # Given a job whose max_age (500 ms on its actor, 300 ms on the message) passes in its delay
    tenant_id = make_tenant("expiry")
    ran = tmp_path / "ran"
    kwargs = {"tenant_id": tenant_id, "path": str(ran)}
    if where == "actor":
        message = sent_by["aged"].send_with_options(kwargs=kwargs, delay=1_500)
    else:
        message = sent_by["plain"].send_with_options(kwargs=kwargs, delay=1_500, max_age=300)

    # When the worker takes it, 1.5 s after its send
    job = wait_for(lambda: final_job(sessions, message.message_id), what="the expired job")

    # Then its record is expired, it is kept as a dead letter, and it never ran
    assert job.status == "expired" and "max_age" in (job.error or "")
    kept = dead_letter(sessions, message.message_id)
    assert kept is not None and kept.reason == "expired"
    assert runs_in(ran) == 0
