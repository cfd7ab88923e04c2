"""The bench's job bodies as Taskyard actors, run by the real worker with everything on.

Declared on Taskyard's broker by name: a peer imported first (bare Dramatiq)
may have installed its own broker as the global one.

Run as `dramatiq actors bench.taskyard_actors`: tenant routing, job records, the
DB session, the retry policy and metrics all apply, as for any Taskyard actor.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

import actors  # noqa: F401  (first: installs Taskyard's broker and its middleware)
import brokers
from actors.base import taskyard_actor
from bench import bodies
from middleware import current_session


class TenantArgs(Schema):
    """Arguments of the no-op and DB-writing bench actors."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class ProbeArgs(TenantArgs):
    """Arguments of the latency probe."""

    sent_at = fields.Float(required=True)


@taskyard_actor(name="bench_noop", schema=TenantArgs, broker=brokers.broker)
def bench_noop(tenant_id: int, **_: Any) -> None:
    """The no-op job."""
    bodies.noop()


@taskyard_actor(name="bench_write_row", schema=TenantArgs, broker=brokers.broker)
def bench_write_row(tenant_id: int, **_: Any) -> None:
    """Insert one row through the job's own transaction (committed with its job record)."""
    bodies.write_row(current_session(), "taskyard", commit=False)


@taskyard_actor(name="bench_probe", schema=ProbeArgs, broker=brokers.broker)
def bench_probe(tenant_id: int, sent_at: float, **_: Any) -> None:
    """The latency probe."""
    bodies.probe(sent_at)
