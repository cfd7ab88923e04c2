"""Behind the publisher: confirmed rows deleted in batches, failures reported in one line,
and each failed message with an exception of its own (a shared one grows without end)."""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pika
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from db.migrate import upgrade_to_head
from db.models import OutboxMessage
from middleware.outbox_clearer import OutboxClearer
from services import outbox
from services.records import JobRecord
from tests.support import free_port, wait_for
from transport.publisher import Publisher, PublishFailed


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database's engine, autocommit as the send engine is."""
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def rows(engine: Engine, count: int) -> list[int]:
    """`count` outbox rows; their ids."""
    now = dt.datetime.now(dt.UTC)
    records = [
        JobRecord(f"m{n}", 1, "a", "q", {}, now, body=b"{}", wait_ms=0) for n in range(count)
    ]
    with Session(engine) as session, session.begin():
        ids = outbox.add_messages(session, records, now=now)
    return sorted(ids.values())


def remaining(engine: Engine) -> list[int]:
    """The ids of the rows still in the outbox."""
    with Session(engine) as session:
        return sorted(session.scalars(select(OutboxMessage.id)))


def test_confirmed_rows_are_deleted_and_failed_ones_left_with_one_log_line(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 10 rows handed to the publisher
    clearer = OutboxClearer(engine, batch_seconds=0.01)
    ids = rows(engine, 10)
    futures: list[Future[None]] = []
    for row_id in ids:
        future: Future[None] = Future()
        clearer.watch(row_id, future)
        futures.append(future)
    # When 6 are confirmed and 4 fail
    with caplog.at_level(logging.WARNING, logger="Outbox"):
        for n, future in enumerate(futures):
            if n < 6:
                future.set_result(None)
            else:
                future.set_exception(PublishFailed(f"message m{n}: nacked"))
        assert clearer.flush(timeout=5)
    # Then the 6 confirmed rows are gone, the 4 others wait for the sweeper
    assert remaining(engine) == ids[6:]
    assert clearer.outstanding == 0 and clearer.deleted == 6
    # And the failures made one line, however many they were
    lines = [r.getMessage() for r in caplog.records if "not published" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("4 message(s) not published (PublishFailed")


def test_every_message_a_publisher_cannot_send_fails_with_an_exception_of_its_own() -> None:
    # Given a publisher whose RabbitMQ is not there
    parameters = pika.ConnectionParameters("127.0.0.1", free_port(), connection_attempts=1)
    publisher = Publisher(
        parameters,
        queue_arguments=lambda name: {},
        reconnect_seconds=0.01,
        fail_after_connect_errors=1,
    )
    # When 200 messages are handed to it
    futures = [
        publisher.publish("q", "q", b"{}", message_id=f"m{n}", priority=None) for n in range(200)
    ]
    wait_for(lambda: all(f.done() for f in futures), timeout=20, what="every publish to fail")
    publisher.close(timeout=1)
    errors = [f.exception() for f in futures]
    # Then each failed with its own PublishFailed, so re-raising one grows no other's traceback
    assert all(isinstance(e, PublishFailed) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)
    formatted = []
    for future in futures:
        try:
            future.result()
        except PublishFailed as exc:
            formatted.append("".join(traceback.format_exception(exc)))
    assert max(map(len, formatted)) < 2 * min(map(len, formatted))
