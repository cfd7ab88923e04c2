"""Resources: the schema of one resource, and storing one item of an ingest."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load
from sqlalchemy import BigInteger, DateTime, Select, String, Text, bindparam, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from db.hot import HotStatement
from db.models import (
    INGEST_COMPLETED,
    ITEM_FAILED,
    ITEM_PENDING,
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
# An item whose transaction saw this many other items of its ingest pending is not
# its ingest's last: checking for the ingest's completion after its commit is left
# to the items after it (see `ItemProcessed.may_be_last`).  More than the worker
# threads that run one ingest's items at once: the shipped manifests scale to 10
# replicas of 2 processes of 8 threads (160).  With more, an ingest whose last items
# all run at once may wait for the sweeper (`STALLED_AFTER_SECONDS`) to complete it.
TAIL_ITEMS = 256


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


class ItemProcessed(NamedTuple):
    """What processing one item did, and whether its ingest may be complete after its commit.

    `may_be_last` is False only when the item's own statement saw at least
    TAIL_ITEMS other items of its ingest pending.  Every item transaction that
    starts after this one's sees it committed; the last to start sees pending
    only the items in flight beside it (fewer than the threads running them),
    so it checks after its commit, waiting for those (`ingest.may_complete`).
    """

    result: ProcessResult
    may_be_last: bool


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
    return process_item(session, tenant_id, ingest_id, resource).result


def process_item(
    session: Session, tenant_id: int, ingest_id: int, resource: dict[str, Any]
) -> ItemProcessed:
    """`process_resource`, and whether the ingest may be complete once this commits."""
    data = _load_message(resource)
    values = {
        "tenant_id": tenant_id,
        "resource_id": data["id"],
        "name": data["name"],
        "description": data["description"],
        "tags": data["tags"],
        "creation_date": data["creation_date"].astimezone(dt.UTC),
        "last_ingest_id": ingest_id,
    }
    if session.get_bind().dialect.name == "postgresql":
        # The usual case in one statement: the pending item marked processed, its
        # resource upserted, and the ingest's other pending items counted.
        row = _PROCESS_PENDING.execute(session, {**values, "ingest_id": ingest_id}).one()
        if row.claimed:
            if not row.changed:
                _attribute_unchanged(session, tenant_id, ingest_id, data["id"])
            result: ProcessResult = {"resource_id": data["id"], "changed": bool(row.changed)}
            return ItemProcessed(result, row.pending_seen < TAIL_ITEMS)
    elif _claim_pending(session, tenant_id, ingest_id, data["id"]):
        return ItemProcessed(_store(session, values, was_failed=False), True)
    # Not pending: a requeued or repeated item (or none).
    item = session.scalar(_item_query(tenant_id, ingest_id, data["id"]))
    if item is None:
        raise NotFound(
            f"ingest {ingest_id} of tenant {tenant_id} has no accepted item with id "
            f"{data['id']!r}; the message does not belong to this ingest"
        )
    if item.status == ITEM_PROCESSED:
        return ItemProcessed({"resource_id": data["id"], "changed": False}, True)
    # An operator may requeue the message of an item marked failed: move it across.
    was_failed = item.status == ITEM_FAILED
    item.status = ITEM_PROCESSED
    item.error = None
    session.flush()
    return ItemProcessed(_store(session, values, was_failed=was_failed), True)


def _store(session: Session, values: dict[str, Any], *, was_failed: bool) -> ProcessResult:
    """Upsert the resource of a claimed item (and move a failed one across its counts)."""
    tenant_id, ingest_id, resource_id = (
        values["tenant_id"],
        values["last_ingest_id"],
        values["resource_id"],
    )
    changed = upsert(
        session,
        Resource,
        values,
        key=("tenant_id", "resource_id"),
        compare=("name", "description", "tags", "creation_date"),
        also_set=("last_ingest_id",),
    )
    if not changed:
        _attribute_unchanged(session, tenant_id, ingest_id, resource_id)
    if was_failed:
        _move_failed_to_processed(session, tenant_id, ingest_id)
    return {"resource_id": resource_id, "changed": changed}


def _attribute_unchanged(
    session: Session, tenant_id: int, ingest_id: int, resource_id: str
) -> None:
    """A resource whose content is the same: only its last ingest changes."""
    session.execute(
        update(Resource)
        .where(Resource.tenant_id == tenant_id, Resource.resource_id == resource_id)
        # Same content: updated_at keeps saying when the content last changed.
        .values(last_ingest_id=ingest_id, updated_at=Resource.updated_at)
    )


def _build_process_pending(dialect: str) -> Any:
    """PostgreSQL: an item's usual case in one statement (one round trip, not three).

    `claimed`: the item, if pending, marked processed (its row locked to the
    commit, as `_claim_pending` does).  `upserted`: its resource, only when
    claimed, inserted or updated when its content differs (as `upsert`).
    `pending_seen`: the ingest's other items pending as this statement sees
    them (the ones committed before it started are not), up to TAIL_ITEMS.
    """
    if dialect != "postgresql":
        raise RuntimeError("the one-statement item is PostgreSQL's")
    return sql_text(
        f"""
