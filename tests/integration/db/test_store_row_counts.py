"""The store's row counts on PostgreSQL read no table: the outbox, vacuumed empty and
then filled, is read from the statistics, not counted through its dead rows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, pool, text

from services import store
from tests.support import private_database, require_servers

pytestmark = pytest.mark.integration


@pytest.fixture
def own_engine() -> Iterator[Engine]:
    require_servers()
    with private_database() as url:
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            yield engine
        finally:
            engine.dispose()


def outbox_rows(engine: Engine) -> tuple[int, int]:
    """The outbox's rows as the store reads them, and how many scans of it that reading made."""
    with engine.begin() as connection:
        stats = store.store_stats(connection, retention_days=30)
        scans = connection.scalar(text("SELECT pg_stat_get_xact_numscans('outbox'::regclass)"))
    return next(t["rows"] for t in stats["tables"] if t["table"] == "outbox"), int(scans or 0)


def wait_for_rows(engine: Engine, expected: int, timeout: float = 10.0) -> tuple[int, int]:
    """`outbox_rows`, once the rows are `expected` (or the last reading)."""
    deadline = time.monotonic() + timeout
    rows, scans = outbox_rows(engine)
    while rows != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        rows, scans = outbox_rows(engine)
    return rows, scans


def fill_outbox(engine: Engine, rows: int, *, deleted: int = 0) -> None:
    """Vacuum the outbox while empty (its pages counted as none), then give it `rows` rows
    and delete `deleted` of them, the statistics flushed when the connection goes idle."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # (no autovacuum in this database of the test's own: it would count the pages)
        connection.execute(text("ALTER TABLE outbox SET (autovacuum_enabled = false)"))
        connection.execute(text("VACUUM outbox"))
        connection.execute(
            text(
                "INSERT INTO outbox (message_id, queue, body, publish_at) "
                "SELECT 'm' || g, 'q', '{}', now() FROM generate_series(1, :rows) AS g"
            ),
            {"rows": rows},
        )
        connection.execute(
            text("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox LIMIT :n)"), {"n": deleted}
        )
        connection.execute(text("SELECT pg_stat_force_next_flush()"))
        assert (
            connection.scalar(text("SELECT relpages FROM pg_class WHERE relname = 'outbox'")) == 0
        )


def test_a_table_whose_pages_were_never_counted_is_read_from_the_statistics(
    own_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an outbox vacuumed while empty (its pages counted as none), then given 50 rows
    # of which 20 are deleted: 30 live rows and 20 dead ones in pages nobody has counted
    fill_outbox(own_engine, 50, deleted=20)
    # (a count would stop at 10)
    monkeypatch.setattr(store, "COUNT_CAP", 10)

    # When the store reads its tables
    rows, scans = wait_for_rows(own_engine, 30)

    # Then the outbox's rows are the statistics' live rows, read without a scan of it
    assert rows == 30
    assert scans == 0


def test_a_table_whose_statistics_were_reset_is_counted(
    own_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an outbox with 50 rows in pages never counted, and its statistics reset since
    fill_outbox(own_engine, 50)
    wait_for_rows(own_engine, 50)
    with own_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SELECT pg_stat_reset_single_table_counters('outbox'::regclass)"))
    monkeypatch.setattr(store, "COUNT_CAP", 10)

    # When the store reads its tables
    rows, scans = wait_for_rows(own_engine, 10)

    # Then the outbox is counted, up to the cap: the statistics no longer know its rows
    assert rows == 10
    assert scans == 1
