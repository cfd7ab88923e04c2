"""Deleting a tenant: every row it owns in batches, its queues, then the tenant itself.

Unlike other services this one commits: each batch is its own short
transaction, so deleting a large tenant never holds long locks or one huge
transaction, and a run killed in the middle keeps what it did.  Running it
again finishes the job (every step is "delete what is left").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    TENANT_DELETING,
    CancelRequest,
    DeadLetter,
    GithubMember,
    GithubRepository,
    Ingest,
    IngestItem,
    Integration,
    Job,
    JobGroupCompletion,
    JobGroupMember,
    LockerEntry,
    OutboxMessage,
    Resource,
    Schedule,
    ScheduleRun,
    Tenant,
)
from services.errors import PermanentError

# Children before parents, so no batch waits on a cascade of another table.
TENANT_TABLES: tuple[type[Any], ...] = (
    ScheduleRun,
    Schedule,
    IngestItem,
    Resource,
    Ingest,
    GithubMember,
    GithubRepository,
    Integration,
    LockerEntry,
    OutboxMessage,
    DeadLetter,
    JobGroupMember,
    JobGroupCompletion,
    Job,
)
# Rows a worker may still write while the tenant is being deleted (a message
# dead-lettered because the tenant is `deleting`): swept once more at the end.
LATE_TABLES: tuple[type[Any], ...] = (OutboxMessage, DeadLetter, Job)
DEFAULT_BATCH_SIZE = 1_000


class StopAfterBatches(PermanentError):
    """`max_batches` was reached: the deletion stopped half-way; run it again to finish."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="stopped")


def _key_column(model: type[Any]) -> Any:
    return model.message_id if model in (DeadLetter, Job) else model.id


def mark_deleting(session: Session, tenant_id: int) -> bool:
    """Set the tenant's status to `deleting`; whether the tenant (still) exists."""
    result = session.execute(
        update(Tenant).where(Tenant.id == tenant_id).values(status=TENANT_DELETING)
    )
    return bool(getattr(result, "rowcount", 0))


def delete_batch(session: Session, model: type[Any], tenant_id: int, batch_size: int) -> int:
    """Delete up to `batch_size` of the tenant's rows of one table; how many went."""
    key = _key_column(model)
    doomed = select(key).where(model.tenant_id == tenant_id).limit(batch_size)
    if model is Job:
        # A cancel request has no tenant column of its own: it goes with its job.
        ids = list(session.scalars(doomed))
        if not ids:
            return 0
        session.execute(delete(CancelRequest).where(CancelRequest.message_id.in_(ids)))
        result = session.execute(delete(Job).where(Job.message_id.in_(ids)))
    else:
        result = session.execute(delete(model).where(key.in_(doomed.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)


def delete_tenant_data(
    sessions: sessionmaker[Session],
    tenant_id: int,
    *,
    delete_queues: Callable[[Sequence[str]], int],
    queues: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete a tenant's rows (table by table, one transaction per batch), queues, and row.

    Returns the rows deleted per table (plus `queues` and `tenants`).  A tenant
    that no longer exists is fine: whatever it left behind is removed.
    `max_batches` stops with `StopAfterBatches` after that many batches.
    """
    with sessions.begin() as session:
        mark_deleting(session, tenant_id)
    counts: dict[str, int] = {}
    batches = 0

    def drain(model: type[Any]) -> None:
        nonlocal batches
        name = model.__tablename__
        while True:
            if max_batches is not None and batches >= max_batches:
                raise StopAfterBatches(
                    f"deleting tenant {tenant_id} stopped after {batches} batches "
                    "(max_batches); send delete_tenant again to finish"
                )
            with sessions.begin() as session:
                deleted = delete_batch(session, model, tenant_id, batch_size)
            batches += 1
            counts[name] = counts.get(name, 0) + deleted
            if deleted < batch_size:
                return

    for model in TENANT_TABLES:
        drain(model)
    counts["queues"] = delete_queues(queues)
    for model in LATE_TABLES:
        drain(model)
    with sessions.begin() as session:
        result = session.execute(delete(Tenant).where(Tenant.id == tenant_id))
        counts["tenants"] = int(getattr(result, "rowcount", 0) or 0)
    return counts