WITH claimed AS (
    UPDATE ingest_items SET status = '{ITEM_PROCESSED}', error = NULL, updated_at = now()
    WHERE tenant_id = :tenant_id AND ingest_id = :ingest_id AND resource_id = :resource_id
      AND status <> '{ITEM_REJECTED}' AND status = '{ITEM_PENDING}'
    RETURNING id
), upserted AS (
    INSERT INTO resources AS r
        (tenant_id, resource_id, name, description, tags, creation_date, last_ingest_id)
    SELECT :tenant_id, :resource_id, :name, :description, CAST(:tags AS jsonb),
           :creation_date, :last_ingest_id
    FROM claimed
    ON CONFLICT (tenant_id, resource_id) DO UPDATE
    SET name = excluded.name, description = excluded.description, tags = excluded.tags,
        creation_date = excluded.creation_date, last_ingest_id = excluded.last_ingest_id,
        updated_at = now()
    WHERE r.name IS DISTINCT FROM excluded.name
       OR r.description IS DISTINCT FROM excluded.description
       OR r.tags IS DISTINCT FROM excluded.tags
       OR r.creation_date IS DISTINCT FROM excluded.creation_date
    RETURNING r.id
)
SELECT (SELECT count(*) FROM claimed) AS claimed,
       (SELECT count(*) FROM upserted) AS changed,
       (SELECT count(*) FROM (
            SELECT 1 FROM ingest_items
            WHERE tenant_id = :tenant_id AND ingest_id = :ingest_id
              AND status = '{ITEM_PENDING}' AND resource_id <> :resource_id
            LIMIT {TAIL_ITEMS}) AS others) AS pending_seen
"""
    ).bindparams(
        bindparam("tenant_id", type_=BigInteger()),
        bindparam("ingest_id", type_=BigInteger()),
        bindparam("resource_id", type_=String()),
        bindparam("name", type_=String()),
        bindparam("description", type_=Text()),
        bindparam("tags", type_=Text()),
        bindparam("creation_date", type_=DateTime(timezone=True)),
        bindparam("last_ingest_id", type_=BigInteger()),
    )


_PROCESS_PENDING = HotStatement(_build_process_pending, json_params=["tags"])


def _claim_pending(session: Session, tenant_id: int, ingest_id: int, resource_id: str) -> bool:
    """Mark the item of `resource_id` processed if it is pending; whether it was."""
    found = session.execute(
        update(IngestItem)
        .where(
            IngestItem.tenant_id == tenant_id,
            IngestItem.ingest_id == ingest_id,
            IngestItem.resource_id == resource_id,
            # As the accepted items' unique index says it: that index finds the row.
            IngestItem.status != ITEM_REJECTED,
            IngestItem.status == ITEM_PENDING,
        )
        .values(status=ITEM_PROCESSED, error=None)
        .returning(IngestItem.id)
        .execution_options(synchronize_session=False)
    ).first()
    return found is not None


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


def _move_failed_to_processed(session: Session, tenant_id: int, ingest_id: int) -> None:
    """A failed item requeued and processed: move it across a completed ingest's counts.

    A running ingest's counts are its items' (`services.ingest.item_counts`);
    a completed one keeps those it completed with.
    """
    session.execute(
        update(Ingest)
        .where(
            Ingest.id == ingest_id,
            Ingest.tenant_id == tenant_id,
            Ingest.status == INGEST_COMPLETED,
        )
        .values(processed=Ingest.processed + 1, failed=Ingest.failed - 1)
    )
