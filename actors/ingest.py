"""Ingesting a tenant's resource feed: fetch and validate, then process each item in parallel."""

from __future__ import annotations

from typing import Any, TypedDict

from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

import brokers
from actors.base import taskyard_actor
from actors.webhooks import notify_tenant, notify_tenant_on_give_up
from db.models import INGEST_COMPLETED
from middleware import current_message, current_session
from services import ingest, resources
from services.http import FetchLimits, redact_url
from services.url_guard import public_only_session

# One HTTP connection pool per worker process, shared by its threads.
_http = public_only_session(allow_private=brokers.settings.http_allow_private)


class IngestArgs(Schema):
    """Arguments of `ingest_resources`."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    source_url = fields.String(required=True, validate=validate.Length(min=1, max=2_000))


class ProcessArgs(Schema):
    """Arguments of `process_resource`."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    ingest_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    resource = fields.Dict(required=True)


class IngestResult(TypedDict):
    """What `ingest_resources` leaves on its job record."""

    ingest_id: int
    fetched: int
    valid: int
    rejected: int


def _ingest_gave_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
    tenant_id, url = kwargs.get("tenant_id"), kwargs.get("source_url")
    if isinstance(tenant_id, int) and isinstance(url, str):
        ingest_id = ingest.record_ingest_failure(
            session, tenant_id, url, message_id=current_message().message_id, error=error
        )
        if ingest_id:
            payload = {"ingest_id": ingest_id, "source_url": redact_url(url), "error": error}
            notify_tenant_on_give_up(session, tenant_id, "ingest.failed", payload)


def _item_gave_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
    tenant_id, ingest_id, item = (
        kwargs.get("tenant_id"),
        kwargs.get("ingest_id"),
        kwargs.get("resource"),
    )
    if isinstance(tenant_id, int) and isinstance(ingest_id, int) and isinstance(item, dict):
        before = ingest.ingest_outcome(session, tenant_id, ingest_id)
        resources.record_item_failure(session, tenant_id, ingest_id, item, error)
        outcome = _completed_now(session, tenant_id, ingest_id, before)
        if outcome is not None:
            notify_tenant_on_give_up(session, tenant_id, "ingest.completed", dict(outcome))


@taskyard_actor(name="ingest_resources", schema=IngestArgs, on_give_up=_ingest_gave_up)
def ingest_resources(tenant_id: int, source_url: str) -> IngestResult:
    """Fetch a tenant's feed, record every item, and send one `process_resource` per valid item."""
    plan = ingest.start_ingest(
        current_session(),
        tenant_id,
        source_url,
        http=_http,
        limits=FetchLimits.from_settings(brokers.settings),
        message_id=current_message().message_id,
    )
    for resource in plan["resources"]:
        process_resource.send(tenant_id=tenant_id, ingest_id=plan["ingest_id"], resource=resource)
    result: IngestResult = {
        "ingest_id": plan["ingest_id"],
        "fetched": plan["fetched"],
        "valid": plan["valid"],
        "rejected": plan["rejected"],
    }
    if not plan["resources"]:  # nothing to process: the ingest completed here
        notify_tenant(current_session(), tenant_id, "ingest.completed", dict(result))
    return result


@taskyard_actor(name="process_resource", schema=ProcessArgs, on_give_up=_item_gave_up)
def process_resource(tenant_id: int, ingest_id: int, resource: dict[str, Any]) -> dict[str, Any]:
    """Normalise one resource and upsert it; processing it twice changes nothing."""
    session = current_session()
    before = ingest.ingest_outcome(session, tenant_id, ingest_id)
    result = resources.process_resource(session, tenant_id, ingest_id, resource)
    outcome = _completed_now(session, tenant_id, ingest_id, before)
    if outcome is not None:
        notify_tenant(session, tenant_id, "ingest.completed", dict(outcome))
    return dict(result)


def _completed_now(
    session: Session, tenant_id: int, ingest_id: int, before: ingest.IngestOutcome | None
) -> ingest.IngestOutcome | None:
    """The ingest's outcome when this transaction is the one that completed it, else None.

    The last item's count completes the ingest under its row lock, held until
    commit, so one transaction sees the change; a redelivered duplicate of an
    item may, in a narrow window, see it too: receivers dedupe on `ingest_id`.
    """
    if before is None or before["status"] == INGEST_COMPLETED:
        return None
    after = ingest.ingest_outcome(session, tenant_id, ingest_id)
    return after if after is not None and after["status"] == INGEST_COMPLETED else None
