"""How many messages wait in Taskyard's queues: the one reading for every tool that shows it.

`read_ready` asks RabbitMQ over AMQP with a passive `queue_declare` per queue, on
one short-lived connection: the ready messages and the consumers (a queue that
does not exist is None, and creates nothing). AMQP does not tell how many
messages consumers hold unacknowledged; RabbitMQ's management API does, and
`queue_depths` reads it when `TASKYARD_RABBITMQ_API_URL` names it (one request
for the vhost's queues). The queues are named by `Settings.tenant_queue`, the one
rule of their names.

`taskyard summary` and the metrics server's queue gauges read through here; the
web console can call `queue_depths(settings, tenant_ids)` as they do.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from services.redaction import redact_url
from settings import Settings

# A server that does not answer within this is down: the reading is for a person waiting.
TIMEOUT_SECONDS = 5.0


class QueueDepth(NamedTuple):
    """One queue's messages: waiting to be delivered, and delivered but not yet acknowledged."""

    ready: int
    # None: not known (no TASKYARD_RABBITMQ_API_URL, or the API does not list the queue).
    unacked: int | None
    consumers: int


class Ready(NamedTuple):
    """What a passive declare tells of a queue."""

    ready: int
    consumers: int


class ApiUnreadable(RuntimeError):
    """RabbitMQ's management API did not answer as expected (the message says how)."""


def read_ready(broker_url: str, names: Sequence[str]) -> dict[str, Ready | None]:
    """Each queue's ready messages and consumers (None: no such queue), over one connection.

    Raises pika's AMQPError when RabbitMQ cannot be reached.
    """
    found: dict[str, Ready | None] = {}
    params = pika.URLParameters(broker_url)
    params.socket_timeout = TIMEOUT_SECONDS
    params.blocked_connection_timeout = TIMEOUT_SECONDS
    params.connection_attempts = 1
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        for name in names:
            try:
                frame = channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()  # a missing queue (404) closes the channel
                found[name] = None
                continue
            method = frame.method
            found[name] = Ready(int(method.message_count), int(method.consumer_count))
    finally:
        connection.close()
    return found


def read_unacked(api_url: str, broker_url: str) -> dict[str, int]:
    """Each queue's unacknowledged messages in the broker's vhost, from the management API.

    Raises ApiUnreadable (the URL shown without its password) when it does not answer.
    """
    parts = urlsplit(api_url)
    vhost = pika.URLParameters(broker_url).virtual_host
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = f"{parts.path}/api/queues/{quote(vhost, safe='')}"
    url = urlunsplit((parts.scheme, netloc, path, "columns=name,messages_unacknowledged", ""))
    request = urllib.request.Request(url)
    if parts.username is not None:
        # (percent-encoded in the URL, as in BROKER_URL)
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            queues = json.load(response)
        return {
            str(queue["name"]): int(queue.get("messages_unacknowledged") or 0) for queue in queues
        }
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ApiUnreadable(
            f"RabbitMQ's management API at {redact_url(api_url)} did not answer "
            f"({type(exc).__name__}: {exc}): check TASKYARD_RABBITMQ_API_URL"
        ) from exc


def queue_depths(settings: Settings, tenant_ids: Iterable[int]) -> dict[int, QueueDepth | None]:
    """Each tenant's queue depth (None: its queue does not exist), read now.

    `unacked` is known only with TASKYARD_RABBITMQ_API_URL set. Raises pika's
    AMQPError when RabbitMQ cannot be reached, ApiUnreadable when its API cannot.
    """
    queues = {tenant_id: settings.tenant_queue(tenant_id) for tenant_id in tenant_ids}
    ready = read_ready(settings.broker_url, list(queues.values()))
    unacked: dict[str, int] = {}
    if settings.rabbitmq_api_url and any(found is not None for found in ready.values()):
        unacked = read_unacked(settings.rabbitmq_api_url, settings.broker_url)
    depths: dict[int, QueueDepth | None] = {}
    for tenant_id, name in queues.items():
        found = ready[name]
        depths[tenant_id] = (
            None if found is None else QueueDepth(found.ready, unacked.get(name), found.consumers)
        )
    return depths
