"""One publishing connection per process, with publisher confirms pipelined instead of awaited.

Dramatiq's RabbitMQ broker gives every thread that sends its own connection
and channel, and with `confirm_delivery=True` each publish waits for its
confirm before the next can go: about one message per network round trip per
thread, and ten connections for a worker of eight threads.  This publisher
owns one connection and one confirm-mode channel on a thread of its own; any
thread hands it messages and gets a future that the broker's confirm
resolves.  Many publishes are in flight at once, so a batch of N costs about
one round trip, not N.  Queues are declared (before their first publish) on
channels of their own, `DECLARE_CHANNELS` of them, so that many are in flight
at once too, and a refused declaration leaves the publishes alone.

Only a lost connection is retried.  RabbitMQ refusing a command on the
channel (403 ACCESS_REFUSED, 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406
PRECONDITION_FAILED: a queue that exists with other arguments, a name the
user may not use) closes only the channel, and would refuse the same command
again: the messages it concerns fail at once with `BrokerRefused`, carrying
RabbitMQ's reply, while the publisher opens a new channel on the same
connection and goes on publishing to every other queue.  A refused queue is
refused here, without asking RabbitMQ, for `refused_hold_seconds`, so that
senders who keep trying do not close the shared channel again and again.

The guarantees are those of a confirmed publish: a future succeeds only when
RabbitMQ has taken the message (persistent, on a durable queue); it fails
with `PublishFailed` when RabbitMQ nacks or returns it, or when the message
could not be confirmed after the connection was lost and re-made
`max_attempts` times.  A message whose confirm was lost with the connection is
published again on the next one: a duplicate is possible, a loss is not
(Taskyard's job records make a second copy of a finished message skip).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import BrokerConnectionError

from services.errors import BrokerRefused

# A queue's declaration arguments (the broker's, so that both declare alike).
QueueArguments = Callable[[str], dict[str, Any]]
# The longest wait between two connection attempts while RabbitMQ is away.
MAX_RECONNECT_SECONDS = 5.0
# RabbitMQ keeps a dead-lettered message this long in a .XQ queue (Dramatiq's value).
DEAD_MESSAGE_TTL_MS = 86400000 * 7
# AMQP's channel exceptions that refuse a command (the same command is refused again),
# each with what an operator can do about it.  Any other close is treated as a loss.
REFUSAL_ADVICE = {
    403: "give the RabbitMQ user configure and write permissions on it, or choose a name "
    "it may use (not amq.*)",
    404: "create what the reply names, or fix the name",
    405: "another connection holds it exclusively; wait for that connection to close, or "
    "use another queue prefix",
    406: "it exists with other arguments (left by another deployment, declared by hand, or "
    "of another kind than TASKYARD_QUEUE_TYPE): run `taskyard migrate-queues` to change "
    "existing queues' kind, delete it (with its .DQ and .XQ queues) so that Taskyard "
    "declares it, or give Taskyard a queue prefix of its own",
}
# AMQP carries a queue name in at most 255 bytes, and its .DQ and .XQ queues add 3.
MAX_QUEUE_NAME_BYTES = 255 - len(".DQ")
# How long a queue RabbitMQ refused is refused here without asking RabbitMQ again:
# every refusal closes a channel (a refused publish, the one all of the process's publishes share).
REFUSED_HOLD_SECONDS = 5.0
# Channels the declarations go on.  pika sends one declaration at a time on a
# channel and waits for its answer; under a busy process each answer waits for
# the GIL too, so a worker declaring 1,000 tenants' queues (three each) one at
# a time took seconds.  Several channels keep as many in flight, answered together.
DECLARE_CHANNELS = 8


class PublishFailed(BrokerConnectionError):
    """RabbitMQ did not take a message: nacked, returned as unroutable, or never confirmed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # type: ignore[no-untyped-call]


def refusal(queue_name: str, reply_code: int, reply_text: str) -> BrokerRefused:
    """The error for RabbitMQ refusing `queue_name` (a new one each time: never shared)."""
    advice = REFUSAL_ADVICE.get(reply_code, "change RabbitMQ so that it takes it")
    return BrokerRefused(queue_name, reply_code, reply_text, advice=advice)


