"""The outbox: messages written in a transaction, published after it commits or when due."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TypedDict, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from db.hot import Executor
from db.models import OutboxMessage


class OutboxRow(TypedDict):
    """One message to keep in the outbox until `publish_at`."""

    message_id: str
    tenant_id: int | None
    queue: str
    # The message as Dramatiq encodes it (JSON text).
    body: str
    publish_at: dt.datetime


def add_messages(session: Executor, rows: Sequence[OutboxRow]) -> dict[str, int]:
    """Write `rows` in one INSERT; returns each message id's outbox row id."""
    if not rows:
        return {}
    # executemany of one cached statement: SQLAlchemy sends it as one multi-row INSERT.
    stmt = insert(cast(Table, OutboxMessage.__table__)).returning(
        OutboxMessage.message_id, OutboxMessage.id
    )
    result = session.execute(stmt, [dict(row) for row in rows])
    return {message_id: row_id for message_id, row_id in result.all()}


def delete_messages(session: Executor, ids: Sequence[int]) -> int:
    """Delete the outbox rows `ids` (published); returns how many were there."""
    if not ids:
        return 0
    result = session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)


def discard_message(session: Session, message_id: str) -> int:
    """Delete whatever the outbox still holds of one message (a cancelled job)."""
    result = session.execute(delete(OutboxMessage).where(OutboxMessage.message_id == message_id))
    return int(getattr(result, "rowcount", 0) or 0)


def claim_due(session: Session, *, now: dt.datetime, limit: int) -> list[OutboxMessage]:
    """Lock up to `limit` rows due by `now`, skipping rows another sweeper holds.

    The lock lasts until the session's transaction ends: publish, delete, commit.
    """
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.publish_at <= now)
        .order_by(OutboxMessage.publish_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))
