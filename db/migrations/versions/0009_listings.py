"""Listings that stay fast on a large record: `jobs.created_at` and indexes that match the sorts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 20:30:00

Every listing (`taskyard jobs list`, `dead-letters list`, `health`) reads its
first page from an index in the order it prints, and pages on with a keyset
cursor (`--after`), never OFFSET.

Job records are listed by `created_at`, which nothing changes after the
insert: a page walk sees every record once even while jobs finish, and it is
the natural key of the time partitions the record is meant to move to (each
partition then carries the same indexes, and the newest partition answers the
first page).  `updated_at` is not indexed, so it does not stop an update from
being heap-only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns) of the indexes this revision adds.
INDEXES = (
    ("ix_jobs_created_at", "jobs", ["created_at"]),
    ("ix_jobs_tenant_id_created_at", "jobs", ["tenant_id", "created_at"]),
    ("ix_jobs_tenant_id_status_created_at", "jobs", ["tenant_id", "status", "created_at"]),
    ("ix_jobs_status_created_at", "jobs", ["status", "created_at"]),
    ("ix_jobs_actor_created_at", "jobs", ["actor", "created_at"]),
    # --tenant with --actor: a small tenant's rare actor is neither index's short range.
    ("ix_jobs_tenant_id_actor_created_at", "jobs", ["tenant_id", "actor", "created_at"]),
    ("ix_dead_letters_created_at", "dead_letters", ["created_at"]),
)


def upgrade() -> None:
    """Apply this revision."""
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    # A record written before this revision was created when it was sent (or, without
    # a send time, when it was last written): as close as the old schema knows.
    op.execute("UPDATE jobs SET created_at = COALESCE(enqueued_at, updated_at)")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "created_at",
            existing_type=sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        )
        # Replaced by (tenant_id, status, created_at), which serves what it served.
        batch.drop_index("ix_jobs_tenant_id_status")
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    if postgres:
        # The planner's estimates for the new column and indexes, before the first listing.
        op.execute("ANALYZE jobs")
        op.execute("ANALYZE dead_letters")


def downgrade() -> None:
    """Revert this revision."""
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_tenant_id_status", ["tenant_id", "status"])
        batch.drop_column("created_at")
