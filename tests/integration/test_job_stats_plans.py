"""The tenants page's waiting counts on PostgreSQL: right, and read from the tenant's waiting
records alone (the index of the records not succeeded), not from every record of the window."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.orm import Session

from services.job_stats import waiting_by_tenant, waiting_query
from services.message_ids import new_message_id
from tests.support import private_database

pytestmark = pytest.mark.integration


@pytest.fixture
def own_engine() -> Iterator[Engine]:
    """A database of this test's own (its plans must not depend on other tests' records)."""
    with private_database() as url:
        made = create_engine(url, poolclass=pool.NullPool)
        yield made
        made.dispose()


def test_waiting_counts_per_tenant_read_only_the_waiting_records(own_engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = (
        [
            (tenant, status)
            for tenant, statuses in ((1, ["queued", "queued", "retrying"]), (2, ["queued"]))
            for status in statuses
        ]
        + [(1, "succeeded")] * 200
        + [(3, "succeeded")] * 50
    )
    with own_engine.begin() as connection:
        for tenant, status in rows:
            connection.execute(
                text(
                    "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, "
                    "attempts, created_at) VALUES (:id, :tenant, 'a', 'q', '{}', :status, 0, :at)"
                ),
                {"id": new_message_id(), "tenant": tenant, "status": status, "at": now},
            )
        connection.execute(text("ANALYZE jobs"))
    since = now - dt.timedelta(hours=1)
    with Session(own_engine) as session:
        assert waiting_by_tenant(session, since=since, tenant_ids=[1, 2, 3, 4]) == {1: 3, 2: 1}
        assert waiting_by_tenant(session, since=since, tenant_ids=[]) == {}
        assert waiting_by_tenant(session, since=since) == {1: 3, 2: 1}
    with own_engine.connect() as connection:
        connection.execute(text("SET enable_seqscan = off"))
        connection.execute(text("SET enable_bitmapscan = off"))
        statement = waiting_query(since, [1, 2, 3, 4])
        sql = str(statement.compile(connection, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars())
    assert "tenant_id_status_created_at" in plan, plan
