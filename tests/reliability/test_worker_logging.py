"""A worker's logging never holds up its jobs, and TASKYARD_LOG_LEVEL applies to its processes.

Dramatiq's main process starts reading a worker's pipe only once every worker
has booted (or its --worker-fork-timeout has passed).  A worker that logs more
than the pipe holds before then (its actors' lines, the outcome of each job it
started already) must neither stall its jobs nor its boot: its lines wait in
memory, up to a bound, and what does not fit is dropped and counted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.reliability.log_actors import CHATTER, chatty
from tests.support import WORKER_READY, WorkerProcess, wait_for, worker_env

LOG_MODULE = "tests.reliability.log_actors"
# More than a worker process holds for its writer (metrics_logging.CAPACITY): the rest
# is dropped and counted.  Logged at import, while the main process is not reading.
BOOT_LINES = 12_000
# Queued before the worker starts: their lines are logged while it boots, too.
JOBS, JOB_LINES = 20, 300
# A worker held on a full pipe is ready only after Dramatiq's fork timeout (30 s).
READY_WITHIN = 10.0


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """A tenant, a queue prefix and a producer of this scenario's own (kill_support)."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        made.producer.declare_actor(chatty)
        yield made


def send_chatty(rig: Rig, key: str, lines: int) -> None:
    """Send one `chatty` job to the rig's tenant (through the outbox, as a producer does)."""
    message = chatty.message_with_options(
        kwargs={"tenant_id": rig.tenant_id, "key": key, "lines": lines}
    ).copy(queue_name=rig.queue)
    rig.outbox.send(rig.producer, message, None)
    rig.sent.append(message.message_id)


def start_worker(rig: Rig, name: str, **env: str) -> WorkerProcess:
    """A worker of the rig's tenant that loads the chatty actor; not waited for."""
    full_env = worker_env(
        DATABASE_URL=rig.database_url,
        TASKYARD_QUEUE_PREFIX=rig.prefix,
        TASKYARD_TENANTS=str(rig.tenant_id),
        TASKYARD_METRICS_PORT="0",
        **env,
    )
    worker = WorkerProcess(rig.tmp_path / f"{name}.log", full_env, modules=[LOG_MODULE])
    rig.workers.append(worker)
    return worker


def test_a_worker_logging_more_than_its_pipe_holds_before_it_is_read_runs_jobs_promptly(
    rig: Rig,
) -> None:
    # Given a backlog of jobs that log a lot, queued before the worker starts
    for n in range(JOBS):
        send_chatty(rig, f"job{n}", JOB_LINES)

    # When a worker starts that logs more than its pipe holds before the main process reads it
    started = time.monotonic()
    worker = start_worker(rig, "chatty", REL_BOOT_LINES=str(BOOT_LINES))

    # Then it is ready, and has run every job, within seconds (not after the fork timeout)
    wait_for(lambda: WORKER_READY in worker.log(), READY_WITHIN, "the worker's ready line")
    wait_for(rig.all_succeeded, READY_WITHIN - (time.monotonic() - started), "every job")
    assert worker.stop() == 0

    # And every line it logged was either written or counted as dropped, in one line
    log = worker.log()
    written = len(re.findall(rf"\b{CHATTER} (?:boot|job) ", log))
    dropped = [int(n) for n in re.findall(r"Dropped (\d+) log line\(s\)", log)]
    assert dropped and sum(dropped) > 0
    assert written + sum(dropped) >= BOOT_LINES + JOBS * JOB_LINES
    assert all(f"chatty job job{n} done" in log for n in range(JOBS))


def test_taskyard_log_level_warning_silences_the_info_lines_of_a_worker(rig: Rig) -> None:
    # Given a worker at TASKYARD_LOG_LEVEL=warning whose module logs INFO lines as it loads
    worker = start_worker(rig, "quiet", TASKYARD_LOG_LEVEL="warning", REL_BOOT_LINES="5")

    # When it runs a job that logs INFO lines and a WARNING
    send_chatty(rig, "quiet", 5)
    wait_for(rig.all_succeeded, 30, "the job")
    assert worker.stop() == 0

    # Then its WARNING is written, and no INFO line of the command's Taskyard processes
    # (the worker, the metrics fork); Dramatiq's main process runs no Taskyard code
    log = worker.log()
    assert "chatty job quiet done" in log
    ours = [line for line in log.splitlines() if "[dramatiq.MainProcess]" not in line]
    assert [line for line in ours if "[INFO]" in line] == []
    assert CHATTER not in log
