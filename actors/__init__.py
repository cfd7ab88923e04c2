"""Taskyard's actors; importing this module installs the broker (`dramatiq actors`)."""

from __future__ import annotations

import brokers  # noqa: F401  (first: actors are declared against the installed broker)
from actors.ingest import ingest_resources, process_resource
from actors.integrations import sync_integration
from actors.locker import reencrypt_locker
from actors.maintenance import purge_job_records
from actors.schedules import scheduler_tick
from actors.tenants import delete_tenant
from actors.webhooks import notify_webhook

__all__ = [
    "delete_tenant",
    "ingest_resources",
    "notify_webhook",
    "process_resource",
    "purge_job_records",
    "reencrypt_locker",
    "scheduler_tick",
    "sync_integration",
]
