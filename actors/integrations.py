"""Syncing a tenant's integration, on demand or from an ordinary schedule of `sync_integration`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

import brokers
from actors.base import taskyard_actor
from actors.ingest import ingest_resources
from actors.webhooks import notify_tenant, notify_tenant_on_give_up
from middleware import current_message, current_session
from services import ingest
from services.errors import NotFound
from services.http import FetchLimits
from services.integrations import (
    SYNC_FAILED,
    SYNC_SUCCEEDED,
    get_integration,
    http_feed,
    record_sync,
    validate_config,
)
from services.integrations.github import sync_github
from services.url_guard import public_only_session

# One HTTP connection pool per worker process, shared by its threads.
_http = public_only_session(allow_private=brokers.settings.http_allow_private)


class SyncArgs(Schema):
    """Arguments of `sync_integration`."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    integration_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


def _sync_gave_up(session: Session, kwargs: dict[str, Any], error: str) -> None:
    tenant_id, integration_id = kwargs.get("tenant_id"), kwargs.get("integration_id")
    if not isinstance(tenant_id, int) or not isinstance(integration_id, int):
        return
    try:
        integration = get_integration(session, integration_id, tenant_id)
    except NotFound:
        return
    summary: dict[str, Any] = {"error": error}
    if integration.kind == "http_feed" and isinstance(integration.config.get("url"), str):
        summary["ingest_id"] = ingest.record_ingest_failure(
            session,
            tenant_id,
            integration.config["url"],
            message_id=current_message().message_id,
            error=error,
        )
    record_sync(integration, status=SYNC_FAILED, summary=summary, now=dt.datetime.now(dt.UTC))
    payload = {"integration_id": integration_id, "kind": integration.kind, **summary}
    notify_tenant_on_give_up(session, tenant_id, "integration.failed", payload)


@taskyard_actor(name="sync_integration", schema=SyncArgs, on_give_up=_sync_gave_up)
def sync_integration(tenant_id: int, integration_id: int) -> dict[str, Any]:
    """Sync one integration of a tenant; its summary lands on the job record and the integration."""
    session = current_session()
    # Locked until commit: two syncs of one integration run one after the other.
    integration = get_integration(session, integration_id, tenant_id, lock=True)
    # Checked again here: a config edited in the database, or a kind this code no longer knows.
    validate_config(integration.kind, integration.config)
    summary: dict[str, Any]
    if integration.kind == "github":
        summary = dict(
            sync_github(
                session,
                integration,
                http=_http,
                limits=FetchLimits.from_settings(brokers.settings),
                secret_keys=brokers.settings.secret_keys,
            )
        )
    else:  # http_feed: the feed ingest, run here so its id is this sync's summary
        secret_keys = brokers.settings.secret_keys
        if secret_keys:  # a row stored with credentials in its URL: they move to the locker
            http_feed.move_credentials(session, integration, secret_keys=secret_keys)
        source_url = http_feed.feed_url(session, integration, secret_keys=secret_keys)
        summary = dict(ingest_resources.fn(tenant_id=tenant_id, source_url=source_url))
    record_sync(integration, status=SYNC_SUCCEEDED, summary=summary, now=dt.datetime.now(dt.UTC))
    payload = {"integration_id": integration_id, "kind": integration.kind, **summary}
    notify_tenant(session, tenant_id, "integration.synced", payload)
    return summary
