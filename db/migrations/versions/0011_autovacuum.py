"""Autovacuum settings on every partition of `jobs` (and its default partition).

Why these values: see `AUTOVACUUM` in services/partitions.py.  PostgreSQL keeps
no autovacuum setting on a partitioned table, so each partition carries its
own: this revision sets them on the partitions that exist, and
`services.partitions.create_partition` on every partition made after it.
PostgreSQL only: SQLite (the unit tests' database) has no autovacuum.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.partitions import AUTOVACUUM, TABLE, autovacuum_clause

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partitions(bind: sa.Connection) -> list[str]:
    rows = bind.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:table) ORDER BY c.relname"
        ),
        {"table": TABLE},
    )
    return [row[0] for row in rows]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for name in _partitions(bind):
        # Only the table's catalogue entry changes: no rewrite, a moment's lock.
        op.execute(f"ALTER TABLE {name} SET ({autovacuum_clause()})")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for name in _partitions(bind):
        op.execute(f"ALTER TABLE {name} RESET ({', '.join(AUTOVACUUM)})")
