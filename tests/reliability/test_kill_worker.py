"""Scenario 1: a worker SIGKILLed at three moments of a job; another finishes, each effect once.

The held job's effect row and job record commit in one transaction, so:
killed while it runs or before its commit, nothing of it is kept and the next
worker runs it; killed after its commit, before the ack, RabbitMQ redelivers it
and the next worker finds its record succeeded and skips it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from settings import Settings
from tests.reliability.kill_support import COMMIT_LOCK_KEY, Rig, open_rig
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

# Ordinary jobs sent around the held one, so the killed worker has others in hand.
OTHERS = 30
# Long enough that some of them are still in the killed worker's hands.
OTHER_SECONDS = 0.3


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queues, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def commit_waiting(rig: Rig) -> bool:
    """Whether a backend waits for the commit-time advisory lock."""
    with rig.engine.connect() as conn:
        waiting = conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND objid = :key AND NOT granted"
            ),
            {"key": COMMIT_LOCK_KEY},
        )
    return bool(waiting)


@pytest.mark.parametrize("moment", ["run", "commit", "ack"])
def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(rig: Rig, moment: str) -> None:
    # Given a worker busy with ordinary jobs and one held at `moment`
    lock = rig.engine.connect()
    if moment == "commit":
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": COMMIT_LOCK_KEY})
    try:
        first = rig.start_worker("first")
        for index in range(OTHERS // 2):
            rig.send(f"before-{index}", seconds=OTHER_SECONDS)
        held = rig.send("held", pause=moment)
        for index in range(OTHERS // 2):
            rig.send(f"after-{index}", seconds=OTHER_SECONDS)
        if moment == "commit":
            wait_for(lambda: commit_waiting(rig), timeout=20, what="the commit to wait")
        else:
            wait_for(lambda: rig.marker("held", moment), timeout=20, what=f"the {moment} hold")

        # When it is killed there
        first.kill()
        # Then its job record is committed only when the commit was done
        committed = rig.job(held.message_id).status == "succeeded"
        assert committed == (moment == "ack")
        # (and the others were not all done: the second worker has more than the held one)
        assert rig.statuses().get("succeeded", 0) < OTHERS
    finally:
        # (The killed worker's backend still waits for the lock: released, it commits.
        # A pooled connection keeps session locks, so this one is discarded.)
        lock.invalidate()
        lock.close()

    # And a second worker finishes everything, each effect exactly once
    second = rig.start_worker("second")
    wait_for(rig.all_succeeded, timeout=30, what="every job to succeed")
    rig.assert_exactly_once()
    skipped = f"{held.message_id} already finished; skipped" in second.log()
    # Killed before its commit, its first run left nothing and the second worker ran it
    # (a redelivery is the same attempt).  Killed at or after the commit, it had
    # committed (PostgreSQL completes a COMMIT it has received even when the client is
    # gone), so the redelivered copy was recognised as done and skipped.
    assert skipped == (moment != "run")
    assert rig.job(held.message_id).attempts == 1
