"""Initial schema: tenants, their resources and ingests, and the record of every job.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23 09:07:27.462963
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic.
revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.base's column types: a revision never imports the models it predates.
# SQLite autoincrements only an INTEGER primary key; PostgreSQL gets a bigint.
BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# JSONB on PostgreSQL, plain JSON on SQLite.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# Server defaults are sa.func.now(), not text("now()"): it renders now() on PostgreSQL
# and CURRENT_TIMESTAMP on SQLite, which has no now().
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "tenants",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "resources",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("creation_date", TIMESTAMP, nullable=False),
        sa.Column("last_ingest_id", BIG_INT, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_resources_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.UniqueConstraint(
            "tenant_id", "resource_id", name=op.f("uq_resources_tenant_id_resource_id")
        ),
    )
    op.create_table(
        "ingests",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("source_url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("valid", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ingests_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingests")),
    )
    op.create_index(op.f("ix_ingests_tenant_id_created_at"), "ingests", ["tenant_id", "created_at"])
    op.create_index(op.f("ix_ingests_tenant_id_message_id"), "ingests", ["tenant_id", "message_id"])
    op.create_table(
        "ingest_items",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=False),
        sa.Column("ingest_id", BIG_INT, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ingest_id"],
            ["ingests.id"],
            name=op.f("fk_ingest_items_ingest_id_ingests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ingest_items_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_items")),
        sa.UniqueConstraint(
            "ingest_id", "position", name=op.f("uq_ingest_items_ingest_id_position")
        ),
    )
    op.create_index(
        op.f("ix_ingest_items_tenant_id_ingest_id_status"),
        "ingest_items",
        ["tenant_id", "ingest_id", "status"],
    )
    # No foreign key on tenant_id: a message naming an unknown tenant still gets a record.
    op.create_table(
        "jobs",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("args", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", TIMESTAMP, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "uq_ingest_items_accepted_resource",
        "ingest_items",
        ["tenant_id", "ingest_id", "resource_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'rejected'"),
        sqlite_where=sa.text("status <> 'rejected'"),
    )
    op.create_index(op.f("ix_jobs_tenant_id_status"), "jobs", ["tenant_id", "status"])
    op.create_index(op.f("ix_jobs_status_finished_at"), "jobs", ["status", "finished_at"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_jobs_status_finished_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_tenant_id_status"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("uq_ingest_items_accepted_resource", table_name="ingest_items")
    op.drop_index(op.f("ix_ingest_items_tenant_id_ingest_id_status"), table_name="ingest_items")
    op.drop_table("ingest_items")
    op.drop_index(op.f("ix_ingests_tenant_id_message_id"), table_name="ingests")
    op.drop_index(op.f("ix_ingests_tenant_id_created_at"), table_name="ingests")
    op.drop_table("ingests")
    op.drop_table("resources")
    op.drop_table("tenants")
