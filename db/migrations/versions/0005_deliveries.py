"""Jobs count their redelivered starts, so a message that kills its worker cannot do so for ever.

Revision ID: 0005_deliveries
Revises: 0004_integrations
Create Date: 2026-12-06 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_deliveries"
down_revision: str | Sequence[str] | None = "0004_integrations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # A constant default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("deliveries", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deliveries")
