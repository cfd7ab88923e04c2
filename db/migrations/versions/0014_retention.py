"""Retention for the tables beside `jobs`: the indexes that find their expired rows.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 03:30:00

The daily retention job (services/retention.py) deletes expired rows in short
batches, each batch finding its rows from the oldest end of an index: claimed
slots by `created_at`, ingests by `created_at` (their items by the ingest),
cancel requests by `requested_at`, and requeued dead letters by `requeued_at`
(a partial index: only requeued letters expire; the others wait for an
operator, and an index over them would only add writes).

On PostgreSQL each index is built `CONCURRENTLY`, outside a transaction: the
tables keep taking writes while it is built.

The pruned tables also get autovacuum settings (`PRUNED_AUTOVACUUM`): each loses
a day of rows every day, a thirtieth of itself at the default retention, which
PostgreSQL's default (vacuum at 20 % dead rows) would leave for about six days,
then vacuum with every index at once; at 2 % each day's deletions are vacuumed
the same day, in a pass of their own size.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REQUEUED = "requeued_at IS NOT NULL"
# (name, table, columns, where) of the indexes this revision adds.
INDEXES: tuple[tuple[str, str, list[str], str | None], ...] = (
    ("ix_schedule_runs_created_at", "schedule_runs", ["created_at"], None),
    ("ix_ingests_created_at", "ingests", ["created_at"], None),
    ("ix_cancel_requests_requested_at", "cancel_requests", ["requested_at"], None),
    ("ix_dead_letters_requeued", "dead_letters", ["requeued_at"], REQUEUED),
)


# The tables services/retention.py deletes from every day, and their settings.
PRUNED = ("schedule_runs", "ingests", "ingest_items", "dead_letters", "job_group_members")
PRUNED_AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": 0.02,
    "autovacuum_analyze_scale_factor": 0.02,
}


def upgrade() -> None:
    """Apply this revision."""
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        settings = ", ".join(f"{key} = {value}" for key, value in PRUNED_AUTOVACUUM.items())
        for table in PRUNED:
            # Only the table's catalogue entry changes: no rewrite, a moment's lock.
            op.execute(f"ALTER TABLE {table} SET ({settings})")
    for name, table, columns, where in INDEXES:
        condition = sa.text(where) if where else None
        if postgres:
            with op.get_context().autocommit_block():
                op.create_index(
                    name,
                    table,
                    columns,
                    postgresql_concurrently=True,
                    postgresql_where=condition,
                    if_not_exists=True,
                )
        else:
            op.create_index(name, table, columns, sqlite_where=condition)


def downgrade() -> None:
    """Revert this revision."""
    for name, table, _columns, _where in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    if op.get_bind().dialect.name == "postgresql":
        for table in PRUNED:
            op.execute(f"ALTER TABLE {table} RESET ({', '.join(PRUNED_AUTOVACUUM)})")
