"""An outbox row that cannot be decoded becomes a dead letter; the rows behind it are published.

Left in place, a hundred such rows at the head of the outbox would be claimed
again by every batch, and nothing behind them would ever go.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.models import JOB_DEAD, JOB_QUEUED, DeadLetter, Job, OutboxMessage
from tests.integration.test_outbox_refusals import (  # noqa: F401  (the fixtures)
    Side,
    side,
    side_database,
)
from tests.integration.test_publisher_refusals import count

pytestmark = pytest.mark.integration

# Bodies Taskyard never writes, as a damaged row (or a hand-edited one) may hold them.
BAD_BODIES = ["not json", "null", "[]", '{"actor_name": "x"}', '{"args": 1, ', "\u00ff\ufffd"]
# A sweep that takes longer than this spins.
SWEEP_SECONDS = 30.0


def test_a_hundred_undecodable_rows_at_the_head_become_dead_letters_and_the_rest_is_published(
    side: Side,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 100 undecodable rows due before anything else, each with its queued job
    # record, and then three good messages behind them, all for one tenant
    tenant = side.tenant()
    queue = side.settings.tenant_queue(tenant)
    now = dt.datetime.now(dt.UTC)
    bad_ids = [str(uuid.uuid4()) for _ in range(100)]
    with Session(side.engine) as session, session.begin():
        session.execute(
            insert(Job),
            [
                {"message_id": m, "tenant_id": tenant, "actor": side.probe.actor_name,
                 "queue": queue, "args": {"tenant_id": tenant}, "status": JOB_QUEUED}
                for m in bad_ids
            ],
        )  # fmt: skip
        session.execute(
            insert(OutboxMessage),
            [
                {"message_id": m, "tenant_id": tenant, "queue": queue,
                 "body": BAD_BODIES[n % len(BAD_BODIES)],
                 "publish_at": now - dt.timedelta(hours=1, seconds=-n)}
                for n, m in enumerate(bad_ids)
            ],
        )  # fmt: skip
    good = [side.probe.message(tenant_id=tenant, n=n) for n in range(3)]
    for message in good:
        assert side.outbox.park(side.broker, message, 0)
    monkeypatch.setattr(side.outbox, "batch_size", 100)

    # When the outbox is swept (in a thread, so that a sweep that spins fails the test)
    swept: list[int] = []
    sweeper = threading.Thread(
        target=lambda: swept.append(side.outbox.sweep(side.broker, now=dt.datetime.now(dt.UTC))),
        daemon=True,
    )
    sweeper.start()
    sweeper.join(SWEEP_SECONDS)

    # Then the sweep ended, and the good messages were published: their rows are gone
    # (a row is deleted only once RabbitMQ confirmed it). The database is these tests'
    # own, so no other sweeper took any of the rows.
    assert not sweeper.is_alive(), "the sweep never ended: it claims the same rows for ever"
    assert swept == [3], "the sweep raised" if not swept else f"the sweep published {swept}"
    assert side.rows(queue) == []
    assert count(side.settings, queue) == 3
    # And each undecodable row is a dead letter of its tenant, with why and its raw body
    with Session(side.engine) as session:
        letters = {
            d.message_id: d
            for d in session.scalars(select(DeadLetter).where(DeadLetter.message_id.in_(bad_ids)))
        }
        records = {
            j.message_id: j for j in session.scalars(select(Job).where(Job.message_id.in_(bad_ids)))
        }
    assert set(letters) == set(bad_ids)
    for n, message_id in enumerate(bad_ids):
        letter = letters[message_id]
        assert (letter.reason, letter.tenant_id, letter.queue) == ("undecodable", tenant, queue)
        assert letter.message is None
        assert letter.raw_body == BAD_BODIES[n % len(BAD_BODIES)]
        assert letter.error is not None and "cannot be decoded" in letter.error
        # And its job record says it is dead, and why, rather than queued for ever
        assert records[message_id].status == JOB_DEAD
        assert records[message_id].error == letter.error
