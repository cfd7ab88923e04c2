"""Cancelling a queued job and disabling a tenant reach a running worker process within a second.

Each worker process polls once a second (tenant statuses, cancel requests) and
checks what it learnt before a job's body runs; these tests change the state
from the test's own process and watch a worker process act on it, with an
actor that leaves a file behind if it runs.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Message
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import TENANT_DISABLED, DeadLetter
from services.job_control import cancel_job
from services.tenants import set_tenant_status
from settings import Settings
from tests.reliability.kill_actors import note_run
from tests.reliability.kill_support import Rig, open_rig
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

# The worker's poll (TASKYARD_TENANT_REFRESH_SECONDS, 1 s) and a margin for a busy machine.
KNOWN_WITHIN = 1.0 + 0.5


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queue, producer and a worker."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        made.producer.declare_actor(note_run)
        made.start_worker("state")
        yield made


def _note(rig: Rig, key: str) -> Message[object]:
    message = note_run.message_with_options(
        kwargs={"tenant_id": rig.tenant_id, "signal_dir": str(rig.signal_dir), "key": key}
    ).copy(queue_name=rig.queue)
    return message


def test_a_job_cancelled_while_queued_is_skipped_without_running(rig: Rig) -> None:
    # Given a job that reaches the worker two seconds after its send
    key = f"cancel-{uuid.uuid4().hex[:8]}"
    message = _note(rig, key)
    rig.outbox.send(rig.producer, message, 2_000)

    # When it is cancelled at once, from another process
    with Session(rig.engine) as session, session.begin():
        assert cancel_job(session, message.message_id) == "cancelled"

    # Then the worker skips it without running its body
    time.sleep(2.0 + KNOWN_WITHIN)
    wait_for(lambda: "already finished" in rig.workers[0].log(), what="the skip")
    assert not (rig.signal_dir / f"{key}.runs").exists()
    assert rig.job(message.message_id).status == "cancelled"


def test_a_disabled_tenants_job_is_dead_lettered_without_running(rig: Rig) -> None:
    # Given the tenant disabled from another process, a second and a half ago
    with Session(rig.engine) as session, session.begin():
        set_tenant_status(session, rig.tenant_id, TENANT_DISABLED)
    disabled_at = dt.datetime.now(dt.UTC)
    time.sleep(KNOWN_WITHIN)

    # When one of its jobs arrives (sent around send()'s own checks)
    key = f"disabled-{uuid.uuid4().hex[:8]}"
    message = _note(rig, key)
    rig.outbox.send(rig.producer, message, None)

    # Then it is dead-lettered as tenant_disabled, and its body never ran
    def letter() -> DeadLetter | None:
        with Session(rig.engine) as session:
            return session.scalars(
                select(DeadLetter).where(DeadLetter.message_id == message.message_id)
            ).first()

    found = wait_for(letter, what="the dead letter")
    assert found.reason == "tenant_disabled" and found.created_at >= disabled_at
    assert not (rig.signal_dir / f"{key}.runs").exists()
    assert rig.job(message.message_id).status == "dead"
