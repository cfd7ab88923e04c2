"""Ingesting a tenant's resource feed: fetch and validate, then process each item in parallel."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any, TypedDict

from dramatiq.broker import Broker
from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session

import brokers
from actors.base import taskyard_actor
from actors.webhooks import notify_tenant, notify_tenant_on_give_up
from middleware import current_message, current_session
from middleware.context import MessageContext, after_commit
from middleware.groups import STALLED_AFTER_SECONDS
from middleware.runtime import runtime_of
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
        resources.record_item_failure(session, tenant_id, ingest_id, item, error)
        after_commit(partial(_complete_if_last, tenant_id, ingest_id))


def _complete_if_last(tenant_id: int, ingest_id: int) -> None:
    """After an item's commit: complete its ingest if no item is left pending.

    A read first, outside any transaction (`ingest.may_complete`): only an
    ingest found done opens the transaction that claims its completion.
    """
    runtime = runtime_of(process_resource.broker)
    if runtime is None:
        return
    # Rolled back, not committed: its row locks need no durable commit.
    with runtime.session_factory() as session:
        if not ingest.may_complete(session, tenant_id, ingest_id):
            return
    runtime.outbox.follow_on(
        process_resource.broker, partial(_complete_ingest, tenant_id, ingest_id)
    )


def _complete_ingest(tenant_id: int, ingest_id: int, ctx: MessageContext) -> bool:
    """Complete the ingest if no item is left pending, and tell the tenant (once).

    Run once an item's transaction has committed (and by the sweeper for an
    ingest a crash left running): the ingest is a group of its items, each
    changing only its own row, and its completion is claimed by one statement.
    """
    outcome = ingest.complete_if_done(ctx.session, tenant_id, ingest_id)
    if outcome is None:
        return False
    notify_tenant(ctx.session, tenant_id, "ingest.completed", dict(outcome))
    return True


def _complete_and_note(
    tenant_id: int, ingest_id: int, completed: list[bool], ctx: MessageContext
) -> None:
    completed.append(_complete_ingest(tenant_id, ingest_id, ctx))


def _complete_stalled_ingests(broker: Broker) -> int:
    """Complete the ingests whose last item's worker died before completing them."""
    runtime = runtime_of(broker)
    if runtime is None:
        return 0
    older_than = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STALLED_AFTER_SECONDS)
    with runtime.session_factory() as session:
        stalled = ingest.stalled_ingests(session, older_than=older_than, limit=100)
    done = 0
    for tenant_id, ingest_id in stalled:
        completed: list[bool] = []
        work = partial(_complete_and_note, tenant_id, ingest_id, completed)
        if runtime.outbox.follow_on(broker, work) and any(completed):
            done += 1
    return done


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
    """Normalise one resource and upsert it; processing it twice changes nothing.

    The item changes only its own rows; once they have committed, the ingest is
    completed if it was the last (`_complete_if_last`), checked by the items that
    may be the last (`resources.ItemProcessed`).
    """
    done = resources.process_item(current_session(), tenant_id, ingest_id, resource)
    if done.may_be_last:
        after_commit(partial(_complete_if_last, tenant_id, ingest_id))
    return dict(done.result)


def complete_stalled_ingests_too(broker: Broker) -> None:
    """Have the group sweeper of `broker`'s runtime complete stalled ingests as well."""
    runtime = runtime_of(broker)
    if runtime is not None and _complete_stalled_ingests not in runtime.groups.stalled_work:
        runtime.groups.stalled_work.append(_complete_stalled_ingests)


complete_stalled_ingests_too(brokers.broker)
