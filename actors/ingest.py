"""Ingesting a tenant's resource feed: fetch and validate, then process each item in parallel."""

from __future__ import annotations

from typing import Any, TypedDict

import requests
from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

import brokers
from actors.base import taskyard_actor
from middleware import current_message, current_session
from services import ingest, resources
from services.http import FetchLimits

# One HTTP connection pool per worker process, shared by its threads.
_http = requests.Session()


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


def _limits() -> FetchLimits:
    s = brokers.settings
    return FetchLimits(
        connect_timeout=s.http_connect_timeout,
        read_timeout=s.http_read_timeout,
        max_bytes=s.http_max_bytes,
        allow_private=s.http_allow_private,
    )


def _ingest_gave_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
    tenant_id, url = kwargs.get("tenant_id"), kwargs.get("source_url")
    if isinstance(tenant_id, int) and isinstance(url, str):
        ingest.record_ingest_failure(
            session, tenant_id, url, message_id=current_message().message_id, error=error
        )


def _item_gave_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
    tenant_id, ingest_id, item = (
        kwargs.get("tenant_id"),
        kwargs.get("ingest_id"),
        kwargs.get("resource"),
    )
    if isinstance(tenant_id, int) and isinstance(ingest_id, int) and isinstance(item, dict):
        resources.record_item_failure(session, tenant_id, ingest_id, item, error)


@taskyard_actor(name="ingest_resources", schema=IngestArgs, on_give_up=_ingest_gave_up)
def ingest_resources(tenant_id: int, source_url: str) -> IngestResult:
    """Fetch a tenant's feed, record every item, and send one `process_resource` per valid item."""
    plan = ingest.start_ingest(
        current_session(),
        tenant_id,
        source_url,
        http=_http,
        limits=_limits(),
        message_id=current_message().message_id,
    )
    for resource in plan["resources"]:
        process_resource.send(tenant_id=tenant_id, ingest_id=plan["ingest_id"], resource=resource)
    return {
        "ingest_id": plan["ingest_id"],
        "fetched": plan["fetched"],
        "valid": plan["valid"],
        "rejected": plan["rejected"],
    }


@taskyard_actor(name="process_resource", schema=ProcessArgs, on_give_up=_item_gave_up)
def process_resource(tenant_id: int, ingest_id: int, resource: dict[str, Any]) -> dict[str, Any]:
    """Normalise one resource and upsert it; processing it twice changes nothing."""
    result = resources.process_resource(current_session(), tenant_id, ingest_id, resource)
    return dict(result)
