"""Each worker's heartbeat row says what its threads run: `workers.running`.

Revision ID: 0006_running
Revises: 0005_deliveries
Create Date: 2026-12-12 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_running"
down_revision: str | Sequence[str] | None = "0005_deliveries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of db.base's JSON type: JSONB on PostgreSQL, plain JSON on SQLite.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Apply this revision."""
    # A constant default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("workers") as batch:
        batch.add_column(
            sa.Column("running", JSON, server_default=sa.text("'[]'"), nullable=False)
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("running")
