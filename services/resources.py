"""Resources: the schema of one resource, and storing one item of an ingest."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, TypedDict

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load
from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from db.models import (
    INGEST_COMPLETED,
    INGEST_RUNNING,
    ITEM_FAILED,
    ITEM_PROCESSED,
    ITEM_REJECTED,
    Ingest,
    IngestItem,
    Resource,
)
from services._upsert import upsert
from services.errors import NotFound, ValidationFailed

# Column sizes of db/models.py: a longer value would fail the whole insert on PostgreSQL.
MAX_ID_CHARS = 200
MAX_NAME_CHARS = 500
MAX_ERROR_CHARS = 1_000


def _check_text(*, max_chars: int | None = None, blank: bool = False) -> Any:
    def check(value: str) -> None:
        if not blank and not value:
            raise ValidationError("May not be blank.")
        if max_chars is not None and len(value) > max_chars:
            raise ValidationError(f"Longer than {max_chars} characters.")
        # PostgreSQL refuses NUL in text and jsonb; SQLite would store it silently.
        if "\x00" in value:
            raise ValidationError("May not contain NUL characters.")

    return check


class _TrimmedString(fields.String):
    """A string with surrounding white space removed."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        return str(super()._deserialize(value, attr, data, **kwargs)).strip()


class _ResourceId(fields.Field[str]):
    """An id sent as a string or an integer, kept as a trimmed string."""

    # Marshmallow merges these along the MRO; a ClassVar would clash with its annotation.
    default_error_messages = {"invalid": "Not a valid id: a string or an integer."}

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.make_error("invalid")
        return str(value).strip()


class _UtcDateTime(fields.Field[dt.datetime]):
    """An ISO-8601 date or date-time, as an aware UTC datetime (naive means UTC)."""

    default_error_messages = {"invalid": "Not a valid datetime."}

    def _serialize(
        self, value: dt.datetime | None, attr: str | None, obj: Any, **kwargs: Any
    ) -> Any:
        return None if value is None else value.isoformat()

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dt.datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=dt.UTC)
            return parsed.astimezone(dt.UTC)
        except (ValueError, OverflowError) as exc:
            raise self.make_error("invalid") from exc


class ResourceSchema(Schema):
    """One resource: an item of a tenant's feed, or the argument of a processing message."""

    class Meta:
        unknown = EXCLUDE

    id = _ResourceId(required=True, validate=_check_text(max_chars=MAX_ID_CHARS))
    name = _TrimmedString(required=True, validate=_check_text(max_chars=MAX_NAME_CHARS))
    creation_date = _UtcDateTime(required=True)
    description = _TrimmedString(load_default=None, validate=_check_text(blank=True))
    tags = fields.List(
        _TrimmedString(validate=_check_text(blank=True)), load_default=list, allow_none=True
    )

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["description"] = data.get("description") or None
        # Blank tags are dropped, and repeated ones after the first.
        data["tags"] = list(dict.fromkeys(tag for tag in data.get("tags") or [] if tag))
        return data


class ResourceData(TypedDict):
    """A validated, normalised resource, as `ResourceSchema.load` returns it."""

    id: str
    name: str
    creation_date: dt.datetime
    description: str | None
    tags: list[str]


class ProcessResult(TypedDict):
    """What processing one resource did."""

    resource_id: str
    changed: bool


# Our own messages: a field we do not know means a producer and a worker disagree.
MESSAGE_SCHEMA = ResourceSchema(unknown=RAISE)


def format_errors(messages: Any, prefix: str = "") -> str:
    """Marshmallow's nested error messages as one short line: `field: message; ...`."""
    if isinstance(messages, dict):
        parts = [
            format_errors(
                value, prefix if key == "_schema" else ".".join(filter(None, [prefix, str(key)]))
            )
            for key, value in messages.items()
        ]
        return "; ".join(part for part in parts if part)[:MAX_ERROR_CHARS]
    if isinstance(messages, list | tuple):
        text = " ".join(str(message) for message in messages)
    else:
        text = str(messages)
    return (f"{prefix}: {text}" if prefix else text)[:MAX_ERROR_CHARS]


