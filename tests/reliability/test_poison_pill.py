"""A message whose processing kills its worker: dead-lettered `worker_crashed` after its attempts.

Its actor notes each run in a file, then SIGKILLs its own process, as the OOM
killer or a crash in native code would. Dramatiq's main process then stops the
whole worker, and RabbitMQ redelivers what it held; each redelivered start is
counted in PostgreSQL before the actor runs, so the copy that would pass the
attempts is refused instead of killing one more worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import DeadLetter
from settings import Settings
from tests.reliability.kill_actors import kill_self
from tests.reliability.kill_support import KILL_MODULE, Rig, open_rig
from tests.support import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration]

# Taskyard's default attempts (TASKYARD_MAX_ATTEMPTS), which the workers here keep.
ATTEMPTS = 3


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queue, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def run_count(runs: Path) -> int:
    """How many times the pill has run (a line per run)."""
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def spawn(rig: Rig, name: str) -> WorkerProcess:
    """A worker of the rig, one thread, not waited for: the pill may kill it before it says so."""
    env = worker_env(
        DATABASE_URL=rig.database_url,
        TASKYARD_QUEUE_PREFIX=rig.prefix,
        TASKYARD_TENANTS=str(rig.tenant_id),
        TASKYARD_METRICS_PORT="0",
    )
    # A pill can kill the worker before it says it is ready; Dramatiq's main process then
    # waits out its fork timeout (30 s by default) before it exits: 5 s is plenty here.
    worker = WorkerProcess(
        rig.tmp_path / f"{name}.log",
        env,
        threads=1,
        modules=[KILL_MODULE],
        options=["--worker-fork-timeout", "5000"],
    )
    rig.workers.append(worker)
    return worker


def test_a_message_that_kills_its_worker_is_dead_lettered_after_its_attempts(rig: Rig) -> None:
    # Given a poison pill on the tenant's queue, and an ordinary job behind it
    rig.producer.declare_actor(kill_self)
    key = f"pill-{uuid.uuid4().hex[:8]}"
    pill = kill_self.message_with_options(
        kwargs={"tenant_id": rig.tenant_id, "signal_dir": str(rig.signal_dir), "key": key}
    ).copy(queue_name=rig.queue)
    rig.outbox.send(rig.producer, pill, None)
    after = rig.send("after-the-pill")
    runs = rig.signal_dir / f"{key}.runs"

    def dead_letter() -> DeadLetter | None:
        with Session(rig.engine) as session:
            return session.scalars(
                select(DeadLetter).where(DeadLetter.message_id == pill.message_id)
            ).first()

    # When workers are started, one after the other, as each one dies
    started = 0
    while dead_letter() is None and started < ATTEMPTS + 2:
        ran_before = run_count(runs)
        worker = spawn(rig, f"worker-{started}")
        started += 1

        def died_or_done(worker: WorkerProcess = worker, ran_before: int = ran_before) -> bool:
            ran = run_count(runs) > ran_before
            return worker.proc.poll() is not None or dead_letter() is not None or ran

        wait_for(died_or_done, timeout=90, what="the worker to die or the pill to be dead-lettered")
        if run_count(runs) > ran_before and worker.proc.poll() is None:
            # The pill killed the worker's child. Dramatiq's main process notices and
            # exits, unless the kill landed while the child was saying it is ready: the
            # main process then waits on that multiprocessing Event's lock for ever.
            # Do what a supervisor does with a worker whose child is gone.
            time.sleep(1)
            worker.kill()

    # Then the pill is dead-lettered as worker_crashed, having run as often as its attempts
    letter = dead_letter()
    assert letter is not None, f"{started} workers started; runs: {runs.read_text()!r}"
    assert letter.reason == "worker_crashed" and letter.tenant_id == rig.tenant_id
    assert "worker died" in (letter.error or "")
    assert len(runs.read_text().splitlines()) == ATTEMPTS
    assert rig.job(pill.message_id).status == "dead"
    # And the job behind it runs, on the worker that outlived the pill
    wait_for(lambda: rig.job(after.message_id).status == "succeeded", what="the job after")
