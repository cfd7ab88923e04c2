"""Resource feeds: fetch one, validate every item, and record the run as an ingest."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

import requests
from marshmallow import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from db.hot import Executor
from db.models import (
    INGEST_COMPLETED,
    INGEST_FAILED,
    INGEST_RUNNING,
    ITEM_FAILED,
    ITEM_PENDING,
    ITEM_PROCESSED,
    ITEM_REJECTED,
    Ingest,
    IngestItem,
    Tenant,
)
from services.errors import NotFound, PermanentError
from services.http import FetchLimits, fetch_json, redact_url
from services.resources import (
    MAX_ERROR_CHARS,
    ResourceData,
    ResourceSchema,
    format_errors,
)
from services.tenants import get_tenant

# How many problem items `get_ingest` shows of each kind.
MAX_ITEMS_SHOWN = 20
# Items of a feed are checked with this one instance: unknown fields are dropped.
FEED_SCHEMA = ResourceSchema()


class IngestPlan(TypedDict):
    """What `start_ingest` found: counts, and the valid resources to send on."""

    ingest_id: int
    fetched: int
    valid: int
    rejected: int
    resources: list[dict[str, Any]]


class ItemProblem(TypedDict):
    """One rejected or failed item of an ingest."""

    position: int
    resource_id: str | None
    error: str | None


class IngestSummary(TypedDict):
    """An ingest as the command line shows it."""

    id: int
    tenant_id: int
    source_url: str
    status: str
    fetched: int
    valid: int
    rejected: int
    processed: int
    failed: int
    error: str | None
    created_at: str | None
    finished_at: str | None
    items_rejected: list[ItemProblem]
    items_failed: list[ItemProblem]


def start_ingest(
    session: Session,
    tenant_id: int,
    source_url: str,
    *,
    http: requests.Session,
    limits: FetchLimits,
    message_id: str | None = None,
) -> IngestPlan:
    """Fetch a tenant's feed, record an ingest with one item per entry, and plan the valid ones."""
    get_tenant(session, tenant_id)
    safe_url = redact_url(source_url)
    body = fetch_json(http, source_url, limits)
    if not isinstance(body, list):
        raise PermanentError(
            f"feed {safe_url} returned a JSON {_json_kind(body)}, expected a JSON array "
            "(a list) of resource objects; fix the feed, then requeue",
            reason="invalid_feed",
        )
    ingest = Ingest(
        tenant_id=tenant_id, source_url=safe_url, status=INGEST_RUNNING, message_id=message_id
    )
    session.add(ingest)
    session.flush()

    rows: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for position, item in enumerate(body):
        resource_id, data, error = _check_item(item)
        if resource_id is not None and error is None:
            first = first_seen.get(resource_id)
            if first is not None:
                error = f"duplicate id {resource_id!r} (first at position {first})"
        if resource_id is not None:
            first_seen.setdefault(resource_id, position)
        if error is None and data is not None:
            resources.append(FEED_SCHEMA.dump(data))
        rows.append(
            {
                "tenant_id": tenant_id,
                "ingest_id": ingest.id,
                "position": position,
                "resource_id": resource_id,
                "status": ITEM_PENDING if error is None else ITEM_REJECTED,
                "error": error,
            }
        )
    if rows:
        session.execute(insert(IngestItem), rows)

    ingest.fetched = len(body)
    ingest.valid = len(resources)
    ingest.rejected = len(body) - len(resources)
    if not resources:
        ingest.status = INGEST_COMPLETED
        ingest.finished_at = dt.datetime.now(dt.UTC)
    session.flush()
    return {
        "ingest_id": ingest.id,
        "fetched": ingest.fetched,
        "valid": ingest.valid,
        "rejected": ingest.rejected,
        "resources": resources,
    }


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_item(item: Any) -> tuple[str | None, ResourceData | None, str | None]:
    """The item's id (when readable), its data when valid, or why it was rejected."""
    if not isinstance(item, dict):
        return None, None, "item is not a JSON object"
    try:
        data: ResourceData = FEED_SCHEMA.load(item)
    except ValidationError as exc:
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        resource_id = valid.get("id") if isinstance(valid.get("id"), str) else None
        return resource_id, None, format_errors(exc.messages)
    return data["id"], data, None


