"""Workers' heartbeats, the tenant's locker, integrations and what they sync, webhook URLs.

Revision ID: 0004_integrations
Revises: 0003_schedules
Create Date: 2026-11-23 12:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_integrations"
down_revision: str | Sequence[str] | None = "0003_schedules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.base's column types (see 0001_initial).
BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
    ]


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def _integration_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["integration_id"],
        ["integrations.id"],
        name=f"fk_{table}_integration_id_integrations",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("tenants", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("in_progress", sa.Integer(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name="pk_workers"),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])
    op.create_table(
        "locker_entries",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        *_stamps(),
        _tenant_fk("locker_entries"),
        sa.PrimaryKeyConstraint("id", name="pk_locker_entries"),
        sa.UniqueConstraint("tenant_id", "key", name="uq_locker_entries_tenant_id_key"),
    )
    op.create_table(
        "integrations",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("last_synced_at", TIMESTAMP, nullable=True),
        sa.Column("last_status", sa.String(length=16), nullable=True),
        sa.Column("last_summary", JSON, nullable=True),
        *_stamps(),
        _tenant_fk("integrations"),
        sa.PrimaryKeyConstraint("id", name="pk_integrations"),
    )
    op.create_index("ix_integrations_tenant_id_kind", "integrations", ["tenant_id", "kind"])
    op.create_table(
        "github_members",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("integration_id", BIG_INT, nullable=False),
        sa.Column("github_id", BIG_INT, nullable=False),
        sa.Column("login", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=True),
        sa.Column("site_admin", sa.Boolean(), nullable=False),
        *_stamps(),
        _tenant_fk("github_members"),
        _integration_fk("github_members"),
        sa.PrimaryKeyConstraint("id", name="pk_github_members"),
        sa.UniqueConstraint(
            "integration_id", "github_id", name="uq_github_members_integration_id_github_id"
        ),
    )
    op.create_table(
        "github_repositories",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("integration_id", BIG_INT, nullable=False),
        sa.Column("github_id", BIG_INT, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("full_name", sa.String(length=400), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("default_branch", sa.String(length=200), nullable=True),
        sa.Column("html_url", sa.Text(), nullable=True),
        *_stamps(),
        _tenant_fk("github_repositories"),
        _integration_fk("github_repositories"),
        sa.PrimaryKeyConstraint("id", name="pk_github_repositories"),
        sa.UniqueConstraint(
            "integration_id", "github_id", name="uq_github_repositories_integration_id_github_id"
        ),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("github_repositories")
    op.drop_table("github_members")
    op.drop_index("ix_integrations_tenant_id_kind", table_name="integrations")
    op.drop_table("integrations")
    op.drop_table("locker_entries")
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("webhook_url")
