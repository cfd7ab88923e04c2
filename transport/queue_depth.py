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
from collections import deque
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple
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

    The passive declares are pipelined: one at a time on each of up to IN_FLIGHT
    channels.  RabbitMQ answers a missing queue (404) by closing the channel it was
    asked on; another channel takes the queues after it.  Raises pika's AMQPError
    when RabbitMQ cannot be reached, does not answer for TIMEOUT_SECONDS, or refuses
    a declare for another reason than 404 (its reply code and text say why).
    """
    return _PassiveReads(broker_url, names).run()


# Passive declares in flight at once on one reading's connection, one per channel
# (RabbitMQ allows 2,047 channels a connection by default).
IN_FLIGHT = 64
NOT_FOUND = 404


class _PassiveReads:
    """One reading of `read_ready`: a connection, and channels each asking for one queue
    at a time."""

    def __init__(self, broker_url: str, names: Sequence[str]) -> None:
        self.params = pika.URLParameters(broker_url)
        self.params.socket_timeout = TIMEOUT_SECONDS
        self.params.blocked_connection_timeout = TIMEOUT_SECONDS
        self.params.connection_attempts = 1
        # The whole opening (TCP, then AMQP's handshake): pika's own bound, as a close()
        # before the handshake is done is not safe in pika.
        self.params.stack_timeout = TIMEOUT_SECONDS
        self.names = list(dict.fromkeys(names))
        self.todo = deque(self.names)
        self.found: dict[str, Ready | None] = {}
        # Channels opened and not closed yet; the queue each one was asked for last.
        self.in_flight = 0
        self.opening = 0
        self.asked: dict[int, str] = {}
        self.error: BaseException | None = None
        self.connection: pika.SelectConnection | None = None
        self.timer: object | None = None

    def run(self) -> dict[str, Ready | None]:
        connection = pika.SelectConnection(
            self.params,
            on_open_callback=lambda _connection: self._next(),
            on_open_error_callback=self._open_failed,
            on_close_callback=self._closed,
        )
        self.connection = connection
        try:
            self._arm()
            connection.ioloop.start()
        finally:
            connection.ioloop.close()
        if self.error is not None:
            raise self.error
        return {name: self.found[name] for name in self.names}

    def _arm(self) -> None:
        """(Re)start the silence timer: no answer for TIMEOUT_SECONDS fails the reading."""
        assert self.connection is not None
        if self.timer is not None:
            self.connection.ioloop.remove_timeout(self.timer)
        self.timer = self.connection.ioloop.call_later(TIMEOUT_SECONDS, self._timed_out)

    def _next(self) -> None:
        """Open channels up to IN_FLIGHT for the queues left; stop once every one is read."""
        assert self.connection is not None
        if not self.connection.is_open:
            return  # (closing: `_closed` ends the reading)
        while len(self.todo) > self.opening and self.in_flight < IN_FLIGHT:
            self.in_flight += 1
            self.opening += 1
            self.connection.channel(on_open_callback=self._opened)
        if not self.todo and not self.in_flight:
            self._stop()

    def _opened(self, channel: Any) -> None:
        self._arm()
        self.opening -= 1
        self.asked[channel.channel_number] = ""
        channel.add_on_close_callback(self._channel_closed)
        self._ask(channel)

    def _ask(self, channel: Any) -> None:
        """The channel's next queue; a channel with none left is closed."""
        if not self.todo:
            channel.close()
            return
        name = self.todo.popleft()
        self.asked[channel.channel_number] = name
        channel.queue_declare(name, passive=True, callback=partial(self._declared, channel))

    def _declared(self, channel: Any, frame: Any) -> None:
        self._arm()
        method = frame.method
        name = self.asked[channel.channel_number]
        self.found[name] = Ready(int(method.message_count), int(method.consumer_count))
        self._ask(channel)

    def _channel_closed(self, channel: Any, reason: Exception) -> None:
        self._arm()
        self.in_flight -= 1
        name = self.asked.pop(channel.channel_number, "")
        if name and name not in self.found:
            if getattr(reason, "reply_code", None) == NOT_FOUND:
                self.found[name] = None
            elif self.error is None:
                self.error = reason
                self.todo.clear()
        self._next()

    def _stop(self) -> None:
        assert self.connection is not None
        if self.connection.is_closing or self.connection.is_closed:
            return
        self.connection.close()

    def _open_failed(self, _connection: Any, error: BaseException | str) -> None:
        if self.error is None:
            self.error = (
                error
                if isinstance(error, BaseException)
                else pika.exceptions.AMQPConnectionError(error)
            )
        assert self.connection is not None
        self.connection.ioloop.stop()

    def _closed(self, _connection: Any, reason: BaseException) -> None:
        done = not self.todo and not self.in_flight
        if not done and self.error is None:
            self.error = reason
        assert self.connection is not None
        self.connection.ioloop.stop()

    def _timed_out(self) -> None:
        self.timer = None
        assert self.connection is not None
        if not self.connection.is_open and not self.connection.is_closing:
            return  # still opening: `stack_timeout` bounds that, and ends it in `_open_failed`
        if self.error is None:
            self.error = pika.exceptions.AMQPConnectionError(
                f"RabbitMQ did not answer for {TIMEOUT_SECONDS:g} s while queues were read"
            )
        self.todo.clear()
        if self.connection.is_closing:
            self.connection.ioloop.stop()
        else:
            self.connection.close()


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