def record_ingest_failure(
    session: Session, tenant_id: int, source_url: str, *, message_id: str | None, error: str
) -> int:
    """Record an ingest that failed for good and return its id (0 when the tenant is gone)."""
    if session.get(Tenant, tenant_id) is None:
        return 0
    ingest = None
    if message_id is not None:
        # The hook may run twice for one message; keep one row for it.
        ingest = session.scalar(
            select(Ingest).where(
                Ingest.tenant_id == tenant_id,
                Ingest.message_id == message_id,
                Ingest.status == INGEST_FAILED,
            )
        )
    if ingest is None:
        ingest = Ingest(tenant_id=tenant_id, source_url=redact_url(source_url))
        session.add(ingest)
    ingest.message_id = message_id
    ingest.status = INGEST_FAILED
    ingest.error = error[:MAX_ERROR_CHARS]
    ingest.finished_at = dt.datetime.now(dt.UTC)
    session.flush()
    return ingest.id


class IngestOutcome(TypedDict):
    """What a webhook says about a finished ingest."""

    ingest_id: int
    status: str
    fetched: int
    valid: int
    rejected: int
    processed: int
    failed: int


def item_counts(session: Session, tenant_id: int, ingest_id: int) -> tuple[int, int]:
    """How many of a running ingest's items are processed, and failed, as committed now."""
    rows = session.execute(
        select(IngestItem.status, func.count())
        .where(
            IngestItem.tenant_id == tenant_id,
            IngestItem.ingest_id == ingest_id,
            IngestItem.status.in_([ITEM_PROCESSED, ITEM_FAILED]),
        )
        .group_by(IngestItem.status)
    ).all()
    counts = {status: int(count) for status, count in rows}
    return counts.get(ITEM_PROCESSED, 0), counts.get(ITEM_FAILED, 0)


def _pending(tenant_id: Any, ingest_id: Any) -> Any:
    return (
        select(IngestItem.id)
        .where(
            IngestItem.tenant_id == tenant_id,
            IngestItem.ingest_id == ingest_id,
            IngestItem.status == ITEM_PENDING,
        )
        .exists()
    )


def _counted(status: str) -> Any:
    return (
        select(func.count())
        .where(
            IngestItem.tenant_id == Ingest.tenant_id,
            IngestItem.ingest_id == Ingest.id,
            IngestItem.status == status,
        )
        .scalar_subquery()
    )


def may_complete(executor: Executor, tenant_id: int, ingest_id: int) -> bool:
    """Whether a running ingest has no pending item left, after an item's commit.

    Run by the items that may be their ingest's last (`ItemProcessed.may_be_last`)
    and by the dead ones, outside their transactions.  An item not started yet
    answers at once (its own transaction comes after, and checks if it may be
    the last); otherwise this waits for the items in flight to commit (their
    rows are locked by their claims): the last item to start sees them all
    finished here, however many items committed while it ran.  Then one read:
    the ingest running, none of its items pending.  The row locks taken here
    are a transaction's: the caller rolls it back (nothing is written).
    """
    pending = (
        select(IngestItem.id)
        .where(
            IngestItem.tenant_id == tenant_id,
            IngestItem.ingest_id == ingest_id,
            IngestItem.status == ITEM_PENDING,
        )
        .limit(1)
    )
    if executor.execute(pending.with_for_update(read=True, skip_locked=True)).first():
        return False
    if executor.execute(pending.with_for_update(read=True)).first():
        return False
    found = executor.execute(
        select(Ingest.id).where(
            Ingest.id == ingest_id,
            Ingest.tenant_id == tenant_id,
            Ingest.status == INGEST_RUNNING,
            ~_pending(tenant_id, ingest_id),
        )
    ).first()
    return found is not None


