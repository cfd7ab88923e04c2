"""Refusals on the send side: which closes are refusals, priorities at send, one line per period."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions
import pytest

from actors.transaction import taskyard_transaction
from middleware.outbox_sweeper import REPORTED_QUEUES, RefusedRows
from services.errors import BrokerRefused, PermanentError, PriorityRefused
from tests.unit.middleware.outbox_harness import Harness, outbox_harness
from transport.publisher import is_refusal, refusal


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with outbox_harness(tmp_path) as harness:
        yield harness


@pytest.mark.parametrize(
    ("reason", "refused"),
    [
        (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent"), True),
        (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'x'"), True),
        (pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - access to queue"), True),
        (pika.exceptions.ChannelClosedByBroker(405, "RESOURCE_LOCKED - exclusive"), True),
        # Anything else on a channel, or the connection going, is a loss: reconnect and retry.
        (pika.exceptions.ChannelClosedByBroker(504, "CHANNEL_ERROR"), False),
        (pika.exceptions.ChannelClosedByClient(200, "Normal shutdown"), False),
        (pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown"), False),
        (pika.exceptions.StreamLostError("Transport indicated EOF"), False),
    ],
)
def test_only_rabbitmqs_refusals_of_a_command_count_as_refusals(
    reason: Exception, refused: bool
) -> None:
    assert is_refusal(reason) is refused


def test_a_refusal_names_the_queue_rabbitmqs_reply_and_what_to_do() -> None:
    error = refusal("tenant.7", 406, "PRECONDITION_FAILED - inequivalent arg 'x-max-priority'")
    assert isinstance(error, BrokerRefused) and isinstance(error, PermanentError)
    assert error.reason == "broker_refused"
    assert (error.queue_name, error.reply_code) == ("tenant.7", 406)
    assert str(error).startswith(
        "RabbitMQ refused queue 'tenant.7': 406 PRECONDITION_FAILED - inequivalent arg"
    )
    assert "delete it" in str(error)
    # A new one each time: a shared exception would grow its traceback with every raise.
    assert refusal("q", 403, "ACCESS_REFUSED") is not refusal("q", 403, "ACCESS_REFUSED")


def test_broker_priority_is_refused_at_send_with_the_reason_and_nothing_is_recorded(
    harness: Harness,
) -> None:
    actor = harness.declare("urgent", lambda tenant_id: None)
    with pytest.raises(PriorityRefused, match="without x-max-priority") as refused:
        actor.send_with_options(kwargs={"tenant_id": 1}, broker_priority=5)
    assert isinstance(refused.value, ValueError)
    assert "quorum queues have no priorities" in str(refused.value)
    assert harness.outbox_rows() == []
    assert harness.waiting(harness.settings.tenant_queue(1)) == 0


def test_broker_priority_is_refused_in_a_transaction_too(harness: Harness) -> None:
    actor = harness.declare("urgent_held", lambda tenant_id: None)
    with pytest.raises(PriorityRefused), taskyard_transaction(harness.broker):
        actor.send_with_options(kwargs={"tenant_id": 1}, broker_priority=1)
    assert harness.outbox_rows() == []


def refused(queue: str) -> BrokerRefused:
    return refusal(queue, 406, "PRECONDITION_FAILED - inequivalent arg 'x-max-priority'")


def test_refused_rows_make_one_line_per_period_however_many_sweeps_refuse_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    rows = RefusedRows(period=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="Outbox"):
        # Given a first sweep that has rows refused: reported at once
        rows.add([refused("tenant.1"), refused("tenant.1")])
        # When more sweeps within the period have more refused
        for second in range(1, 60):
            now[0] = 100.0 + second
            rows.add([refused(f"tenant.{2 + second % 7}")])
        rows.add([])
        # Then they wait for the next period's line, which counts them all
        now[0] = 160.0
        rows.add([refused("tenant.1")])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("RabbitMQ refused 2 outbox message(s) for queue(s) tenant.1 (")
    assert lines[1].startswith("RabbitMQ refused 60 outbox message(s) for queue(s) ")
    # The queues refused most are named first; the rest are counted
    assert f"and {8 - REPORTED_QUEUES} more" in lines[1]
    assert "the sweeper tries them again every 60 s" in lines[1]