def is_refusal(reason: BaseException) -> bool:
    """Whether a channel's close is RabbitMQ refusing a command, not a lost connection."""
    return (
        isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        and reason.reply_code in REFUSAL_ADVICE
    )


@dataclass(frozen=True, slots=True)
class Refused:
    """RabbitMQ's last refusal of a queue, and when (monotonic seconds) it came."""

    reply_code: int
    reply_text: str
    at: float


def _settle(future: Future[None], error: BaseException | None = None) -> None:
    """Resolve a future unless its caller gave up on it (cancelled) meanwhile."""
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


@dataclass(slots=True)
class Outgoing:
    """One message on its way: where it goes, what it is, and who waits for it."""

    queue_name: str
    routing_key: str
    body: bytes
    message_id: str
    priority: int | None
    future: Future[None] = field(default_factory=Future)
    attempts: int = 0
    returned: str | None = None
    # Only declare the queue (again, even if this connection did already).
    declare_only: bool = False


class Publisher:
    """A thread that owns one confirm-mode channel and publishes for every thread of the process."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters | list[pika.ConnectionParameters],
        *,
        queue_arguments: QueueArguments,
        dead_queue_arguments: dict[str, Any] | None = None,
        max_attempts: int = 5,
        reconnect_seconds: float = 0.5,
        fail_after_connect_errors: int = 3,
        refused_hold_seconds: float = REFUSED_HOLD_SECONDS,
        name: str = "taskyard-publisher",
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.parameters = parameters
        self.queue_arguments = queue_arguments
        # A .XQ queue's: Dramatiq's message TTL (and the queue's kind, when not classic).
        self.dead_queue_arguments = (
            {"x-message-ttl": DEAD_MESSAGE_TTL_MS}
            if dead_queue_arguments is None
            else dead_queue_arguments
        )
        self.max_attempts = max_attempts
        self.reconnect_seconds = reconnect_seconds
        self.fail_after_connect_errors = fail_after_connect_errors
        self.refused_hold_seconds = refused_hold_seconds
        self.name = name
        self.pid = os.getpid()
        self._incoming: collections.deque[Outgoing] = collections.deque()
        self._lock = threading.Lock()
        # Items handed over whose future has not settled (queued, declaring, unconfirmed).
        self._unsettled = 0
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        # Owned by the publisher thread from here on.
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._wake_scheduled = False
        self._next_tag = 0
        self._unconfirmed: dict[int, Outgoing] = {}
        self._by_message_id: dict[str, Outgoing] = {}
        self._declared: set[str] = set()
        self._declaring: dict[str, list[Outgoing]] = {}
        # The channels declarations go on (see `DECLARE_CHANNELS`), open and ready.
        self._declare_channels: list[pika.channel.Channel] = []
        # For each of them, (queue declared, its canonical queue) in the order sent:
        # pika sends one declaration at a time on a channel, so the first is the one
        # RabbitMQ answers (or refuses).
        self._declares_sent: dict[int, collections.deque[tuple[str, str]]] = {}
        # Written by the publisher thread, read by any (`refusal_of`).
        self._refused: dict[str, Refused] = {}
        self.connections_made = 0
        # Publishing channels opened (the first, and one after each refused publish).
        self.channels_opened = 0
        # Declaration channels opened (`DECLARE_CHANNELS`, and one after each refusal).
        self.declare_channels_opened = 0
        # Refusals RabbitMQ sent (each closed the channel), since this publisher started.
        self.refusals = 0
        self._connect_errors = 0
        # Which node of a multi-node BROKER_URL the next connection goes to.
        self._node = 0

    # --- any thread ---------------------------------------------------------

    def publish(
        self,
        queue_name: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        priority: int | None,
    ) -> Future[None]:
        """Hand one message over; the future resolves when RabbitMQ confirms it.

        `queue_name` is the canonical queue (declared with its delay and
        dead-letter queues before the first publish); `routing_key` is where
        the message goes (the queue, or its delay queue).
        """
        item = Outgoing(queue_name, routing_key, body, message_id, priority)
        self._hand_over(item)
        self._ensure_started()
        self._wake()
        return item.future

    def declare(self, queue_name: str) -> Future[None]:
        """Declare a queue with its delay and dead-letter queues; resolves once RabbitMQ has."""
        item = Outgoing(queue_name, queue_name, b"", "", None, declare_only=True)
        self._hand_over(item)
        self._ensure_started()
        self._wake()
        return item.future

    def _hand_over(self, item: Outgoing) -> None:
        with self._lock:
            self._unsettled += 1
        item.future.add_done_callback(self._on_settled)
        self._incoming.append(item)

    def _on_settled(self, _future: Future[None]) -> None:
        with self._lock:
            self._unsettled -= 1

    def refusal_of(self, queue_name: str) -> BrokerRefused | None:
        """RabbitMQ's refusal of `queue_name` if it came in the last `refused_hold_seconds`."""
        refused = self._refused.get(queue_name)
        if refused is None or time.monotonic() - refused.at >= self.refused_hold_seconds:
            return None
        return refusal(queue_name, refused.reply_code, refused.reply_text)

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` for what is in flight, then close the connection and the thread."""
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closing.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.ioloop.add_callback_threadsafe(self._close_connection)
            except Exception:
                self.logger.debug("Publisher connection already gone", exc_info=True)
        thread.join(max(0.1, deadline - time.monotonic()))
        self._fail_all("the publisher closed before RabbitMQ confirmed")

    def settle(self, timeout: float) -> bool:
        """Wait up to `timeout` until every message handed over is confirmed or failed.

        True if nothing is left in flight.  A publisher that never started has
        nothing in flight.
        """
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                break
            time.sleep(0.005)
        return not self.in_flight

    @property
    def in_flight(self) -> int:
        """Messages (and declarations) handed over whose future has not settled."""
        return self._unsettled

    def _ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        connection = self._connection
        if connection is None:
            return  # the thread drains the incoming queue once its channel opens
        with self._lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        try:
            connection.ioloop.add_callback_threadsafe(self._drain)
        except Exception:
            # The connection is closing; the next one drains the queue.
            with self._lock:
                self._wake_scheduled = False

    # --- the publisher thread ----------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._connection = pika.SelectConnection(
                    self._node_parameters(),
                    on_open_callback=self._on_connection_open,
                    on_open_error_callback=self._on_connection_error,
                    on_close_callback=self._on_connection_closed,
                )
                self._connection.ioloop.start()
            except Exception:
                self.logger.exception("Publisher connection failed")
            self._release_ioloop()
            self._connection = None
            self._channel = None
            self._declare_channels = []
            self._requeue_unconfirmed()
            if not self._closing.is_set():
                # Doubling while RabbitMQ stays away (each failed attempt logs a few
                # lines of pika's own), up to MAX_RECONNECT_SECONDS.
                errors = min(self._connect_errors, 16)
                time.sleep(
                    min(self.reconnect_seconds * 2 ** max(0, errors - 1), MAX_RECONNECT_SECONDS)
                )

    def _node_parameters(self) -> pika.ConnectionParameters:
        """The node to connect to now: the one that answered last, or the next after a loss.

        A multi-node `BROKER_URL` (`amqp://a;amqp://b`) is tried node by node,
        in its order, going round; a node that failed or closed the connection
        is left for the next.
        """
        if not isinstance(self.parameters, list):
            return self.parameters
        return self.parameters[self._node % len(self.parameters)]

    def _next_node(self) -> None:
        if isinstance(self.parameters, list) and len(self.parameters) > 1:
            self._node += 1
            self.logger.warning(
                "Publisher moves to RabbitMQ node %d of %d (%s:%s)",
                self._node % len(self.parameters) + 1,
                len(self.parameters),
                self._node_parameters().host,
                self._node_parameters().port,
            )

    def _release_ioloop(self) -> None:
        # The ioloop keeps a socket pair for add_callback_threadsafe until closed.
        connection = self._connection
        if connection is not None:
            try:
                connection.ioloop.close()
            except Exception:
                self.logger.debug("Could not close the publisher's ioloop", exc_info=True)

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        self.connections_made += 1
        self._connect_errors = 0
        # A new connection declares every queue again (RabbitMQ may have lost some);
        # a new channel on the same connection does not need to.
        self._declared.clear()
        connection.channel(on_open_callback=self._on_channel_open)
        for _ in range(DECLARE_CHANNELS):
            connection.channel(on_open_callback=self._on_declare_channel_open)

    def _on_connection_error(self, connection: pika.SelectConnection, error: Exception) -> None:
        self._connect_errors += 1
        self.logger.warning("Publisher could not connect to RabbitMQ: %s", error)
        self._next_node()
        nodes = len(self.parameters) if isinstance(self.parameters, list) else 1
        # Every node is tried before the callers are failed.
        if self._connect_errors >= max(self.fail_after_connect_errors, nodes):
            # Callers get a clear error now rather than a timeout; what they sent was
            # never taken by RabbitMQ (or, after a lost confirm, may have been: the
            # job record makes such a copy skip).
            self._fail_all(
                f"cannot connect to RabbitMQ ({type(error).__name__}: {error}) after "
                f"{self._connect_errors} attempts; is it running and reachable?"
            )
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection, reason: Exception) -> None:
        if not self._closing.is_set():
            self.logger.warning("Publisher connection closed: %s; reconnecting", reason)
            self._next_node()
        connection.ioloop.stop()

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
        elif connection is not None:
            connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self.channels_opened += 1
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._channel_ready(channel)
        )

    def _channel_ready(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        self._next_tag = 0
        self._drain()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Exception) -> None:
        self._channel = None
        self._after_close(reason, "channel", self._on_publish_refusal, self._on_channel_open)

    def _on_declare_channel_open(self, channel: pika.channel.Channel) -> None:
        self.declare_channels_opened += 1
        channel.add_on_close_callback(self._on_declare_channel_closed)
        self._declares_sent[channel.channel_number] = collections.deque()
        self._declare_channels.append(channel)
        self._drain()

    def _on_declare_channel_closed(self, channel: pika.channel.Channel, reason: Exception) -> None:
        if channel in self._declare_channels:
            self._declare_channels.remove(channel)
        sent = self._declares_sent.pop(channel.channel_number, collections.deque())
        self._after_close(
            reason,
            "declaration channel",
            functools.partial(self._on_declare_refusal, sent),
            self._on_declare_channel_open,
        )

    def _after_close(
        self,
        reason: Exception,
        what: str,
        on_refusal: Callable[[int, str], None],
        reopen: Callable[[pika.channel.Channel], None],
    ) -> None:
        """A channel closed: after a refusal, what it refused fails and a new channel opens
        on the same connection; any other close makes the publisher reconnect."""
        if self._closing.is_set():
            return
        connection = self._connection
        if is_refusal(reason) and connection is not None and connection.is_open:
            assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
            on_refusal(reason.reply_code, reason.reply_text)
            connection.channel(on_open_callback=reopen)
            return
        self.logger.warning("Publisher %s closed: %s; reconnecting", what, reason)
        if connection is not None and connection.is_open:
            connection.close()

    def _on_publish_refusal(self, reply_code: int, reply_text: str) -> None:
        """Fail every publish not yet confirmed: a refused publish does not say which it was.

        Declarations go on channels of their own, which this refusal did not
        close: the messages waiting for one go on once it is answered.
        """
        self.refusals += 1
        refused = [self._unconfirmed[t] for t in sorted(self._unconfirmed)]
        self._unconfirmed.clear()
        self._by_message_id.clear()
        for item in refused:
            _settle(item.future, refusal(item.queue_name, reply_code, reply_text))
        self._log_refusal("a publish", reply_code, reply_text, len(refused), 0)

    def _on_declare_refusal(
        self, sent: collections.deque[tuple[str, str]], reply_code: int, reply_text: str
    ) -> None:
        """Fail what RabbitMQ refused; the other declarations of its channel go again.

        A refused declaration names its queue in RabbitMQ's reply: the messages
        waiting for that queue fail.  pika had not sent the channel's other
        declarations yet: their queues are declared again on an open channel,
        each message at most `max_attempts` times when the refusal names no
        queue, so that it cannot close channel after channel.
        """
        self.refusals += 1
        first = sent[0] if sent else None
        queue = first[1] if first is not None and f"'{first[0]}'" in reply_text else None
        queues = {canonical for _, canonical in sent}
        waiting = [
            item for name in sorted(queues - {queue}) for item in self._declaring.pop(name, [])
        ]
        refused = self._declaring.pop(queue, []) if queue is not None else []
        if queue is not None:
            self._refused[queue] = Refused(reply_code, reply_text, time.monotonic())
            self._declared.discard(queue)
            again = waiting
        else:
            for item in waiting:
                item.attempts += 1
            refused = [i for i in waiting if i.attempts >= self.max_attempts]
            again = [i for i in waiting if i.attempts < self.max_attempts]
        for item in refused:
            _settle(item.future, refusal(item.queue_name, reply_code, reply_text))
        self._incoming.extendleft(reversed(again))
        what = f"queue {queue}" if queue is not None else "a declaration"
        self._log_refusal(what, reply_code, reply_text, len(refused), len(again))

    def _log_refusal(
        self, what: str, reply_code: int, reply_text: str, refused: int, again: int
    ) -> None:
        # One line per refusal: it closed the channel, and the next ones to the same
        # queue fail here, unseen by RabbitMQ, for `refused_hold_seconds`.
        self.logger.warning(
            "RabbitMQ refused %s (%d %s); %d message(s) failed with BrokerRefused, %d go again; %s",
            what,
            reply_code,
            reply_text,
            refused,
            again,
            REFUSAL_ADVICE[reply_code],
        )

    def _drain(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        while self._incoming:
            item = self._incoming.popleft()
            if item.future.done():
                continue
            refused = self.refusal_of(item.queue_name)
            if refused is not None:
                _settle(item.future, refused)
                continue
            if len(item.queue_name.encode()) > MAX_QUEUE_NAME_BYTES:
                # pika would fail to encode the declaration on this thread, and leave
                # the channel waiting for its reply for ever: this one fails alone.
                _settle(
                    item.future,
                    PublishFailed(
                        f"queue name {item.queue_name[:40]!r}... is longer than AMQP's "
                        f"{MAX_QUEUE_NAME_BYTES} bytes (with its .DQ and .XQ queues)"
                    ),
                )
                continue
            if item.declare_only:
                self._declared.discard(item.queue_name)
            if item.queue_name in self._declared:
                self._send(channel, item)
            elif item.queue_name in self._declaring:
                self._declaring[item.queue_name].append(item)
            elif self._declare_channels:
                self._declaring[item.queue_name] = [item]
                self._declare(self._declare_channel(), item.queue_name)
            else:
                # Its declaration waits for a declaration channel; the rest keep their order.
                self._incoming.appendleft(item)
                return

    def _declare_channel(self) -> pika.channel.Channel:
        """The open declaration channel with the fewest declarations waiting on it."""
        return min(
            self._declare_channels,
            key=lambda channel: len(self._declares_sent[channel.channel_number]),
        )

    def _declare(self, channel: pika.channel.Channel, queue_name: str) -> None:
        arguments = self.queue_arguments(queue_name)
        steps = [
            (queue_name, arguments),
            (dq_name(queue_name), arguments),
            (xq_name(queue_name), self.dead_queue_arguments),
        ]

        sent = self._declares_sent[channel.channel_number]

        def declare_next(frame: pika.frame.Method[Any] | None = None) -> None:
            if frame is not None and sent:
                sent.popleft()
            if not steps:
                self._declared.add(queue_name)
                self._refused.pop(queue_name, None)
                publish = self._channel
                for waiting in self._declaring.pop(queue_name, []):
                    if waiting.declare_only:
                        _settle(waiting.future)
                    elif publish is not None and publish.is_open:
                        self._send(publish, waiting)
                    else:
                        # The publishing channel is being replaced: sent once it is ready.
                        self._incoming.append(waiting)
                return
            name, args = steps.pop(0)
            sent.append((name, queue_name))
            channel.queue_declare(name, durable=True, arguments=args, callback=declare_next)

        declare_next()

    def _send(self, channel: pika.channel.Channel, item: Outgoing) -> None:
        item.attempts += 1
        item.returned = None
        self._next_tag += 1
        priority = item.priority
        if priority is not None and not (type(priority) is int and 0 <= priority <= 255):
            # pika would fail to encode the frame on this thread, and with it every
            # message waiting behind this one: this one fails alone, before it is sent.
            self._next_tag -= 1
            _settle(
                item.future,
                PublishFailed(
                    f"message {item.message_id}: broker_priority {priority!r} is not 0-255"
                ),
            )
            return
        properties = pika.BasicProperties(
            delivery_mode=2, priority=priority, message_id=item.message_id
        )
        self._unconfirmed[self._next_tag] = item
        self._by_message_id[item.message_id] = item
        channel.basic_publish(
            exchange="",
            routing_key=item.routing_key,
            body=item.body,
            properties=properties,
            mandatory=True,
        )

    def _on_return(
        self,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        _body: bytes,
    ) -> None:
        # A return comes before the confirm of the same message.
        item = self._by_message_id.get(properties.message_id or "")
        if item is not None:
            item.returned = f"{method.reply_code} {method.reply_text}"
            # The queue may have been deleted since it was declared: declare it again.
            self._declared.discard(item.queue_name)

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for t in tags:
            item = self._unconfirmed.pop(t, None)
            if item is None:
                continue
            self._by_message_id.pop(item.message_id, None)
            if nacked or item.returned is not None:
                why = (
                    "nacked by RabbitMQ" if nacked else f"returned as unroutable ({item.returned})"
                )
                self._retry_or_fail(item, why)
            else:
                _settle(item.future)

    def _retry_or_fail(self, item: Outgoing, why: str) -> None:
        if item.attempts >= self.max_attempts:
            _settle(
                item.future,
                PublishFailed(
                    f"message {item.message_id} to {item.routing_key}: {why}, "
                    f"{item.attempts} time(s)"
                ),
            )
            return
        self._incoming.appendleft(item)
        connection = self._connection
        if connection is not None:
            connection.ioloop.add_callback_threadsafe(self._drain)

    def _requeue_unconfirmed(self) -> None:
        """After a lost connection, publish again (first) whatever was not confirmed."""
        pending = [self._unconfirmed[t] for t in sorted(self._unconfirmed)]
        pending += [i for waiting in self._declaring.values() for i in waiting]
        self._unconfirmed.clear()
        self._by_message_id.clear()
        self._declaring.clear()
        self._declares_sent.clear()
        self._declare_channels = []
        for item in reversed(pending):
            if item.attempts >= self.max_attempts:
                _settle(
                    item.future,
                    PublishFailed(
                        f"message {item.message_id} to {item.routing_key}: not confirmed after "
                        f"{item.attempts} connection(s) to RabbitMQ"
                    ),
                )
            else:
                self._incoming.appendleft(item)
        if self._closing.is_set():
            self._fail_all("the publisher closed before RabbitMQ confirmed")

    def _fail_all(self, why: str) -> None:
        # An exception object of its own for each message: one shared by many futures
        # grows its traceback by a few frames every time a waiter re-raises it.
        while self._incoming:
            _settle(self._incoming.popleft().future, PublishFailed(why))


def gather(futures: Iterable[Future[None]]) -> Future[None]:
    """One future for many: resolves once all have, fails with the first that fails.

    Cancelling it cancels those still pending (as `wait_all`'s timeout does).
    """
    futures = list(futures)
    combined: Future[None] = Future()
    left = [len(futures)]
    lock = threading.Lock()

    def settled(future: Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        failure = (
            PublishFailed("cancelled before RabbitMQ answered")
            if future.cancelled()
            else future.exception()
        )
        with contextlib.suppress(InvalidStateError):
            if failure is not None:
                combined.set_exception(failure)
            elif last:
                combined.set_result(None)

    def cancel_rest(done: Future[None]) -> None:
        if done.cancelled():
            for future in futures:
                future.cancel()

    if not futures:
        combined.set_result(None)
        return combined
    combined.add_done_callback(cancel_rest)
    for future in futures:
        future.add_done_callback(settled)
    return combined


def wait_all(futures: Iterable[Future[None]], timeout: float) -> None:
    """Wait for every future; raise the first failure, or `PublishFailed` on timeout.

    On a timeout the futures still pending are cancelled: a message not yet
    handed to RabbitMQ is then never published.  One already on the wire may
    still arrive; its job record makes a later copy skip.
    """
    futures = list(futures)
    deadline = time.monotonic() + timeout
    try:
        for future in futures:
            remaining = deadline - time.monotonic()
            try:
                future.result(timeout=max(0.0, remaining))
            except TimeoutError:
                raise PublishFailed(
                    f"RabbitMQ did not confirm within {timeout:g} s (is it reachable?)"
                ) from None
    finally:
        for future in futures:
            future.cancel()
