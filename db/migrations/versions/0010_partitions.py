"""`jobs` becomes a table partitioned by day, by range of its UUIDv7 `message_id`.

See services/partitions.py for the layout and services/message_ids.py for
the ids.  The records already there keep their ids (Dramatiq's uuid4, which
carry no time) and go to the default partition, which retention empties with
batched DELETEs as before; new records go to the partition of the day they
were sent, dropped whole once expired.

The upgrade copies every record into the new table in one transaction (its
time grows with the table; the workers must be stopped, as for any migration
that rewrites a table), keeps every index the old table had, and creates
today's partition and the next days'.  PostgreSQL only: SQLite (the unit
tests' database) keeps one table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:00:00
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.partitions import DEFAULT_PARTITION, ensure_partitions

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "jobs_unpartitioned"
NEW = "jobs_partitioned"


def _secondary_indexes(bind: sa.Connection, table: str) -> list[str]:
    """The CREATE INDEX statements of `table`'s indexes, its primary key's excepted."""
    rows = bind.execute(
        sa.text(
            "SELECT i.indexdef FROM pg_indexes i "
            "JOIN pg_class c ON c.relname = i.indexname "
            "JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE i.schemaname = current_schema() AND i.tablename = :table "
            "AND NOT x.indisprimary ORDER BY i.indexname"
        ),
        {"table": table},
    )
    return [row[0] for row in rows]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    indexes = _secondary_indexes(bind, "jobs")
    # Ids compare byte by byte ("C"), so a UUIDv7's text sorts by its time.
    op.execute('ALTER TABLE jobs ALTER COLUMN message_id TYPE varchar(36) COLLATE "C"')
    op.execute(
        f"CREATE TABLE {NEW} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (message_id)"
    )
    op.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT pk_{NEW} PRIMARY KEY (message_id)")
    op.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {NEW} DEFAULT")
    op.execute(f"INSERT INTO {NEW} SELECT * FROM jobs")
    op.execute("DROP TABLE jobs")
    op.execute(f"ALTER TABLE {NEW} RENAME TO jobs")
    op.execute(f"ALTER TABLE jobs RENAME CONSTRAINT pk_{NEW} TO pk_jobs")
    for statement in indexes:
        # A partitioned table's index is defined `ON ONLY` the parent.
        op.execute(statement.replace(" ON ONLY ", " ON "))
    # Today's partition and the next days' (the daily maintenance job keeps them coming).
    ensure_partitions(bind, today=dt.datetime.now(dt.UTC).date(), commit=False)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    indexes = _secondary_indexes(bind, "jobs")
    op.execute(f"CREATE TABLE {OLD} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"INSERT INTO {OLD} SELECT * FROM jobs")
    op.execute("DROP TABLE jobs")
    op.execute(f"ALTER TABLE {OLD} RENAME TO jobs")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT pk_jobs PRIMARY KEY (message_id)")
    op.execute("ALTER TABLE jobs ALTER COLUMN message_id TYPE varchar(36)")
    for statement in indexes:
        op.execute(statement.replace(" ON ONLY ", " ON "))
