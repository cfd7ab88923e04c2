"""The scheduler's entry point: `periodiq schedules` sends Taskyard's periodic actors.

The periodic actors live in `actors/` (every worker must know them to run
them); this module installs the broker, lists them for periodiq, and serves
the scheduler's probes (`middleware/scheduler_probe.py`).
"""

from __future__ import annotations

import brokers  # (installs the broker periodiq reads)
from actors.maintenance import JOB_RETENTION_CRON, purge_job_records
from actors.schedules import SCHEDULER_TICK_CRON, scheduler_tick
from middleware import scheduler_probe

PERIODIC_ACTORS = (scheduler_tick, purge_job_records)

# /healthz and /readyz of this scheduler process (0: not served).
if brokers.settings.scheduler_probe_port:
    scheduler_probe.serve(brokers.settings.metrics_host, brokers.settings.scheduler_probe_port)

__all__ = [
    "JOB_RETENTION_CRON",
    "PERIODIC_ACTORS",
    "SCHEDULER_TICK_CRON",
    "purge_job_records",
    "scheduler_tick",
]
