"""Taskyard's RabbitMQ broker: its consumers decode only JSON and refuse poison bodies."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.results import ResultBackend

from services.errors import BrokerRefused, PriorityRefused
from settings import QUEUE_TYPES
from transport.hooks import HookDispatch
from transport.publisher import DEAD_MESSAGE_TTL_MS, Publisher, gather, wait_all

# How long a send waits for RabbitMQ's confirm before it fails with PublishFailed.
DEFAULT_PUBLISH_TIMEOUT_SECONDS = 30.0
# Messages carry ids and small JSON values; a body this big is a mistake, not a job.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# The job record's key holds 36 characters: a UUID.
MAX_MESSAGE_ID_LENGTH = 36
# The JSON type of each field of a Dramatiq message.
MESSAGE_FIELDS: dict[str, type] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}

# Called as (queue, body, reason, error) for every body a consumer refuses.
OnPoison = Callable[[str, bytes, str, str], None]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a body was refused: the dead letter's reason and a one-line error."""

    reason: str
    error: str


# Why a decoded message may not run on the queue it arrived on (None: it may).
RouteCheck = Callable[[Message[Any]], Refusal | None]


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is out of range")
    return value


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return False


def _count(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 64


def _flag(value: Any) -> bool:
    return type(value) is bool


def _actor_name(value: Any) -> bool:
    # The job record's actor column holds 200 characters.
    return isinstance(value, str) and 0 < len(value) <= 200


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _list(value: Any) -> bool:
    return isinstance(value, list)


_DAY_MS = 24 * 60 * 60 * 1000
# The most attempts any job gets, however its options are set (retry_when included).
MAX_ATTEMPTS_CAP = 100
# The longest max_age taken, in milliseconds: a year.
MAX_AGE_CAP_MS = 366 * _DAY_MS
# The longest delay a pipeline's stage may carry, in milliseconds: a year.
MAX_DELAY_MS = 366 * _DAY_MS
# The message options a body may carry, each with its check: the ones Taskyard's
# engine, Dramatiq's worker and periodiq read.  The options are untrusted input
# that decides how a message is run (how often, how long, with what priority), so
# anything else is refused: Dramatiq would read `throws` as an exception class and
# crash the thread, a bad `broker_priority` would break the publisher.  Actors
# declare the same options with the same checks (middleware/actor_options.py).
MESSAGE_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "retries": _count(0, 1_000),
    "eta": _count(0, 2**53),
    "max_attempts": _count(1, MAX_ATTEMPTS_CAP),
    # Dramatiq's name for the same limit: max_retries=N is N + 1 attempts.
    "max_retries": _count(0, MAX_ATTEMPTS_CAP - 1),
    "max_age": _count(1, MAX_AGE_CAP_MS),
    "notify_shutdown": _flag,
    "min_backoff": _count(0, _DAY_MS),
    "max_backoff": _count(0, _DAY_MS),
    "time_limit": _count(1, _DAY_MS),
    "broker_priority": _count(0, 255),
    "scheduled_at": _text,
    "taskyard_schedule_id": _count(1, 2**63 - 1),
    "taskyard_slot": _text,
    # Dramatiq's callbacks and pipelines (middleware/follow_ups.py): an actor's name;
    # whether a stage ignores the previous result; the next stage, a message screened
    # as this one is (`_stages_problem`); and the delay a pipeline's stage carries.
    "on_success": _actor_name,
    "on_failure": _actor_name,
    "pipe_ignore": _flag,
    "pipe_target": _object,
    "delay": _count(0, MAX_DELAY_MS),
    # Dramatiq's result options: accepted, no effect (a job's result is kept with its
    # record, for the record's retention: middleware/results.py).
    "store_results": _flag,
    "result_ttl": _count(1, 2**53),
    # Dramatiq's groups (middleware/groups.py): the group's id, and its completion
    # callbacks, messages screened as this one is (`_callbacks_problem`).
    "group_completion_uuid": _text,
    "group_completion_callbacks": _list,
}
# How far ahead a delay queue's eta may be: longer delays wait in the outbox, so
# only a crafted body has one further out (Dramatiq would hold it unacknowledged
# until RabbitMQ's consumer_timeout closed the channel every tenant shares).
DEFAULT_MAX_ETA_AHEAD_MS = 60 * 60 * 1000


def option_problem(name: str, value: Any) -> str | None:
    """Why a message may not carry option `name` with `value` (None: it may)."""
    check = MESSAGE_OPTIONS.get(name)
    if check is None:
        return f"option {name!r} is not one Taskyard takes ({', '.join(MESSAGE_OPTIONS)})"
    if not check(value):
        return f"option {name!r} has a value out of its type or range: {value!r}"[:300]
    return None


