"""Migration 0010 moves a database filled by the old schema to the partitioned `jobs`
without losing or changing a record, keeps its indexes, and goes back the same way."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, make_url, pool, text

from db.migrate import alembic_config, ensure_database
from services.message_ids import minted_at, new_message_id
from services.partitions import AUTOVACUUM, DEFAULT_PARTITION, partition_name, partitions
from settings import Settings

pytestmark = pytest.mark.integration

BEFORE = "0009"
COLUMNS = "message_id, tenant_id, actor, queue, args, status, attempts, enqueued_at, error, result"


@pytest.fixture
def old_database(settings: Settings) -> Iterator[tuple[str, Engine]]:
    """A database of its own at the revision before the partitions; dropped afterwards."""
    name = f"taskyard_test_part_{uuid.uuid4().hex[:8]}"
    url = make_url(settings.database_url).set(database=name).render_as_string(hide_password=False)
    ensure_database(url)
    command.upgrade(alembic_config(url), BEFORE)
    engine = create_engine(url, poolclass=pool.NullPool)
    yield url, engine
    engine.dispose()
    server = create_engine(
        make_url(url).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=pool.NullPool,
    )
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def autovacuum_of(engine: Engine, table: str) -> dict[str, str]:
    """The autovacuum storage parameters `table` carries."""
    with engine.connect() as connection:
        options = connection.scalar(
            text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
        )
    pairs = (option.split("=", 1) for option in options or [])
    return {key: value for key, value in pairs if key.startswith("autovacuum")}


def records(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {COLUMNS} FROM jobs ORDER BY message_id"))
        return [tuple(row) for row in rows]


def test_every_record_survives_the_move_and_the_way_back(
    old_database: tuple[str, Engine],
) -> None:
    url, engine = old_database
    # Given records written by the old schema: every status, results, errors, a tenant
    with engine.begin() as connection:
        for n in range(2_000):
            connection.execute(
                text(
                    "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, "
                    "attempts, enqueued_at, error, result, deliveries) VALUES (:m, :t, 'a', 'q', "
                    "CAST(:args AS jsonb), :s, 1, :e, :err, CAST(:r AS jsonb), 0)"
                ),
                {
                    "m": str(uuid.uuid4()),
                    "t": n % 7 or None,
                    "args": f'{{"n": {n}}}',
                    "s": ("queued", "succeeded", "dead", "retrying")[n % 4],
                    "e": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=n),
                    "err": "boom" if n % 4 == 2 else None,
                    "r": f'{{"n": {n}}}' if n % 4 == 1 else None,
                },
            )
        connection.execute(text("CREATE INDEX ix_jobs_extra_actor ON jobs (actor)"))
    before = records(engine)

    # When the migrations run (the partitions first, then their autovacuum settings)
    command.upgrade(alembic_config(url), "0010")
    assert autovacuum_of(engine, DEFAULT_PARTITION) == {}
    command.upgrade(alembic_config(url), "head")

    # Then every record is there, unchanged, in the default partition (no time in its id)
    assert records(engine) == before
    with engine.connect() as connection:
        assert connection.scalar(text(f"SELECT count(*) FROM {DEFAULT_PARTITION}")) == 2_000
        indexes = set(
            connection.scalars(text("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'"))
        )
        kind = connection.scalar(text("SELECT relkind FROM pg_class WHERE relname = 'jobs'"))
    assert kind == "p" and {"pk_jobs", "ix_jobs_extra_actor"} <= indexes
    # And every partition there carries the autovacuum settings
    expected = {key: str(value) for key, value in AUTOVACUUM.items()}
    with engine.connect() as connection:
        names = [DEFAULT_PARTITION, *partitions(connection).values()]
    assert len(names) >= 2
    assert all(autovacuum_of(engine, name) == expected for name in names)

    # And a new record goes to today's partition
    minted = new_message_id()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, actor, queue, args, status, attempts, deliveries) "
                "VALUES (:m, 'a', 'q', '{}', 'queued', 0, 0)"
            ),
            {"m": minted},
        )
        found = connection.scalar(
            text("SELECT tableoid::regclass::text FROM jobs WHERE message_id = :m"), {"m": minted}
        )
    day = minted_at(minted)
    assert day is not None and found == partition_name(day.date())

    # And the way back keeps every record too
    command.downgrade(alembic_config(url), BEFORE)
    after = records(engine)
    assert len(after) == 2_001 and [r for r in after if r[0] != minted] == before