def process_resource(
    session: Session, tenant_id: int, ingest_id: int, resource: dict[str, Any]
) -> ProcessResult:
    """Upsert one resource of an ingest and count it; a second call for it changes nothing."""
    data = _load_message(resource)
    item = session.scalar(_item_query(tenant_id, ingest_id, data["id"]))
    if item is None:
        raise NotFound(
            f"ingest {ingest_id} of tenant {tenant_id} has no accepted item with id "
            f"{data['id']!r}; the message does not belong to this ingest"
        )
    if item.status == ITEM_PROCESSED:
        return {"resource_id": data["id"], "changed": False}
    values = {
        "tenant_id": tenant_id,
        "resource_id": data["id"],
        "name": data["name"],
        "description": data["description"],
        "tags": data["tags"],
        "creation_date": data["creation_date"].astimezone(dt.UTC),
        "last_ingest_id": ingest_id,
    }
    changed = upsert(
        session,
        Resource,
        values,
        key=("tenant_id", "resource_id"),
        compare=("name", "description", "tags", "creation_date"),
        also_set=("last_ingest_id",),
    )
    if not changed:
        session.execute(
            update(Resource)
            .where(Resource.tenant_id == tenant_id, Resource.resource_id == data["id"])
            # Same content: updated_at keeps saying when the content last changed.
            .values(last_ingest_id=ingest_id, updated_at=Resource.updated_at)
        )
    # An operator may requeue the message of an item marked failed: move it across.
    was_failed = item.status == ITEM_FAILED
    item.status = ITEM_PROCESSED
    item.error = None
    session.flush()
    _count(session, tenant_id, ingest_id, processed=1, failed=-1 if was_failed else 0)
    return {"resource_id": data["id"], "changed": changed}


def record_item_failure(
    session: Session, tenant_id: int, ingest_id: int, resource: dict[str, Any], error: str
) -> None:
    """Mark a resource's item failed for good (the final-failure hook) and count it."""
    raw_id = resource.get("id") if isinstance(resource, dict) else None
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return
    item = session.scalar(_item_query(tenant_id, ingest_id, str(raw_id).strip()))
    if item is None or item.status in (ITEM_PROCESSED, ITEM_FAILED):
        return
    item.status = ITEM_FAILED
    item.error = error[:MAX_ERROR_CHARS]
    session.flush()
    _count(session, tenant_id, ingest_id, processed=0, failed=1)


def _load_message(resource: Any) -> ResourceData:
    if not isinstance(resource, dict):
        raise ValidationFailed("resource must be a JSON object")
    try:
        data: ResourceData = MESSAGE_SCHEMA.load(resource)
    except ValidationError as exc:
        raise ValidationFailed(f"resource is invalid: {format_errors(exc.messages)}") from exc
    return data


def _item_query(tenant_id: int, ingest_id: int, resource_id: str) -> Select[IngestItem]:
    # Rejected items may repeat an id; the accepted one is unique in its ingest.
    return (
        select(IngestItem)
        .where(
            IngestItem.tenant_id == tenant_id,
            IngestItem.ingest_id == ingest_id,
            IngestItem.resource_id == resource_id,
            IngestItem.status != ITEM_REJECTED,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _count(
    session: Session, tenant_id: int, ingest_id: int, *, processed: int, failed: int
) -> None:
    """Add to the ingest's counters; complete it once every valid item is accounted for."""
    done, failed_total, valid = session.execute(
        update(Ingest)
        .where(Ingest.id == ingest_id, Ingest.tenant_id == tenant_id)
        .values(processed=Ingest.processed + processed, failed=Ingest.failed + failed)
        .returning(Ingest.processed, Ingest.failed, Ingest.valid)
    ).one()
    # The UPDATE above holds the ingest's row lock, so only one worker gets here last.
    if done + failed_total >= valid:
        session.execute(
            update(Ingest)
            .where(Ingest.id == ingest_id, Ingest.status == INGEST_RUNNING)
            .values(status=INGEST_COMPLETED, finished_at=dt.datetime.now(dt.UTC))
        )
