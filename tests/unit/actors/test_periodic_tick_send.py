"""A send RabbitMQ cannot take waits in the outbox; one PostgreSQL cannot record raises,
except periodiq's tick, which is logged and dropped so that periodiq keeps running."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from periodiq import cron
from sqlalchemy import select

from actors.base import taskyard_actor
from brokers import build_broker
from db.migrate import upgrade_to_head
from db.models import OutboxMessage
from middleware.outbox import find_outbox
from services.errors import SendFailed
from settings import Settings


class BrokerDown(ConnectionError):
    """What a publish raises while RabbitMQ is away."""


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stub broker wired like production whose every publish fails."""
    url = f"sqlite:///{tmp_path / 'taskyard.sqlite3'}"
    upgrade_to_head(url)
    broker = build_broker(Settings(broker_url="stub://", database_url=url))

    def enqueue(message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        raise BrokerDown("cannot connect to RabbitMQ")

    monkeypatch.setattr(broker, "taskyard_publish", enqueue)
    yield broker
    broker.close()


def outbox_rows(broker: Any) -> list[str]:
    """The message ids waiting in the outbox."""
    outbox = find_outbox(broker)
    assert outbox is not None
    with outbox.session_factory() as session:
        return list(session.scalars(select(OutboxMessage.message_id)))


def test_a_send_rabbitmq_cannot_take_returns_and_waits_in_the_outbox(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a periodic actor (as periodiq's scheduler sends it) and a plain one
    ticker = taskyard_actor(
        name="ticker", broker=broker, tenant_scoped=False, periodic=cron("* * * * *")
    )(lambda: None)
    plain = taskyard_actor(name="plain", broker=broker, tenant_scoped=False)(lambda: None)

    # When their publishes fail, every send returns: it is durable in PostgreSQL
    with caplog.at_level(logging.ERROR, logger="Outbox"):
        tick = ticker.send_with_options(scheduled_at="2026-11-23T12:00:00+00:00")
        sent = plain.send()

    # Then both wait in the outbox for the sweeper, and the failures are logged
    assert sorted(outbox_rows(broker)) == sorted([tick.message_id, sent.message_id])
    assert "Could not publish 1 message(s) (cannot connect to RabbitMQ)" in caplog.text


def test_a_tick_postgresql_cannot_record_is_logged_not_raised(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a periodic actor and a plain one, and PostgreSQL (here SQLite) gone
    ticker = taskyard_actor(
        name="ticker", broker=broker, tenant_scoped=False, periodic=cron("* * * * *")
    )(lambda: None)
    plain = taskyard_actor(name="plain", broker=broker, tenant_scoped=False)(lambda: None)
    outbox = find_outbox(broker)
    assert outbox is not None
    outbox.session_factory.kw["bind"].dispose()
    Path(outbox.session_factory.kw["bind"].url.database).unlink()
    Path(outbox.session_factory.kw["bind"].url.database).mkdir()

    # When periodiq sends its tick, the call returns (periodiq exits on a raise)
    with caplog.at_level(logging.ERROR, logger="actors.base"):
        ticker.send_with_options(scheduled_at="2026-11-23T12:00:00+00:00")

    # Then the failure is logged with the tick's time and the way out
    assert "Could not send the ticker tick scheduled at 2026-11-23T12:00:00+00:00" in caplog.text
    assert "SendFailed" in caplog.text and "next tick catches up" in caplog.text
    # And a producer's own send raises the documented error
    with pytest.raises(SendFailed, match="nothing was sent"):
        plain.send()
