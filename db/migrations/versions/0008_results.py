"""A job's result is kept as returned, and `jobs.result_dropped` says when it was not kept.

Before, `jobs.result` held a dict result as is and wrapped anything else as
`{"value": x}`, and a result not kept was written as `{"unserializable": type}`
or `{"truncated": true, "bytes": n}`: a dict result of those shapes could not
be told from them.  Now `result` holds the returned JSON value itself, and a
result not kept is NULL with the reason in `result_dropped`.

Existing rows are rewritten: exactly `{"value": x}` becomes `x` (every non-dict
result was written so; a dict result that was exactly `{"value": x}` cannot be
told apart and is read as `x` too), exactly `{"unserializable": t}` and
`{"truncated": true, "bytes": n}` become NULL with their reason, and every
other dict stays as it was.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:30:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the reasons services/results.py writes.
_NOT_JSON = "the result, of type %s, is not JSON"
_TOO_LARGE = "the result, %s bytes of JSON, is over the limit of 8192 bytes: return ids, not data"

_UPGRADE_PG = [
    # Old wrapped values: {"value": x} and nothing else.
    """
    UPDATE jobs SET result = result -> 'value'
    WHERE jsonb_typeof(result) = 'object' AND result ? 'value' AND result - 'value' = '{}'
    """,
    f"""
    UPDATE jobs SET result_dropped = format('{_NOT_JSON}', result ->> 'unserializable'),
                    result = NULL
    WHERE jsonb_typeof(result) = 'object' AND result ? 'unserializable'
      AND result - 'unserializable' = '{{}}'
    """,
    f"""
    UPDATE jobs SET result_dropped = format('{_TOO_LARGE}', result ->> 'bytes'), result = NULL
    WHERE jsonb_typeof(result) = 'object' AND result -> 'truncated' = 'true'
      AND result ? 'bytes' AND result - 'truncated' - 'bytes' = '{{}}'
    """,
]

_DOWNGRADE_PG = [
    """
    UPDATE jobs SET result = jsonb_build_object('value', result)
    WHERE result IS NOT NULL AND jsonb_typeof(result) <> 'object'
    """,
    """
    UPDATE jobs SET result = jsonb_build_object('truncated', true)
    WHERE result IS NULL AND result_dropped IS NOT NULL
    """,
]


def _upgraded(result: Any) -> tuple[Any, str | None]:
    """One row's (result, result_dropped), as the PostgreSQL statements above make them."""
    if not isinstance(result, dict):
        return result, None
    if set(result) == {"value"}:
        return result["value"], None
    if set(result) == {"unserializable"}:
        return None, _NOT_JSON % result["unserializable"]
    if set(result) == {"truncated", "bytes"} and result["truncated"] is True:
        return None, _TOO_LARGE % result["bytes"]
    return result, None


def _rewrite_rows(upgrade: bool) -> None:
    """The same rewrite row by row, for SQLite (the demo's small databases)."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT message_id, result, result_dropped FROM jobs WHERE result IS NOT NULL")
    ).all()
    for message_id, raw, dropped in rows:
        result = json.loads(raw) if isinstance(raw, str) else raw
        if upgrade:
            new, dropped = _upgraded(result)
        else:
            new = result if isinstance(result, dict) else {"value": result}
        connection.execute(
            sa.text(
                "UPDATE jobs SET result = :result, result_dropped = :dropped WHERE message_id = :id"
            ),
            {
                "result": json.dumps(new) if new is not None else None,
                "dropped": dropped,
                "id": message_id,
            },
        )


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_dropped", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for statement in _UPGRADE_PG:
            op.execute(statement)
    else:
        _rewrite_rows(upgrade=True)


def downgrade() -> None:
    """Revert this revision (on PostgreSQL a result not kept comes back as `{"truncated": true}`).

    On SQLite it comes back as NULL.
    """
    if op.get_bind().dialect.name == "postgresql":
        for statement in _DOWNGRADE_PG:
            op.execute(statement)
    else:
        _rewrite_rows(upgrade=False)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_dropped")
