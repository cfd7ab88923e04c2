"""Groups with completion callbacks: `job_groups`, their finished members and completions;
an index of the running ingests.

Revision ID: 0007
Revises: 0006_running
Create Date: 2026-12-06 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006_running"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.base's types: JSONB and bigint on PostgreSQL, JSON and integer on SQLite.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "job_groups",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_groups")),
    )
    op.create_index("ix_job_groups_created_at", "job_groups", ["created_at"])
    op.create_table(
        "job_group_members",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("world", sa.String(40), nullable=False),
        sa.Column("tenant_id", BIGINT, nullable=True),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("dead", sa.Boolean(), nullable=False),
        sa.Column("callbacks", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_group_members")),
        sa.UniqueConstraint(
            "group_id",
            "world",
            "message_id",
            name=op.f("uq_job_group_members_group_id_world_message_id"),
        ),
    )
    op.create_index("ix_job_group_members_tenant_id", "job_group_members", ["tenant_id"])
    op.create_index("ix_job_group_members_created_at", "job_group_members", ["created_at"])
    op.create_table(
        "job_group_completions",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("world", sa.String(40), nullable=False),
        sa.Column("tenant_id", BIGINT, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=True),
        sa.Column("completed_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_group_completions")),
        sa.UniqueConstraint(
            "group_id", "world", name=op.f("uq_job_group_completions_group_id_world")
        ),
    )
    op.create_index("ix_job_group_completions_tenant_id", "job_group_completions", ["tenant_id"])


    # The ingest is a group of its items: the sweeper looks for running ingests.
    op.create_index(
        "ix_ingests_running",
        "ingests",
        ["created_at"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_ingests_running", table_name="ingests")
    op.drop_table("job_group_completions")
    op.drop_table("job_group_members")
    op.drop_table("job_groups")
