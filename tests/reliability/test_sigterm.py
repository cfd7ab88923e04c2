"""Scenario 2: SIGTERM during a busy run; in-flight jobs finish or come back, nothing is lost.

Dramatiq's worker, on SIGTERM, stops taking messages, waits up to
`--worker-shutdown-timeout` (10 minutes by default) for its threads' jobs,
then closes its connection: RabbitMQ puts back whatever was not acknowledged.
A job still running when the time is up dies with the process, and its
transaction with it, so the next worker runs it from the start.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

SHORT_JOBS = 200
LONG_JOBS = 6
LONG_SECONDS = 2.0
SHUTDOWN_TIMEOUT_MS = 4_000
# Dramatiq waits the timeout for its worker threads, then closes its connections.
EXIT_BOUND_SECONDS = SHUTDOWN_TIMEOUT_MS / 1000 + 6


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queues, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def test_sigterm_under_load_exits_in_time_and_loses_nothing(rig: Rig) -> None:
    # Given a busy worker: short jobs, 2-second jobs, and one that outlasts the shutdown
    busy = rig.start_worker(
        "busy", threads=8, options=["--worker-shutdown-timeout", str(SHUTDOWN_TIMEOUT_MS)]
    )
    rig.send("outlasts", pause="run")
    for index in range(LONG_JOBS):
        rig.send(f"long-{index}", seconds=LONG_SECONDS)
    for index in range(SHORT_JOBS):
        rig.send(f"short-{index}", seconds=0.02)
    wait_for(lambda: rig.marker("outlasts", "run"), timeout=20, what="the long hold")
    wait_for(lambda: rig.statuses().get("succeeded", 0) >= 10, timeout=20, what="some jobs done")

    # When it gets SIGTERM mid-run
    before = rig.statuses()
    signalled = time.monotonic()
    busy.proc.send_signal(signal.SIGTERM)
    try:
        code = busy.proc.wait(EXIT_BOUND_SECONDS + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {EXIT_BOUND_SECONDS + 10}s after SIGTERM")
    took = time.monotonic() - signalled
    after = rig.statuses()
    print(f"before SIGTERM {before}; after exit {after}; exit {code} in {took:.1f}s")

    # Then it exits within its shutdown timeout (and a margin), and work was left over
    assert took < EXIT_BOUND_SECONDS, took
    assert after.get("succeeded", 0) < len(rig.sent)
    assert "Shutting down..." in busy.log()

    # And a second worker finishes the rest, each effect exactly once
    rig.start_worker("second", threads=8)
    wait_for(rig.all_succeeded, timeout=40, what="every job to succeed")
    rig.assert_exactly_once()
