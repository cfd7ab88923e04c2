"""The operator's command line, `taskyard`: one module per command group."""

from __future__ import annotations

from cli import (  # noqa: F401  (each module adds its commands to `main`)
    dead_letters,
    demo,
    ingest,
    integrations,
    jobs,
    locker,
    migrate,
    schedules,
    send,
    tenants,
    workers,
)
from cli.common import EXIT_FAILED, EXIT_UNREACHABLE, describe_error, main

__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "describe_error", "main"]
