"""An ingest item on the real PostgreSQL: one statement per item, and who checks for completion."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import ITEM_PENDING, ITEM_PROCESSED, Ingest, IngestItem, Resource
from services.errors import NotFound
from services.ingest import may_complete
from services.resources import TAIL_ITEMS, process_item
from services.tenants import create_tenant

pytestmark = pytest.mark.integration


def resource(resource_id: str, name: str = "Alpha") -> dict[str, Any]:
    return {"id": resource_id, "name": name, "creation_date": "2024-01-02T03:04:05+00:00"}


def new_ingest(sessions: sessionmaker[Session], count: int, tenant_id: int | None = None) -> Any:
    """(tenant id, ingest id, item ids) of a running ingest with `count` pending items."""
    run = uuid.uuid4().hex[:8]
    with sessions.begin() as session:
        if tenant_id is None:
            tenant_id = create_tenant(session, f"items-{run}").id
        ingest = Ingest(tenant_id=tenant_id, source_url="http://feed.test/", valid=count)
        session.add(ingest)
        session.flush()
        session.add_all(
            IngestItem(
                tenant_id=tenant_id,
                ingest_id=ingest.id,
                position=i,
                resource_id=f"{run}-{i}",
                status=ITEM_PENDING,
            )
            for i in range(count)
        )
    return tenant_id, ingest.id, [f"{run}-{i}" for i in range(count)]


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """The statements the engine sends while the test runs (BEGIN and COMMIT aside)."""
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    yield sent
    event.remove(engine, "before_cursor_execute", count)


def test_a_pending_item_is_processed_in_one_statement_with_its_resource(
    sessions: sessionmaker[Session], statements: list[str]
) -> None:
    tenant_id, ingest_id, ids = new_ingest(sessions, 2)
    with sessions() as session:
        statements.clear()
        done = process_item(session, tenant_id, ingest_id, resource(ids[0]))
        # One round trip (the PREPARE is once per server connection).
        assert len([s for s in statements if not s.startswith("PREPARE")]) == 1
        session.commit()
    assert done.result == {"resource_id": ids[0], "changed": True}
    with sessions() as session:
        status = session.scalar(select(IngestItem.status).where(IngestItem.resource_id == ids[0]))
        stored = session.scalar(select(Resource).where(Resource.resource_id == ids[0]))
    assert status == ITEM_PROCESSED
    assert stored is not None and (stored.tenant_id, stored.name) == (tenant_id, "Alpha")
    assert stored.last_ingest_id == ingest_id
    assert stored.creation_date == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    # Again (a redelivered copy): nothing changes.
    with sessions.begin() as session:
        again = process_item(session, tenant_id, ingest_id, resource(ids[0], "Other"))
    assert again.result == {"resource_id": ids[0], "changed": False}
    with sessions() as session:
        name = session.scalar(select(Resource.name).where(Resource.resource_id == ids[0]))
    assert name == "Alpha"


def test_another_tenants_ingest_is_not_found_and_left_alone(
    sessions: sessionmaker[Session],
) -> None:
    _owner, ingest_id, ids = new_ingest(sessions, 1)
    other, _, _ = new_ingest(sessions, 1)
    with sessions() as session, pytest.raises(NotFound):
        process_item(session, other, ingest_id, resource(ids[0]))
    with sessions() as session:
        status = session.scalar(select(IngestItem.status).where(IngestItem.resource_id == ids[0]))
        stored = session.scalar(select(Resource.id).where(Resource.resource_id == ids[0]))
    assert status == ITEM_PENDING and stored is None


def test_the_same_content_in_a_later_ingest_is_unchanged_but_attributed(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, first, ids = new_ingest(sessions, 1)
    with sessions.begin() as session:
        process_item(session, tenant_id, first, resource(ids[0]))
    with sessions.begin() as session:
        later = Ingest(tenant_id=tenant_id, source_url="http://feed.test/", valid=1)
        session.add(later)
        session.flush()
        session.add(
            IngestItem(tenant_id=tenant_id, ingest_id=later.id, position=0, resource_id=ids[0])
        )
    with sessions() as session:
        before = session.scalar(select(Resource).where(Resource.resource_id == ids[0]))
    with sessions.begin() as session:
        same = process_item(session, tenant_id, later.id, resource(ids[0]))
    with sessions() as session:
        after = session.scalar(select(Resource).where(Resource.resource_id == ids[0]))
    assert same.result["changed"] is False
    assert before is not None and after is not None
    assert (after.last_ingest_id, after.updated_at) == (later.id, before.updated_at)

    with sessions.begin() as session:
        session.add(
            IngestItem(
                tenant_id=tenant_id, ingest_id=later.id, position=1, resource_id=f"{ids[0]}-x"
            )
        )
    with sessions.begin() as session:
        process_item(session, tenant_id, later.id, resource(f"{ids[0]}-x"))
    with sessions.begin() as session:
        session.execute(
            IngestItem.__table__.update()
            .where(IngestItem.ingest_id == first)
            .values(status=ITEM_PENDING)
        )
    with sessions.begin() as session:
        changed = process_item(session, tenant_id, first, resource(ids[0], "Renamed"))
    assert changed.result["changed"] is True


def test_only_an_item_that_saw_fewer_than_the_tail_pending_may_be_the_last(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, ingest_id, ids = new_ingest(sessions, TAIL_ITEMS + 1)
    with sessions.begin() as session:
        first = process_item(session, tenant_id, ingest_id, resource(ids[0]))
    with sessions.begin() as session:
        second = process_item(session, tenant_id, ingest_id, resource(ids[1]))
    assert (first.may_be_last, second.may_be_last) == (False, True)


def checked_in_thread(sessions: sessionmaker[Session], tenant_id: int, ingest_id: int) -> Any:
    """Run `may_complete` in a thread (rolled back, as the actor does); its answer when it ends."""
    answer: list[bool] = []

    def check() -> None:
        with sessions() as session:
            answer.append(may_complete(session, tenant_id, ingest_id))

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    return thread, answer


def test_the_check_waits_for_an_item_in_flight_then_finds_the_ingest_done(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, ingest_id, ids = new_ingest(sessions, 2)
    in_flight = sessions()
    try:
        process_item(in_flight, tenant_id, ingest_id, resource(ids[0]))  # not committed yet
        with sessions.begin() as session:
            process_item(session, tenant_id, ingest_id, resource(ids[1]))
        thread, answer = checked_in_thread(sessions, tenant_id, ingest_id)
        thread.join(0.5)
        assert thread.is_alive() and answer == []  # waiting for the item in flight
        in_flight.commit()
    finally:
        in_flight.close()
    thread.join(10)
    assert answer == [True]


def test_the_check_answers_at_once_while_an_item_has_not_started(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, ingest_id, ids = new_ingest(sessions, 2)
    in_flight = sessions()
    try:
        # The first item runs and has not committed; the second has not started.
        process_item(in_flight, tenant_id, ingest_id, resource(ids[0]))
        started = time.monotonic()
        thread, answer = checked_in_thread(sessions, tenant_id, ingest_id)
        thread.join(5)
        assert answer == [False] and time.monotonic() - started < 5
    finally:
        in_flight.rollback()
        in_flight.close()
