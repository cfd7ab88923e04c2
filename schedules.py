"""The scheduler's entry point: `periodiq schedules` sends Taskyard's periodic actors.

The periodic actors live in `actors/` (every worker must know them to run
them); this module installs the broker and lists them for periodiq.
"""

from __future__ import annotations

import brokers  # noqa: F401  (installs the broker periodiq reads)
from actors.maintenance import JOB_RETENTION_CRON, purge_job_records
from actors.schedules import SCHEDULER_TICK_CRON, scheduler_tick

PERIODIC_ACTORS = (scheduler_tick, purge_job_records)

__all__ = [
    "JOB_RETENTION_CRON",
    "PERIODIC_ACTORS",
    "SCHEDULER_TICK_CRON",
    "purge_job_records",
    "scheduler_tick",
]