def limit_conflict(options: Mapping[str, Any]) -> str | None:
    """Why `options` (a message's or an actor's) may not set both attempt limits (None: fine)."""
    if "max_attempts" in options and "max_retries" in options:
        return (
            "options 'max_attempts' and 'max_retries' both limit the attempts "
            "(max_retries=N is max_attempts=N+1): give one"
        )
    return None


def _options_problem(
    options: dict[str, Any],
    queue_name: str,
    max_eta_ahead_ms: int,
    *,
    stages: bool = True,
    callbacks: bool = True,
) -> str | None:
    for name, value in options.items():
        problem = option_problem(name, value)
        if problem is not None:
            return problem
    conflict = limit_conflict(options)
    if conflict is not None:
        return conflict
    if "eta" in options:
        if not queue_name.endswith(".DQ"):
            return "option 'eta' on a queue that is not a delay queue"
        if options["eta"] > current_millis() + max_eta_ahead_ms:
            return f"option 'eta' is more than {max_eta_ahead_ms // 1000} s ahead"
    if callbacks:
        problem = _callbacks_problem(options.get("group_completion_callbacks"), max_eta_ahead_ms)
        if problem is not None:
            return problem
    return _stages_problem(options.get("pipe_target"), max_eta_ahead_ms) if stages else None


def _callbacks_problem(found: Any, max_eta_ahead_ms: int) -> str | None:
    """Why a group's completion callbacks are refused: each is a message, screened one level."""
    for index, data in enumerate(found or [], start=1):
        problem = _shape_problem(data) or _options_problem(
            data["options"], data["queue_name"], max_eta_ahead_ms, stages=False, callbacks=False
        )
        if problem is not None:
            return f"option 'group_completion_callbacks', callback {index}: {problem}"
    return None


def _stages_problem(target: Any, max_eta_ahead_ms: int) -> str | None:
    """Why a pipeline's later stages are refused: each is a message in the previous one's options.

    A loop, not a recursion: a long pipeline nests as deep as it is long.
    """
    stage = 1
    while target is not None:
        stage += 1
        problem = _shape_problem(target) or _options_problem(
            target["options"], target["queue_name"], max_eta_ahead_ms, stages=False
        )
        if problem is not None:
            return f"option 'pipe_target', stage {stage} of the pipeline: {problem}"
        target = target["options"].get("pipe_target")
    return None


def _shape_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not a message object"
    if set(data) != set(MESSAGE_FIELDS):
        missing, extra = set(MESSAGE_FIELDS) - set(data), set(data) - set(MESSAGE_FIELDS)
        return f"not a message object: missing {sorted(missing)}, unexpected {sorted(extra)}"
    for name, kind in MESSAGE_FIELDS.items():
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            return f"{name} is a JSON {type(data[name]).__name__}, expected {kind.__name__}"
    if not 0 < len(data["message_id"]) <= MAX_MESSAGE_ID_LENGTH:
        return f"message_id must have 1 to {MAX_MESSAGE_ID_LENGTH} characters"
    # PostgreSQL stores neither of these: the message could never get its job
    # record, and would be retried for ever.
    if _has_nul(data):
        return "a string holds a NUL character"
    tenant_id = data["kwargs"].get("tenant_id")
    if isinstance(tenant_id, int) and abs(tenant_id) >= 2**63:
        return "tenant_id does not fit in 64 bits"
    return None


