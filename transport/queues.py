"""Queue administration: a tenant's queues by name, and deleting them."""

from __future__ import annotations

from collections.abc import Sequence

import pika
import pika.exceptions
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker

from settings import Settings


def tenant_queue_names(settings: Settings, tenant_id: int) -> list[str]:
    """The tenant's queue, its delay queue and its dead-letter queue (Dramatiq's naming)."""
    queue = settings.tenant_queue(tenant_id)
    return [queue, f"{queue}.DQ", f"{queue}.XQ"]


def delete_queues(broker: Broker, broker_url: str, names: Sequence[str]) -> int:
    """Delete these queues (on `broker`'s RabbitMQ at `broker_url`); how many existed."""
    if isinstance(broker, StubBroker):
        return sum(1 for name in names if broker.queues.pop(name, None) is not None)
    deleted = 0
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for name in names:
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: already gone
                channel = connection.channel()
                continue
            channel.queue_delete(name)
            deleted += 1
    finally:
        connection.close()
    return deleted