def complete_if_done(session: Session, tenant_id: int, ingest_id: int) -> IngestOutcome | None:
    """Complete a running ingest none of whose items is pending; its outcome, or None.

    Run after an item's transaction has committed, as a group's completion
    is: each item changes only its own row, and this one statement claims
    the completion (two last items at once: the second finds it completed),
    writing the counts the items' rows add up to.
    """
    row = session.execute(
        update(Ingest)
        .where(
            Ingest.id == ingest_id,
            Ingest.tenant_id == tenant_id,
            Ingest.status == INGEST_RUNNING,
            ~_pending(tenant_id, ingest_id),
        )
        .values(
            status=INGEST_COMPLETED,
            finished_at=dt.datetime.now(dt.UTC),
            processed=_counted(ITEM_PROCESSED),
            failed=_counted(ITEM_FAILED),
        )
        .returning(Ingest.fetched, Ingest.valid, Ingest.rejected, Ingest.processed, Ingest.failed)
    ).one_or_none()
    if row is None:
        return None
    return {
        "ingest_id": ingest_id,
        "status": INGEST_COMPLETED,
        "fetched": row.fetched,
        "valid": row.valid,
        "rejected": row.rejected,
        "processed": row.processed,
        "failed": row.failed,
    }


def stalled_ingests(
    session: Session, *, older_than: dt.datetime, limit: int
) -> list[tuple[int, int]]:
    """(tenant, ingest) of running ingests with no pending item left, started before `older_than`.

    Their last item's worker completes them right after its commit; these are
    the ones a crash (or the database away) left running.
    """
    query = (
        select(Ingest.tenant_id, Ingest.id)
        .where(
            Ingest.status == INGEST_RUNNING,
            Ingest.created_at < older_than,
            ~_pending(Ingest.tenant_id, Ingest.id),
        )
        .limit(limit)
    )
    return [(tenant_id, ingest_id) for tenant_id, ingest_id in session.execute(query).all()]


def ingest_outcome(session: Session, tenant_id: int, ingest_id: int) -> IngestOutcome | None:
    """The ingest's status and counts as this transaction sees them now (None when unknown)."""
    row = session.execute(
        select(
            Ingest.status,
            Ingest.fetched,
            Ingest.valid,
            Ingest.rejected,
            Ingest.processed,
            Ingest.failed,
        ).where(Ingest.id == ingest_id, Ingest.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        return None
    processed, failed = row.processed, row.failed
    if row.status == INGEST_RUNNING:
        processed, failed = item_counts(session, tenant_id, ingest_id)
    return {
        "ingest_id": ingest_id,
        "status": row.status,
        "fetched": row.fetched,
        "valid": row.valid,
        "rejected": row.rejected,
        "processed": processed,
        "failed": failed,
    }


def get_ingest(session: Session, ingest_id: int, *, tenant_id: int | None = None) -> IngestSummary:
    """One ingest with its counts and its first rejected and failed items, or NotFound."""
    ingest = session.get(Ingest, ingest_id)
    if ingest is None or (tenant_id is not None and ingest.tenant_id != tenant_id):
        owner = f" for tenant {tenant_id}" if tenant_id is not None else ""
        raise NotFound(f"ingest {ingest_id} does not exist{owner}")
    processed, failed = ingest.processed, ingest.failed
    if ingest.status == INGEST_RUNNING:
        processed, failed = item_counts(session, ingest.tenant_id, ingest.id)
    return {
        "id": ingest.id,
        "tenant_id": ingest.tenant_id,
        "source_url": ingest.source_url,
        "status": ingest.status,
        "fetched": ingest.fetched,
        "valid": ingest.valid,
        "rejected": ingest.rejected,
        "processed": processed,
        "failed": failed,
        "error": ingest.error,
        "created_at": iso_utc(ingest.created_at),
        "finished_at": iso_utc(ingest.finished_at),
        "items_rejected": _problems(session, ingest, ITEM_REJECTED),
        "items_failed": _problems(session, ingest, ITEM_FAILED),
    }


def iso_utc(value: dt.datetime | None) -> str | None:
    """An ISO string in UTC; SQLite hands back naive datetimes, which are UTC here."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _problems(session: Session, ingest: Ingest, status: str) -> list[ItemProblem]:
    query = (
        select(IngestItem.position, IngestItem.resource_id, IngestItem.error)
        .where(
            IngestItem.tenant_id == ingest.tenant_id,
            IngestItem.ingest_id == ingest.id,
            IngestItem.status == status,
        )
        .order_by(IngestItem.position)
        .limit(MAX_ITEMS_SHOWN)
    )
    return [
        {"position": position, "resource_id": resource_id, "error": error}
        for position, resource_id, error in session.execute(query)
    ]
