"""Delivery guarantees: the outbox (held and delayed sends), dead letters, cancellation.

Revision ID: 0002_guarantees
Revises: 0001_initial
Create Date: 2026-11-23 09:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_guarantees"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of db.base's column types (see 0001_initial).
BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", BIG_INT, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=True),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("publish_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(op.f("ix_outbox_publish_at"), "outbox", ["publish_at"])
    op.create_table(
        "dead_letters",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", BIG_INT, nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("message", JSON, nullable=True),
        sa.Column("raw_body", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("requeued_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        op.f("ix_dead_letters_tenant_id_created_at"), "dead_letters", ["tenant_id", "created_at"]
    )
    op.create_index(
        op.f("ix_dead_letters_actor_created_at"), "dead_letters", ["actor", "created_at"]
    )
    op.create_index(
        op.f("ix_dead_letters_reason_created_at"), "dead_letters", ["reason", "created_at"]
    )
    op.create_index(op.f("ix_outbox_message_id"), "outbox", ["message_id"])
    op.create_table(
        "cancel_requests",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_cancel_requests")),
    )


def downgrade() -> None:
    op.drop_table("cancel_requests")
    op.drop_index(op.f("ix_outbox_message_id"), table_name="outbox")
    op.drop_index(op.f("ix_dead_letters_reason_created_at"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_actor_created_at"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_tenant_id_created_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index(op.f("ix_outbox_publish_at"), table_name="outbox")
    op.drop_table("outbox")
