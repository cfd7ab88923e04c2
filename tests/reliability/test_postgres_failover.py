"""A PostgreSQL standby promoted after its primary stops: workers and producers go on, unrestarted.

A private primary and a streaming standby of it (`pg_basebackup -R`), with
synchronous replication (`synchronous_standby_names = '*'`: a commit returns
once the standby has it).  Worker and producer use one libpq multi-host URL
with `target_session_attrs=read-write`, which connects to whichever host
accepts writes.  Under a steady stream of DB-writing jobs the primary is
stopped and the standby promoted: every send that returned succeeds exactly
once, and no job recorded as succeeded before the failover is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from db.migrate import upgrade_to_head
from db.models import Job
from settings import Settings
from tests.reliability.kill_support import Rig
from tests.reliability.pg_cluster import PgCluster
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

SEND_INTERVAL_SECONDS = 0.05
RETRIES = {
    "TASKYARD_MAX_ATTEMPTS": "20",
    "TASKYARD_MIN_BACKOFF_MS": "250",
    "TASKYARD_MAX_BACKOFF_MS": "2000",
}


@pytest.fixture
def pair(start_pg_cluster: Callable[[], PgCluster]) -> Iterator[tuple[PgCluster, PgCluster]]:
    """A migrated primary and its synchronous streaming standby, both running."""
    primary = start_pg_cluster()
    upgrade_to_head(primary.url())
    standby = PgCluster()
    try:
        standby.init_standby_of(primary)
        standby.start()
        admin = create_engine(primary.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("ALTER SYSTEM SET synchronous_standby_names = '*'"))
            conn.execute(text("SELECT pg_reload_conf()"))

            def synchronous() -> bool:
                states = conn.scalars(text("SELECT sync_state FROM pg_stat_replication")).all()
                return states == ["sync"]

            wait_for(synchronous, timeout=30, what="the standby streaming synchronously")
        admin.dispose()
        yield primary, standby
    finally:
        standby.destroy()


def _succeeded(url: str, ids: list[str]) -> set[str]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            query = select(Job.message_id).where(Job.message_id.in_(ids), Job.status == "succeeded")
            return set(session.scalars(query))
    finally:
        engine.dispose()


def test_a_promoted_standby_takes_over_without_restarting_anyone(
    pair: tuple[PgCluster, PgCluster], settings: Settings, tmp_path: Path
) -> None:
    primary, standby = pair
    hosts = f"host=127.0.0.1:{primary.port}&host=127.0.0.1:{standby.port}"
    url = f"postgresql+psycopg2://postgres@/taskyard_rel?{hosts}&target_session_attrs=read-write"
    rig = Rig(url, settings, tmp_path)
    raised: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.wait(SEND_INTERVAL_SECONDS):
            n += 1
            try:
                rig.send(f"f{n}")
            except Exception as exc:  # a send while no host accepts writes raises: counted
                raised.append(f"{type(exc).__name__}: {exc}")

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    try:
        # Given a worker and a producer on the multi-host URL, jobs flowing
        worker = rig.start_worker("failover", extra_env=RETRIES)
        producer.start()
        wait_for(lambda: len(rig.sent) >= 40, timeout=30, what="jobs flowing")
        wait_for(lambda: rig.statuses().get("succeeded", 0) >= 20, what="jobs succeeding")
        before = _succeeded(primary.url(), list(rig.sent))

        # When the primary stops and the standby is promoted
        primary.stop()
        stopped = time.monotonic()
        standby.promote()
        promoted = time.monotonic()
        rig.engine.dispose()  # (the test's own pool still points at the stopped primary)
        sent_at_promotion = len(rig.sent)
        wait_for(lambda: len(rig.sent) >= sent_at_promotion + 20, timeout=30, what="sends resuming")
        resumed = time.monotonic() - promoted
        time.sleep(1.0)
        stop.set()
        producer.join(10)

        # Then every send that returned succeeds, exactly once, on the new primary
        wait_for(rig.all_succeeded, timeout=60, what="every sent job to succeed")
        finished = time.monotonic() - promoted
        rig.assert_exactly_once()
        # And nothing recorded as succeeded before the failover was lost
        assert before <= _succeeded(standby.url(), list(before))
        assert worker.proc.poll() is None, "the worker exited"
        print(
            f"\nfailover: primary down {promoted - stopped:.1f}s before promotion; sends "
            f"resumed {resumed:.1f}s after it, all {len(rig.sent)} sent jobs succeeded "
            f"{finished:.1f}s after it; {len(raised)} sends raised; "
            f"{len(before)} succeeded before the failover, none lost; duplicates 0"
        )
        assert all(error.startswith("SendFailed") for error in raised), raised
    finally:
        stop.set()
        rig.close()
