"""An index of the dead letters waiting for an operator: their count and their requeue order.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 01:00:00

The overview (web and `taskyard summary`) shows how many dead letters wait to be
requeued at every refresh, and `dead-letters requeue --all` counts them, then
takes them oldest first.  Those are the letters not requeued yet that hold a
decoded message (`services.dead_letters._requeueable`).  Counting them read the
whole table, a row at a time (a dead letter that is never requeued is kept until
an operator purges it, so the table only grows).

This index holds exactly those letters, by (tenant_id, created_at): the count
of all of them, or of a tenant's, is an index-only scan of their entries alone,
and a tenant's requeue takes them in the index's order.  A letter leaves it
when requeued.

On PostgreSQL it is built `CONCURRENTLY`: workers go on dead-lettering while it
is made.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_dead_letters_waiting"
COLUMNS = "(tenant_id, created_at)"
WAITING = "requeued_at IS NULL AND message IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # (An interrupted concurrent build leaves an invalid index behind: start over.)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")
            op.execute(f"CREATE INDEX CONCURRENTLY {NAME} ON dead_letters {COLUMNS} WHERE {WAITING}")
    else:
        op.execute(f"CREATE INDEX {NAME} ON dead_letters {COLUMNS} WHERE {WAITING}")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {NAME}")