def screen(
    body: bytes,
    *,
    queue_name: str,
    max_bytes: int,
    max_eta_ahead_ms: int = DEFAULT_MAX_ETA_AHEAD_MS,
) -> Message[Any] | Refusal:
    """The message in `body`, or why it is refused; nothing but JSON is ever decoded."""
    if len(body) > max_bytes:
        return Refusal("too_large", f"body of {len(body)} bytes is over the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return Refusal("undecodable", f"not a JSON message: {type(exc).__name__}: {exc}")
    problem = _shape_problem(data)
    if problem is not None:
        return Refusal("undecodable", problem)
    if data["queue_name"] != queue_name:
        # Dramatiq's worker would crash a thread on a queue it does not consume.
        return Refusal(
            "queue_mismatch", f"message for queue {data['queue_name']!r} arrived on {queue_name!r}"
        )
    options_problem = _options_problem(data["options"], queue_name, max_eta_ahead_ms)
    if options_problem is not None:
        return Refusal("invalid_options", options_problem)
    data["args"] = tuple(data["args"])
    return Message(**data)


class ScreeningConsumer(_RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer, which refuses and reports poison bodies instead of decoding.

    Dramatiq fetches and decodes in one method, and on a decode error only logs
    and nacks (the body then expires in the dead-letter queue after 7 days), so
    the fetch is repeated here as Dramatiq 2.2 writes it.
    """

    broker: TaskyardRabbitmqBroker

    def __next__(self) -> MessageProxy | None:
        """The next message, or None: nothing arrived, or a poison body was refused and nacked."""
        try:
            method, _properties, body = next(self.iterator)
        except (
            AssertionError,
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.AMQPChannelError,
        ) as e:
            # As Dramatiq does: a queue that vanished is declared again on restart.
            if getattr(e, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]
        if method is None:
            return None
        verdict = self.broker.admit(body, self.queue_name)
        if isinstance(verdict, Refusal):
            self.broker.report_poison(self.queue_name, body, verdict)
            self._nack(method.delivery_tag)  # type: ignore[no-untyped-call]
            return None
        tag = method.delivery_tag
        self.known_tags.add(tag)
        proxy: MessageProxy = _RabbitmqMessage(method.redelivered, tag, verdict)  # type: ignore[no-untyped-call]
        return proxy


# RabbitMQ moves a quorum queue's message to its .XQ queue after this many deliveries.
# Above any actor's attempts: Taskyard counts a redelivered job's starts and keeps it
# as a dead letter first (WorkerCrashed); this only stops a message that can never be
# counted (a worker that dies before it reaches the database) from looping for ever.
QUORUM_DELIVERY_LIMIT = 20


def kind_arguments(queue_type: str) -> dict[str, Any]:
    """The declaration arguments that make a queue of this kind (`TASKYARD_QUEUE_TYPE`)."""
    if queue_type == "quorum":
        return {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
    return {}


class TaskyardRabbitmqBroker(HookDispatch, RabbitmqBroker):
    """Dramatiq's RabbitMQ broker: consumers refuse poison bodies, one publisher per process.

    Every publish goes through the process's one `Publisher` (its own
    connection, confirms pipelined), not through a connection per sending
    thread; `enqueue` still returns only once RabbitMQ has confirmed, and
    `enqueue_many` waits for a whole batch at the cost of about one round trip.
    """

    def __init__(
        self,
        *,
        queue_type: str = QUEUE_TYPES[0],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_poison: OnPoison | None = None,
        route_check: RouteCheck | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}")
        if queue_type == "quorum" and kwargs.get("max_priority"):
            # RabbitMQ 3.10's quorum queues keep no priorities.
            raise ValueError("a quorum queue cannot have a max_priority")
        self.queue_type = queue_type
        super().__init__(**kwargs)
        self.max_message_bytes = max_message_bytes
        self.on_poison = on_poison
        self.route_check = route_check
        self.max_eta_ahead_ms = DEFAULT_MAX_ETA_AHEAD_MS
        self.publish_timeout = publish_timeout
        self._publisher: Publisher | None = None
        self._publisher_lock = threading.Lock()

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """A tenant or system queue's (and its delay queue's) arguments, with its kind."""
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)  # type: ignore[no-untyped-call]
        return arguments | kind_arguments(self.queue_type)

    def dead_queue_arguments(self) -> dict[str, Any]:
        """A .XQ queue's arguments: Dramatiq's message TTL, and the queue's kind."""
        arguments = {"x-message-ttl": DEAD_MESSAGE_TTL_MS} | kind_arguments(self.queue_type)
        # A dead-letter queue dead-letters nowhere: no delivery limit.
        arguments.pop("x-delivery-limit", None)
        return arguments

    def arguments_of(self, name: str) -> dict[str, Any]:
        """The arguments Taskyard declares a queue with: a queue's, its .DQ's or its .XQ's."""
        if name.endswith(".XQ"):
            return self.dead_queue_arguments()
        return self._build_queue_arguments(q_name(name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=self.dead_queue_arguments()
        )

    def get_results_backend(self) -> ResultBackend:
        """A `Results` backend added by hand, else the job records (`results_backend_of`)."""
        # Imported here: the middleware package imports this module.
        from middleware.results import results_backend_of

        return results_backend_of(self)

    def named_parameters(self, role: str) -> Any:
        """The connection parameters, naming the connection for its role, host and process.

        RabbitMQ shows the name (`rabbitmqctl list_connections name`, the
        management UI), so an operator can tell a consumer from a publisher and
        one worker process from another.
        """
        name = f"taskyard {role} {socket.gethostname()}:{os.getpid()}"

        def with_name(parameters: pika.ConnectionParameters) -> pika.ConnectionParameters:
            named = copy.copy(parameters)
            named.client_properties = {
                **(parameters.client_properties or {}),
                "connection_name": name,
            }
            return named

        if isinstance(self.parameters, list):
            return [with_name(parameters) for parameters in self.parameters]
        return with_name(self.parameters)

    @property
    def publisher(self) -> Publisher:
        """This process's publisher (a forked child makes its own)."""
        publisher = self._publisher
        if publisher is None or publisher.pid != os.getpid():
            with self._publisher_lock:
                publisher = self._publisher
                if publisher is None or publisher.pid != os.getpid():
                    publisher = self._publisher = Publisher(
                        self.named_parameters("publisher"),
                        queue_arguments=self._build_queue_arguments,
                        dead_queue_arguments=self.dead_queue_arguments(),
                    )
        return publisher

    def refusal_of(self, queue_name: str) -> BrokerRefused | None:
        """RabbitMQ's refusal of the queue, if this process's publisher has just had one."""
        publisher = self._publisher
        if publisher is None or publisher.pid != os.getpid():
            return None
        return publisher.refusal_of(q_name(queue_name))

    def _ensure_queue(self, canonical_queue_name: str) -> None:
        """Declare a pending queue through the publisher, not a connection of the calling thread."""
        self.ensure_queues([canonical_queue_name])

    def ensure_queues(self, queue_names: Iterable[str]) -> None:
        """Declare those of the queues still pending on the server, together.

        Every declaration is handed to the publisher before any is waited for:
        its thread sends them back to back, and a worker serving 1,000 tenants
        waits for their replies about once, not 1,000 times.
        """
        wait_all([self.ensure_queues_async(queue_names)], self.publish_timeout)

    def ensure_queues_async(self, queue_names: Iterable[str]) -> Future[None]:
        """`ensure_queues` without waiting: the future resolves once RabbitMQ has declared
        them all (a queue is no longer pending from then), or fails with the first refusal.
        """
        wanted = sorted({q_name(name) for name in queue_names} & self.queues_pending)
        declared = gather([self.publisher.declare(name) for name in wanted])

        def settled(future: Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.queues_pending.difference_update(wanted)

        declared.add_done_callback(settled)
        return declared

    def enqueue_async(
        self, message: Message[Any], *, delay: int | None = None, body: bytes | None = None
    ) -> tuple[Message[Any], Future[None]]:
        """Hand a message to the publisher; the future resolves on RabbitMQ's confirm.

        `body`: the message already encoded (an outbox row's), not encoded again;
        a delay changes the message, which is then encoded anew.
        """
        canonical = q_name(message.queue_name)
        routing_key = canonical
        if delay is not None:
            body = None
            routing_key = dq_name(canonical)
            message = message.copy(
                queue_name=routing_key, options={"eta": current_millis() + delay}
            )
        # Registers the queue (and lets a worker of this process consume it); the
        # publisher declares it on RabbitMQ before its first publish.
        self.declare_queue(canonical)
        self.emit_before("enqueue", message, delay)
        future = self.publisher.publish(
            canonical,
            routing_key,
            message.encode() if body is None else body,
            message_id=message.message_id,
            priority=message.options.get("broker_priority"),
        )
        return message, future

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Publish one message and wait for RabbitMQ's confirm.

        Raises `BrokerRefused` at once when RabbitMQ refuses the queue or the
        publish, and `PublishFailed` when no confirm comes (RabbitMQ away).
        """
        message, future = self.enqueue_async(message, delay=delay)
        wait_all([future], self.publish_timeout)
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(self, items: Sequence[tuple[Message[Any], int | None]]) -> list[Message[Any]]:
        """Publish many messages at once and wait until RabbitMQ has confirmed them all."""
        sent = [self.enqueue_async(message, delay=delay) for message, delay in items]
        wait_all([future for _, future in sent], self.publish_timeout)
        for (message, _), (_, delay) in zip(sent, items, strict=True):
            self.emit_after("enqueue", message, delay)
        return [message for message, _ in sent]

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue (and of its delay and dead-letter queues).

        What this process handed to its publisher before the call is waited
        for first (up to `publish_timeout`), so that a message sent before a
        flush is dropped by it, as on Dramatiq's broker, whose `send` returns
        after RabbitMQ's confirm; it would otherwise reach the queue after the
        purge.
        """
        publisher = self._publisher
        if publisher is not None and publisher.pid == os.getpid():
            publisher.settle(self.publish_timeout)
        super().flush(queue_name)

    def close(self) -> None:
        """Close the publisher (after what is in flight), then Dramatiq's connections."""
        if self._publisher is not None and self._publisher.pid == os.getpid():
            self._publisher.close(timeout=self.publish_timeout)
        super().close()

    def admit(self, body: bytes, queue_name: str) -> Message[Any] | Refusal:
        """The message in a delivered body, or why it is refused before it becomes a job.

        Screens the bytes (`screen`), then asks `route_check` whether the
        message may run on the queue it arrived on: a refused message never
        reaches a worker thread, a middleware hook or the database.
        """
        verdict = screen(
            body,
            queue_name=queue_name,
            max_bytes=self.max_message_bytes,
            max_eta_ahead_ms=self.max_eta_ahead_ms,
        )
        if isinstance(verdict, Refusal) or self.route_check is None:
            return verdict
        refusal = self.route_check(verdict)
        return verdict if refusal is None else refusal

    @property
    def consumer_class(self) -> type[ScreeningConsumer]:
        """The consumer that screens every body before decoding it."""
        return ScreeningConsumer

    def report_poison(self, queue_name: str, body: bytes, refusal: Refusal) -> None:
        """Hand a refused body to `on_poison`; whatever happens there, the consumer goes on.

        Middleware with an `after_refuse_message(broker, queue_name, reason)` hook
        hear of it too: the body is rejected without Dramatiq's nack, so no
        `after_nack` would count it (Metrics counts it as a dead letter).
        """
        for middleware in self.middleware:
            hook = getattr(middleware, "after_refuse_message", None)
            if hook is None:
                continue
            try:
                hook(self, queue_name, refusal.reason)
            except Exception:
                self.logger.exception(
                    "Unexpected failure in after_refuse_message of %r", middleware
                )
        if self.on_poison is None:
            self.logger.error(
                "Refused a message on %s (%s: %s); it goes only to RabbitMQ's dead-letter queue",
                queue_name,
                refusal.reason,
                refusal.error,
            )
            return
        try:
            self.on_poison(queue_name, body, refusal.reason, refusal.error)
        except Exception:
            self.logger.exception("Could not report a refused message on %s", queue_name)


def check_priority(broker: Broker, message: Message[Any]) -> None:
    """Refuse a message's `broker_priority` (`PriorityRefused`) unless its queue can keep it.

    RabbitMQ orders by priority only on a classic queue declared with
    x-max-priority; Taskyard declares its queues without it (as Dramatiq does
    unless given `max_priority`), and an existing queue's arguments cannot
    change, so a priority would be accepted and silently ignored.
    """
    priority = message.options.get("broker_priority")
    if priority is not None and not getattr(broker, "max_priority", None):
        raise PriorityRefused(message.actor_name)


# Where a broker with Taskyard's runtime keeps its own `enqueue`, which writes no record.
PUBLISH_ATTRIBUTE = "taskyard_publish"


def publish_now(broker: Broker, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
    """Publish a message as it is, writing no record: the broker's own `enqueue`.

    On a broker with Taskyard's runtime, `broker.enqueue` (Dramatiq's public
    send, which `group.run()`, `pipeline.run()` and a plain actor's `send()`
    call) writes the job's record first, through the outbox.  What already has
    its record (a retry, an outbox row, a requeued dead letter) is published
    with this instead.
    """
    publish = getattr(broker, PUBLISH_ATTRIBUTE, None) or broker.enqueue
    published: Message[Any] = publish(message, delay=delay)
    return published


def publish_all(
    broker: Broker,
    items: Sequence[tuple[Message[Any], int | None]],
    bodies: Sequence[bytes | None] = (),
) -> list[Exception | None]:
    """Publish many messages, each with its own outcome: None if confirmed, else the error.

    On Taskyard's broker they are all in flight at once (about one round trip
    for the lot); any other broker (the in-process one) publishes them in turn.
    `bodies`, where given, are the messages already encoded, in the same order.
    """
    if not isinstance(broker, TaskyardRabbitmqBroker):
        outcomes: list[Exception | None] = []
        for message, delay in items:
            try:
                publish_now(broker, message, delay=delay)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
    sent: list[tuple[Message[Any], Future[None]] | Exception] = []
    for index, (message, delay) in enumerate(items):
        body = bodies[index] if index < len(bodies) else None
        try:
            sent.append(broker.enqueue_async(message, delay=delay, body=body))
        except Exception as exc:
            sent.append(exc)
    results: list[Exception | None] = []
    for entry, (_, delay) in zip(sent, items, strict=True):
        if isinstance(entry, Exception):
            results.append(entry)
            continue
        message, future = entry
        try:
            wait_all([future], broker.publish_timeout)
            broker.emit_after("enqueue", message, delay)
            results.append(None)
        except Exception as exc:
            results.append(exc)
    return results
