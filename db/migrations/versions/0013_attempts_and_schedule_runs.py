"""Every failed attempt of a job on its record; a schedule's runs found by their slot.

- `jobs.attempt_history`: the failed attempts of a job, oldest first, appended
  by the statement that records each failure (services/jobs.py
  `record_failure`); NULL for a job that never failed, so a job that succeeds
  at once writes nothing more than before.  Existing records keep NULL: their
  earlier attempts were not kept (the console shows their last error alone).
- `ix_jobs_schedule_slot`: the records of a schedule's runs, by (schedule,
  slot), for a schedule's last runs with their outcome (the schedules page).
  Partial: only the records a schedule sent are in it.  On PostgreSQL it is
  made on the partitioned table, so each partition (made now or later) gets
  its own.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of db.base's JSON type: JSONB on PostgreSQL, JSON on SQLite.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SCHEDULED = "schedule_id IS NOT NULL"


def upgrade() -> None:
    """Apply this revision."""
    # Nullable, no default: PostgreSQL adds the column without rewriting the table.
    op.add_column("jobs", sa.Column("attempt_history", JSON, nullable=True))
    op.create_index(
        "ix_jobs_schedule_slot",
        "jobs",
        ["schedule_id", "slot_at"],
        postgresql_where=sa.text(SCHEDULED),
        sqlite_where=sa.text(SCHEDULED),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_jobs_schedule_slot", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempt_history")
