"""A periodic tick that cannot be published: logged and dropped, so periodiq keeps running."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from periodiq import cron

from actors.base import taskyard_actor
from brokers import build_broker
from db.migrate import upgrade_to_head
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

    monkeypatch.setattr(broker, "enqueue", enqueue)
    yield broker
    broker.close()


def test_a_tick_periodiq_cannot_publish_is_logged_not_raised(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a periodic actor, as periodiq's scheduler sends it
    ticker = taskyard_actor(
        name="ticker", broker=broker, tenant_scoped=False, periodic=cron("* * * * *")
    )(lambda: None)

    # When its tick cannot be published, periodiq's call returns (periodiq exits on a raise)
    with caplog.at_level(logging.ERROR, logger="actors.base"):
        ticker.send_with_options(scheduled_at="2026-11-23T12:00:00+00:00")

    # Then the failure is logged with the tick's time and the way out
    assert "Could not send the ticker tick scheduled at 2026-11-23T12:00:00+00:00" in caplog.text
    assert "BrokerDown" in caplog.text and "next tick catches up" in caplog.text


def test_any_other_send_that_cannot_be_published_still_raises(broker: Any) -> None:
    # A producer's own send of the same actor, or a non-periodic one, must see the error
    ticker = taskyard_actor(
        name="ticker", broker=broker, tenant_scoped=False, periodic=cron("* * * * *")
    )(lambda: None)
    plain = taskyard_actor(name="plain", broker=broker, tenant_scoped=False)(lambda: None)
    with pytest.raises(BrokerDown):
        ticker.send()
    with pytest.raises(BrokerDown):
        plain.send_with_options(scheduled_at="2026-11-23T12:00:00+00:00")
