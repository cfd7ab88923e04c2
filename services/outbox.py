"""The outbox: messages written in a transaction, published after it commits or when due."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from db.hot import Executor
from db.models import OutboxMessage
from services.records import JobRecord


def add_messages(
    session: Executor, records: Sequence[JobRecord], *, now: dt.datetime | None = None
) -> dict[str, int]:
    """Write the outbox rows of `records` in one INSERT; returns each message id's row id.

    Each row is due its record's `wait_ms` after `now` (default: now).
    """
    if not records:
        return {}
    now = now or dt.datetime.now(dt.UTC)
    rows = [record.outbox_row(now) for record in records]
    # executemany of one cached statement: SQLAlchemy sends it as one multi-row INSERT.
    stmt = insert(cast(Table, OutboxMessage.__table__)).returning(
        OutboxMessage.message_id, OutboxMessage.id
    )
    result = session.execute(stmt, rows)
    return {message_id: row_id for message_id, row_id in result.all()}


def delete_messages(session: Executor, ids: Sequence[int]) -> int:
    """Delete the outbox rows `ids` (published); returns how many were there."""
    if not ids:
        return 0
    result = session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)


def postpone_messages(session: Executor, ids: Sequence[int], until: dt.datetime) -> int:
    """Make the outbox rows `ids` due at `until` (RabbitMQ refused them); returns how many."""
    if not ids:
        return 0
    stmt = update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(publish_at=until)
    result = session.execute(stmt)
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
