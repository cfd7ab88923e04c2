"""The job record's status indexes hold only the records that are not `succeeded`.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 10:15:00

`jobs list --status S` (with or without `--tenant`) reads its page from
(status, created_at) or (tenant_id, status, created_at).  Most records are
succeeded, and the listing of succeeded records finds its page as fast in the
creation-time indexes, (created_at) and (tenant_id, created_at), filtered on
the status: nearly every record read is one.  So both status indexes leave
the succeeded records out (`WHERE status <> 'succeeded'`):

- a job's final update to succeeded inserts into neither (two index
  insertions fewer per job);
- a day's partition is smaller by their entries, which the retention's DROP
  frees (its time is bound by the bytes freed).

The listings of the other states (dead, queued, retrying, ...) and the stuck
records of `health` read the partial indexes: PostgreSQL proves that
`status = 'dead'` or `status IN (...)` implies the predicate.

On PostgreSQL, `jobs` is partitioned by day (0010), and an index of a
partitioned table cannot be built `CONCURRENTLY`.  Each new index is made
`ON ONLY jobs` (not valid yet), built `CONCURRENTLY` on every partition (the
table keeps taking writes), and each partition's attached to it, which makes
it valid; then the old index is dropped (a moment's lock) and the new one
takes its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.partitions import is_partitioned

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_SUCCEEDED = "status <> 'succeeded'"
# (name, columns) of the two indexes this revision makes partial.
INDEXES = (
    ("ix_jobs_status_created_at", ["status", "created_at"]),
    ("ix_jobs_tenant_id_status_created_at", ["tenant_id", "status", "created_at"]),
)


def _partitions() -> list[str]:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('jobs') ORDER BY c.relname"
        )
    )
    return [name for (name,) in rows]


def _rebuild_partitioned(name: str, columns: list[str], where: str) -> None:
    """Make `name` on `jobs` anew with `where`, the table taking writes meanwhile."""
    new = f"{name}_new"
    listed = ", ".join(columns)
    condition = f" WHERE {where}"
    op.execute(f"DROP INDEX IF EXISTS {new}")
    op.execute(f"CREATE INDEX {new} ON ONLY jobs ({listed}){condition}")
    # Named as PostgreSQL names a partition's index, with what it holds: no clash with
    # the old index's partitions' (`..._idx`), dropped with it below.
    for partition in _partitions():
        child = f"{partition}_{'_'.join(columns)}_partial"
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {child}")
            op.execute(f"CREATE INDEX CONCURRENTLY {child} ON {partition} ({listed}){condition}")
        op.execute(f"ALTER INDEX {new} ATTACH PARTITION {child}")
    op.execute(f"DROP INDEX {name}")
    op.execute(f"ALTER INDEX {new} RENAME TO {name}")


def upgrade() -> None:
    """Apply this revision."""
    partitioned = is_partitioned(op.get_bind())
    for name, columns in INDEXES:
        if partitioned:
            _rebuild_partitioned(name, columns, NOT_SUCCEEDED)
            continue
        op.drop_index(name, table_name="jobs")
        condition = sa.text(NOT_SUCCEEDED)
        op.create_index(name, "jobs", columns, postgresql_where=condition, sqlite_where=condition)


def downgrade() -> None:
    """Revert this revision: the whole indexes again, built in the migration's transaction
    (the table's writes wait for them)."""
    for name, columns in INDEXES:
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", columns)
