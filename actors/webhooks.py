"""Notifying a tenant's webhook of what happened to its jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

import brokers
from actors.base import taskyard_actor
from middleware import current_message, current_session
from services import webhooks
from services.http import FetchLimits
from services.url_guard import public_only_session

# One HTTP connection pool per worker process, shared by its threads.
_http = public_only_session(allow_private=brokers.settings.http_allow_private)


class NotifyArgs(Schema):
    """Arguments of `notify_webhook`."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    event = fields.String(required=True, validate=validate.Length(min=1, max=100))
    payload = fields.Raw(required=True, allow_none=True)


@taskyard_actor(name="notify_webhook", schema=NotifyArgs)
def notify_webhook(tenant_id: int, event: str, payload: Any) -> dict[str, Any]:
    """POST one signed event to the tenant's webhook; skipped when it has none."""
    s = brokers.settings
    delivery = webhooks.deliver(
        current_session(),
        tenant_id,
        event,
        payload,
        http=_http,
        limits=FetchLimits.from_settings(s),
        secret_keys=s.secret_keys,
        allow_private=s.http_allow_private,
        delivery_id=current_message().message_id,
        now=dt.datetime.now(dt.UTC),
    )
    if delivery is None:
        return {"skipped": "no webhook"}
    return dict(delivery)


def notify_tenant(session: Session, tenant_id: int, event: str, payload: Any) -> None:
    """Send `notify_webhook` when the tenant has a webhook URL (after commit in a transaction)."""
    if webhooks.webhook_url(session, tenant_id) is not None:
        notify_webhook.send(tenant_id=tenant_id, event=event, payload=payload)


def notify_tenant_on_give_up(session: Session, tenant_id: int, event: str, payload: Any) -> None:
    """`notify_tenant` from an `on_give_up` hook.

    The hook runs in the failure's own transaction; DbSession writes what it
    sends to the outbox there and publishes it once that transaction commits.
    """
    notify_tenant(session, tenant_id, event, payload)
