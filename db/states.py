"""The states of a job record: plain names, importable without SQLAlchemy (cli/quick.py)."""

from __future__ import annotations

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_RETRYING = "retrying"
JOB_SUCCEEDED = "succeeded"
JOB_DEAD = "dead"
JOB_CANCELLED = "cancelled"
JOB_SKIPPED = "skipped"
# Older than its max_age when a worker took it: never run (middleware/age_limit.py).
JOB_EXPIRED = "expired"
# A job in one of these states never runs again unless an operator requeues it.
JOB_FINAL_STATES = frozenset({JOB_SUCCEEDED, JOB_DEAD, JOB_CANCELLED, JOB_SKIPPED, JOB_EXPIRED})
