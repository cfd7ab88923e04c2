"""Tenant schedules: the schedules, their claimed slots, and the schedule on a job record.

Revision ID: 0003_schedules
Revises: 0002_guarantees
Create Date: 2026-11-23 10:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_schedules"
down_revision: str | Sequence[str] | None = "0002_guarantees"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.base's column types (see 0001_initial).
BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "schedules",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("args", JSON, nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("catch_up", sa.String(length=8), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("start_at", TIMESTAMP, nullable=True),
        sa.Column("end_at", TIMESTAMP, nullable=True),
        sa.Column("last_slot_at", TIMESTAMP, nullable=True),
        sa.Column("next_slot_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_schedules_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    op.create_index(op.f("ix_schedules_tenant_id_actor"), "schedules", ["tenant_id", "actor"])
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["next_slot_at"],
        postgresql_where=sa.text("enabled"),
        sqlite_where=sa.text("enabled"),
    )
    op.create_table(
        "schedule_runs",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("schedule_id", BIG_INT, nullable=False),
        sa.Column("slot_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_schedule_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_schedule_runs_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        sa.UniqueConstraint(
            "schedule_id", "slot_at", name=op.f("uq_schedule_runs_schedule_id_slot_at")
        ),
    )
    op.create_index(
        op.f("ix_schedule_runs_tenant_id_created_at"), "schedule_runs", ["tenant_id", "created_at"]
    )
    op.add_column("jobs", sa.Column("schedule_id", BIG_INT, nullable=True))
    op.add_column("jobs", sa.Column("slot_at", TIMESTAMP, nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("slot_at")
        batch.drop_column("schedule_id")
    op.drop_index(op.f("ix_schedule_runs_tenant_id_created_at"), table_name="schedule_runs")
    op.drop_table("schedule_runs")
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_index(op.f("ix_schedules_tenant_id_actor"), table_name="schedules")
    op.drop_table("schedules")
