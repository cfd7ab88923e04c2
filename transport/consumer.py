"""One consumer thread and one AMQP connection per worker process, however many queues it serves.

Dramatiq's worker starts a `ConsumerThread`, with its own connection, for every
queue and every delay queue: a worker serving 1,000 tenants would hold 2,000
connections and threads.  `ConsumerMultiplexing` replaces the worker's
`_add_consumer` so that every queue is consumed by one `MultiplexingConsumer`
instead: one connection, one channel for the queues and one for the delay
queues, one `basic_consume` per queue.

The process holds a bounded number of unacknowledged messages, however many
queues are busy: each queue's one consumer takes one message at a time, and
the queues found busy share the bound as larger prefetches
(`transport/prefetch.py`).  A consumer's prefetch is fixed when it starts (the
channel's `basic_qos`, global=False, applies to consumers started after it),
so a queue's prefetch changes by starting a new consumer and cancelling the
old one, whose unacknowledged deliveries stay with the channel.
What the threads run next is chosen fairly across tenants by the work queue
that replaces Dramatiq's (`transport/fair_queue.py`).  A delay queue keeps a
prefetch of its own (`delay_prefetch`): its messages wait in memory for their
eta, at most the outbox's delay threshold away.

The consumer is a `ConsumerThread` registered in `worker.consumers` under every
queue name, so Dramatiq's own code keeps doing the rest: the worker threads ack
and nack through `post_process_message`, delayed messages wait in its
`delay_queue`, and `Worker.pause/resume/stop/join` see it like any consumer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from queue import PriorityQueue
from typing import Any

import pika
import pika.exceptions
from dramatiq import Worker
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware
from dramatiq.worker import CONSUMER_RESTART_DELAY_SECS, ConsumerThread, _WorkQueueItem

from services.errors import BrokerRefused
from transport.fair_queue import FairWorkQueue
from transport.prefetch import PrefetchShares, QueueLoad
from transport.publisher import PublishFailed
from transport.rabbitmq import Refusal, TaskyardRabbitmqBroker

# Queues started per pass of the loop: declaring 1,000 tenants' queues takes
# seconds, and the queues already consumed keep being served in between.
QUEUES_PER_PASS = 100
# How long a booting worker waits for its queues to be consumed before it says it is ready.
BOOT_WAIT_SECONDS = 3.0
# How long a queue RabbitMQ refused (see `BrokerRefused`) waits before it is tried again.
REFUSED_RETRY_SECONDS = 60.0
# What a lost connection, a closed channel or a refused declaration raises.
AMQP_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)


# Dramatiq prefetches two messages per worker thread; a message also stays unacknowledged
# while its record waits for the group commit, so the process may hold this many times
# more, or the threads would wait for deliveries while finished jobs wait for their acks.
ACK_WAIT_PREFETCH_FACTOR = 4
# Messages a queue's consumer holds unacknowledged unless the queue is busy.
CONSUMER_PREFETCH = 1
# How often the consumer looks at which queues are busy and resizes their prefetch.
REBALANCE_SECONDS = 0.1
# Consumers replaced per look at most (each is two or three round trips to RabbitMQ).
REBALANCE_CHANGES = 32


def _settle_calls(
    settles: list[tuple[Any, int, bool]], lowest: Mapping[int, int]
) -> dict[Any, list[tuple[str, int, bool]]]:
    """The acks and nacks to send for `settles`, by channel: a run of acks as one.

    RabbitMQ's `basic.ack` with `multiple` acknowledges every delivery up to its
    tag on the channel.  The acks below the channel's lowest delivery still
    unsettled (`lowest`) and below its lowest nack of the batch are sent as one
    such ack: every delivery under that tag is then settled, or being acked.
    (Deliveries not handed to a worker yet have higher tags than any tracked.)
    """
    by_channel: dict[Any, list[tuple[int, bool]]] = {}
    for channel, tag, ack in settles:
        by_channel.setdefault(channel, []).append((tag, ack))
    calls: dict[Any, list[tuple[str, int, bool]]] = {}
    for channel, batch in by_channel.items():
        floor = min(
            [lowest.get(channel.channel_number, sys.maxsize)]
            + [tag for tag, ack in batch if not ack]
        )
        run = sorted(tag for tag, ack in batch if ack and tag < floor)
        out: list[tuple[str, int, bool]] = []
        if len(run) > 1:
            out.append(("ack", run[-1], True))
        elif run:
            out.append(("ack", run[0], False))
        covered = set(run)
        for tag, ack in batch:
            if tag not in covered:
                out.append(("ack" if ack else "nack", tag, False))
        calls[channel] = out
    return calls


def is_delay_queue(queue_name: str) -> bool:
    """Whether `queue_name` is a delay queue (its messages carry an eta)."""
    return queue_name.endswith(".DQ")


class _Delivery(MessageProxy):
    """A message and where it came from: the link and channel whose delivery tag it carries."""

    # Its acknowledgement may wait for its record's group commit (`record_ticket`).
    defers_ack = True
    record_ticket: Any = None

    def __init__(self, link: _Link, channel_number: int, tag: int, redelivered: bool, message: Any):
        super().__init__(message)
        self.link = link
        self.channel_number = channel_number
        self._tag = tag
        self.redelivered = redelivered


class _Link(Consumer):
    """One AMQP connection of the consumer: its two channels and its unsettled deliveries.

    Worker threads settle deliveries through `ack` and `nack`; pika is not
    thread-safe, so those only schedule the call on the connection's own thread.
    A delivery from an earlier link is not settled: RabbitMQ already put it back
    when that connection closed.
    """

    def __init__(
        self,
        connection: Any,
        *,
        queue_prefetch: int,
        delay_prefetch: int,
        on_cancel: Callable[[str], None] = lambda queue_name: None,
    ) -> None:
        self.logger = logging.getLogger("MultiplexingConsumer")
        self.connection = connection
        self.on_cancel = on_cancel
        self.channels: dict[bool, Any] = {}
        for delay, prefetch in ((False, queue_prefetch), (True, delay_prefetch)):
            channel = self.connection.channel()
            # global=False: the limit holds for each queue consumed on the channel.
            channel.basic_qos(prefetch_count=prefetch, global_qos=False)
            channel.add_on_cancel_callback(self._cancelled)
            self.channels[delay] = channel
        self._queue_of_tag: dict[str, str] = {}
        # Each queue's (not delay queue's) current consumer tag and its prefetch.
        self._current: dict[str, tuple[str, int]] = {}
        self.queue_prefetch = queue_prefetch
        # The prefetch the queues' channel gives the next consumer started on it.
        self._next_prefetch = queue_prefetch
        # Each unsettled delivery's queue and consumer tag, and how many each one holds.
        self._unsettled: dict[tuple[int, int], tuple[str, str]] = {}
        self._in_hand: dict[str, int] = {}
        self._held_by: dict[str, int] = {}
        # Deliveries of each queue since `loads` was last called.
        self._delivered: dict[str, int] = {}
        self._lock = threading.Lock()
        # (channel, delivery tag, ack?) settled by worker threads, sent by the next drain.
        self._settles: list[tuple[Any, int, bool]] = []
        self._drain_scheduled = False
        self.closed = False

    def consume(self, queue_name: str, on_message: Any, prefetch: int = 0) -> str:
        """Deliver `queue_name`'s messages to `on_message(channel, method, props, body)`.

        A queue (not a delay queue) consumed again gets a new consumer holding
        at most `prefetch` messages (default: the link's), and the old one is
        cancelled; returns the consumer's tag.
        """
        delay = is_delay_queue(queue_name)
        channel = self.channels[delay]
        prefetch = prefetch or self.queue_prefetch
        if not delay and prefetch != self._next_prefetch:
            channel.basic_qos(prefetch_count=prefetch, global_qos=False)
            self._next_prefetch = prefetch
        tag: str = channel.basic_consume(queue_name, on_message)
        self._queue_of_tag[tag] = queue_name
        if not delay:
            old = self._current.get(queue_name)
            self._current[queue_name] = (tag, prefetch)
            if old is not None:
                self._cancel(old[0])
        return tag

    def _cancel(self, tag: str) -> None:
        # Called when the consumer holds all it may (no delivery on the way), or its queue
        # is drained: a delivery on the way when it is cancelled is rejected back to the
        # queue by pika and comes back flagged redelivered (which the engine counts as a
        # possible crash).
        del self._queue_of_tag[tag]
        self.channels[False].basic_cancel(tag)

    def prefetch_of(self, queue_name: str) -> int:
        """The prefetch of the queue's current consumer (0: not consumed)."""
        current = self._current.get(queue_name)
        return 0 if current is None else current[1]

    def held(self, queue_name: str) -> tuple[int, int]:
        """The queue's deliveries not settled: all of them, and its current consumer's."""
        current = self._current.get(queue_name)
        with self._lock:
            return (
                self._in_hand.get(queue_name, 0),
                0 if current is None else self._held_by.get(current[0], 0),
            )

    def loads(self) -> dict[str, QueueLoad]:
        """The queues holding or given a delivery, or a prefetch above one, with the counts."""
        with self._lock:
            in_hand = dict(self._in_hand)
            delivered, self._delivered = self._delivered, {}
        names = (
            set(in_hand)
            | set(delivered)
            | {name for name, (_, prefetch) in self._current.items() if prefetch > 1}
        )
        return {
            name: QueueLoad(self.prefetch_of(name), in_hand.get(name, 0), delivered.get(name, 0))
            for name in names
            if name in self._current
        }

    def in_hand(self) -> int:
        """Deliveries of the queues (not the delay queues) not settled yet."""
        with self._lock:
            return sum(self._in_hand.values())

    def _cancelled(self, method_frame: Any) -> None:
        # RabbitMQ cancels the consumers of a queue that was deleted.
        tag = method_frame.method.consumer_tag
        queue_name = self._queue_of_tag.pop(tag, None)
        if queue_name is None:
            return
        if self._current.get(queue_name, ("",))[0] == tag:
            del self._current[queue_name]
        if not is_delay_queue(queue_name) and queue_name in self._current:
            return  # a consumer replaced before RabbitMQ cancelled it: the queue's is still on
        self.on_cancel(queue_name)

    def track(self, channel_number: int, tag: int, queue_name: str, consumer_tag: str) -> None:
        """Remember a delivery until a worker thread settles it."""
        with self._lock:
            self._unsettled[(channel_number, tag)] = (queue_name, consumer_tag)
            if not is_delay_queue(queue_name):
                self._in_hand[queue_name] = self._in_hand.get(queue_name, 0) + 1
                self._delivered[queue_name] = self._delivered.get(queue_name, 0) + 1
                self._held_by[consumer_tag] = self._held_by.get(consumer_tag, 0) + 1

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge a delivery (from any thread)."""
        self._settle(message, ack=True)

    def nack(self, message: MessageProxy) -> None:
        """Reject a delivery to its dead-letter queue (from any thread)."""
        self._settle(message, ack=False)

    def reject(self, channel: Any, tag: int) -> None:
        """Reject a delivery that never became a message (on the connection's thread)."""
        channel.basic_nack(tag, requeue=False)

    def _settle(self, message: MessageProxy, *, ack: bool) -> None:
        assert isinstance(message, _Delivery)
        key = (message.channel_number, message._tag)
        channel = self.channels[is_delay_queue(message.queue_name)]
        wake = False
        # One lock section: a delivery is always either unsettled or queued to be settled,
        # which `_drain` relies on to acknowledge a run of deliveries at once.
        with self._lock:
            origin = self._unsettled.pop(key, None) if message.link is self else None
            if origin is not None:
                if not is_delay_queue(origin[0]):
                    _count_down(self._in_hand, origin[0])
                    _count_down(self._held_by, origin[1])
                self._settles.append((channel, message._tag, ack))
                # One wake-up of the connection's thread settles everything queued by then.
                wake, self._drain_scheduled = not self._drain_scheduled, True
        if origin is None:
            self.logger.warning(
                "Could not settle message %s: its connection was closed, so RabbitMQ redelivers it",
                message.message_id,
            )
            return
        if not wake:
            return
        try:
            self.connection.add_callback_threadsafe(self._drain)
        except AMQP_ERRORS:
            with self._lock:
                self._drain_scheduled = False

    def _drain(self) -> None:
        # On the connection's thread: settle every delivery queued since the last drain.
        with self._lock:
            settles, self._settles = self._settles, []
            self._drain_scheduled = False
            # The lowest delivery tag each channel still has unsettled (in a worker's hands).
            lowest: dict[int, int] = {}
            for number, tag in self._unsettled:
                if tag < lowest.get(number, tag + 1):
                    lowest[number] = tag
        # Every ack and nack of the batch is written, then each channel's output is
        # flushed once (pika's blocking channel flushes after every single one).
        for channel, calls in _settle_calls(settles, lowest).items():
            for index, (method, tag, multiple) in enumerate(calls):
                target = channel if index == len(calls) - 1 else channel._impl
                if method == "ack":
                    target.basic_ack(tag, multiple=multiple)
                else:
                    target.basic_nack(tag, requeue=False)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Nothing to do: RabbitMQ puts unacked messages back when the connection closes."""

    def close(self) -> None:
        """Send what worker threads settled, then close; safe to call again."""
        if self.closed:
            return
        self.closed = True
        with self._lock:
            self._unsettled.clear()
            self._in_hand.clear()
            self._held_by.clear()
            self._delivered.clear()
        try:
            if self.connection.is_open:
                # Callbacks run in order: once this one has, every ack before it is written.
                flushed = threading.Event()
                self.connection.add_callback_threadsafe(flushed.set)
                while not flushed.is_set():
                    self.connection.process_data_events(time_limit=0)
                self.connection.close()
        except Exception:
            # The server may be gone already; the unacked messages come back anyway.
            self.logger.debug("Could not close the connection cleanly", exc_info=True)


@dataclass
class _Declaring:
    """A pass of queues handed to RabbitMQ to declare, consumed once it has answered."""

    queues: list[str]
    declared: Future[None]
    # When the consumer gives up waiting and reconnects (monotonic).
    deadline: float


def _count_down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _nothing() -> None:
    """A callback that only wakes the connection's thread."""


class MultiplexingConsumer(ConsumerThread):
    """The one consumer thread of a worker: every queue, over one connection at a time."""

    consumer: _Link | None
    broker: TaskyardRabbitmqBroker

    def __init__(
        self,
        *,
        broker: TaskyardRabbitmqBroker,
        work_queue: PriorityQueue[_WorkQueueItem],
        prefetch_bound: int,
        delay_prefetch: int,
        worker_timeout: int,
        restart_delay: float = CONSUMER_RESTART_DELAY_SECS,
        keep_queue: Callable[[str], bool] = lambda queue_name: True,
    ) -> None:
        super().__init__(
            broker=broker,
            queue_name="*",
            prefetch=prefetch_bound,
            work_queue=work_queue,
            worker_timeout=worker_timeout,
        )
        self.name = "taskyard-consumer"
        self.logger = logging.getLogger(type(self).__name__)
        self.delay_prefetch = delay_prefetch
        self.restart_delay = restart_delay
        # Asked when RabbitMQ deleted a queue: False lets it go instead of declaring it again.
        self.keep_queue = keep_queue
        self._lock = threading.Lock()
        # Notified whenever every registered queue has come to be consumed.
        self._caught_up = threading.Condition(self._lock)
        self._consuming_all = False
        self._queues: list[str] = []
        self._pending: list[str] = []
        # Queues RabbitMQ refused, left out until the time they are tried again (monotonic).
        self._aside: dict[str, float] = {}
        self._start_requested = False
        # How the bound is shared among busy queues; new with every connection.
        self.shares = PrefetchShares(prefetch_bound)
        self._rebalanced_at = 0.0
        # The pass of queues whose declarations RabbitMQ is answering (this thread's only).
        self._declaring: _Declaring | None = None

    @property
    def queue_names(self) -> list[str]:
        """Every queue registered, in the order they were added."""
        with self._lock:
            return list(self._queues)

    def add_queue(self, queue_name: str) -> bool:
        """Consume `queue_name` too (from any thread); False if it was already registered."""
        with self._lock:
            if queue_name in self._queues:
                return False
            self._queues.append(queue_name)
            self._pending.append(queue_name)
            self._consuming_all = False
        # The thread may be waiting for deliveries for up to `worker_timeout`: wake it,
        # so a queue added after boot (the tenants' queues) is consumed at once.
        link = self.consumer
        if link is not None:
            self._wake(link)
        return True

    def wait_consuming(self, timeout: float) -> bool:
        """Wait until every queue registered so far is consumed; False if `timeout` passed first.

        Delay queues excepted: their messages are not due yet, and they are
        consumed right after (a worker of 1,000 tenants would otherwise wait
        for 2,000 subscriptions before it says it is ready).
        """
        with self._caught_up:
            if not self._queues:
                return True
            return self._caught_up.wait_for(lambda: self._consuming_all, timeout)

    def ensure_started(self) -> None:
        """Start the thread once, whichever thread registers the first queue."""
        with self._lock:
            if self._start_requested:
                return
            self._start_requested = True
        self.start()

    def take_pending(self, limit: int = QUEUES_PER_PASS) -> list[str]:
        """Up to `limit` of the queues registered but not yet consumed: oldest first, delay
        queues after every other queue."""
        with self._lock:
            now = time.monotonic()
            due = [name for name, at in self._aside.items() if at <= now]
            for name in due:
                del self._aside[name]
            ordered = sorted(self._pending + due, key=is_delay_queue)  # stable: oldest first
            pending, self._pending = ordered[:limit], ordered[limit:]
            return pending

    def run(self) -> None:
        """Consume until stopped; reconnect after a lost connection, as `ConsumerThread` does."""
        self.running = True
        self.broker.emit_after("consumer_thread_boot", self)
        while self.running:
            if self.paused:
                # As Dramatiq's consumer: a paused worker holds no prefetched messages.
                self._disconnect()
                self.paused_event.set()
                time.sleep(self.worker_timeout / 1000)
                continue
            try:
                self._serve_once()
            except (BrokerConnectionError, *AMQP_ERRORS) as exc:
                self.logger.critical("Consumer encountered a connection error: %s", exc)
                self._restart()
            except Exception:
                self.logger.critical("Consumer encountered an unexpected error.", exc_info=True)
                self._restart()
        # Before the connection closes: the group commit's records, then their acks.
        self.broker.emit_before("consumer_thread_shutdown", self)
        self._disconnect()

    def _serve_once(self) -> None:
        if self.consumer is None:
            self.consumer = _Link(
                pika.BlockingConnection(self.broker.named_parameters("consumer")),
                queue_prefetch=CONSUMER_PREFETCH,
                delay_prefetch=self.delay_prefetch,
                on_cancel=self._resume_queue,
            )
            self.shares = PrefetchShares(self.prefetch)
            self._declaring = None
            with self._lock:
                self._pending = [name for name in self._queues if name not in self._aside]
                self._consuming_all = False
        started = self._start_pending(self.consumer)
        if started:
            self.logger.info("Consuming %d more queue(s) on one connection", started)
            # Their first look comes a tick after their deliveries could, not at once.
            self._rebalanced_at = time.monotonic()
        declaring = [] if self._declaring is None else self._declaring.queues
        with self._lock:
            # A pass being declared wakes this thread when RabbitMQ has answered.
            more = bool(self._pending) and self._declaring is None
            if not self._consuming_all and not any(
                not is_delay_queue(name) for name in self._pending + declaring
            ):
                self._consuming_all = True
                self._caught_up.notify_all()
        # Returns early when a delivery, a worker thread's ack or a declaration is waiting.
        wait = 0 if more else self.worker_timeout / 1000
        self.consumer.connection.process_data_events(time_limit=wait)
        self.handle_delayed_messages()
        now = time.monotonic()
        if now - self._rebalanced_at >= REBALANCE_SECONDS:
            self._rebalanced_at = now
            self.rebalance(self.consumer)

    def rebalance(self, link: _Link) -> int:
        """Resize the queues' prefetch as the shares say; how many consumers were replaced."""
        changes = 0
        for queue_name, wanted in self.shares.plan(link.loads()).items():
            have = link.prefetch_of(queue_name)
            if not have or changes >= REBALANCE_CHANGES:
                continue  # not consumed (deleted, or not started yet), or enough for one look
            in_hand, current = link.held(queue_name)
            # Everything the queue holds stays in hand when its consumer is replaced, so
            # the new consumer's room is its share less that.
            target = max(1, wanted - in_hand)
            # Replaced to shrink at once (drained, or others got busy), or to grow when its
            # consumer holds all it may: then no delivery is on the way to it.
            if wanted < have or (target > have and current >= have):
                on_message = functools.partial(self._on_message, link, queue_name)
                link.consume(queue_name, on_message, prefetch=target)
                changes += 1
        return changes

    def _start_pending(self, link: _Link) -> int:
        """Consume the pass RabbitMQ has declared; hand the next pass's declarations over.

        The thread does not wait for RabbitMQ's answers: declaring 1,000
        tenants' queues takes seconds, and the queues already consumed keep
        getting their deliveries and acks meanwhile.  One pass is declared at a
        time, so a job's publish on the same channel waits behind at most one
        pass of declarations.
        """
        started = self._consume_declared(link)
        if self._declaring is None:
            pending = self.take_pending()
            if pending:
                self._declaring = self._declare_all(pending, link)
                # Nothing to declare (all known to RabbitMQ): consumed in this pass.
                started += self._consume_declared(link)
        return started

    def _consume_declared(self, link: _Link) -> int:
        """Consume the pass being declared once RabbitMQ has answered; how many queues."""
        batch = self._declaring
        if batch is None:
            return 0
        if not batch.declared.done():
            if time.monotonic() < batch.deadline:
                return 0
            batch.declared.cancel()
            self._declaring = None
            self._repend(batch.queues)
            raise PublishFailed(
                f"RabbitMQ did not declare {len(batch.queues)} queue(s) within "
                f"{self.broker.publish_timeout:g} s (is it reachable?)"
            )
        self._declaring = None
        started = 0
        try:
            try:
                batch.declared.result()
            except BrokerRefused as refused:
                self._put_aside(refused, batch.queues)
                return 0
            first = self._first_prefetch()
            for queue_name in batch.queues:
                on_message = functools.partial(self._on_message, link, queue_name)
                link.consume(queue_name, on_message, prefetch=first)
                started += 1
        except BaseException:
            self._repend(batch.queues[started:])
            raise
        return started

    def _repend(self, queue_names: list[str]) -> None:
        """Put queues taken for a pass back at the head of the pending ones."""
        with self._lock:
            self._pending[:0] = queue_names

    def _first_prefetch(self) -> int:
        """A queue's prefetch when it is first consumed: its share of the bound, at least one.

        The bound shared evenly among the queues registered (delay queues apart):
        a worker serving one busy tenant starts at a useful prefetch rather than
        one message, while a worker serving 1,000 starts each at one.  The
        shares then follow which queues are busy (`transport/prefetch.py`).
        """
        with self._lock:
            queues = sum(1 for name in self._queues if not is_delay_queue(name))
        return max(1, self.prefetch // max(1, queues))

    def _put_aside(self, refused: BrokerRefused, pending: list[str]) -> None:
        """Leave a queue RabbitMQ refused out for a while; the pass's others wait for the next.

        A refusal (the queue exists with other arguments, a permission) comes
        back the same until someone changes RabbitMQ: the other queues are
        served meanwhile, the refused one is tried again after
        `REFUSED_RETRY_SECONDS`, and each refusal is said once.
        """
        canonical = q_name(refused.queue_name)
        aside = [name for name in pending if q_name(name) == canonical]
        with self._lock:
            self._pending[:0] = [name for name in pending if q_name(name) != canonical]
            due = time.monotonic() + REFUSED_RETRY_SECONDS
            for name in aside:
                self._aside[name] = due
        self.logger.error(
            "Not consuming %s, tried again in %.0f s: %s",
            canonical,
            REFUSED_RETRY_SECONDS,
            refused,
        )

    def _declare_all(self, queue_names: list[str], link: _Link) -> _Declaring:
        """Hand over the declarations of the queues, their delay and dead-letter queues."""
        broker = self.broker
        try:
            for queue_name in queue_names:
                broker.declare_queue(queue_name)  # registered in this process; nothing sent yet
            declared = broker.ensure_queues_async(queue_names)
        except BaseException:
            self._repend(queue_names)
            raise
        if not declared.done():
            declared.add_done_callback(lambda _: self._wake(link))
        return _Declaring(queue_names, declared, time.monotonic() + broker.publish_timeout)

    @staticmethod
    def _wake(link: _Link) -> None:
        """Wake the thread out of its wait for deliveries (from any thread)."""
        # If the link is going away, the next one starts its passes anew.
        with contextlib.suppress(*AMQP_ERRORS):
            link.connection.add_callback_threadsafe(_nothing)

    def _resume_queue(self, queue_name: str) -> None:
        if not self.keep_queue(queue_name):
            # A deleted tenant's queue: consumed no more, and not declared again.
            with self._lock:
                if queue_name in self._queues:
                    self._queues.remove(queue_name)
            self.logger.info("%s was deleted with its tenant; no longer consumed", queue_name)
            return
        # As Dramatiq's consumer does after a 404: declare the queue again, then consume it.
        self.logger.warning("RabbitMQ cancelled the consumer of %s; declaring it again", queue_name)
        self.broker.queues_pending.add(q_name(queue_name))
        with self._lock:
            self._pending.append(queue_name)
            self._consuming_all = False

    def _on_message(
        self, link: _Link, queue_name: str, channel: Any, method: Any, _props: Any, body: bytes
    ) -> None:
        verdict = self.broker.admit(body, queue_name)
        if isinstance(verdict, Refusal):
            self.broker.report_poison(queue_name, body, verdict)
            link.reject(channel, method.delivery_tag)
            return
        link.track(channel.channel_number, method.delivery_tag, queue_name, method.consumer_tag)
        delivery = _Delivery(
            link, channel.channel_number, method.delivery_tag, method.redelivered, verdict
        )
        self.handle_message(delivery)

    def _restart(self) -> None:
        self._disconnect()
        if self.running:
            self.logger.info("Restarting consumer in %0.2f seconds.", self.restart_delay)
            time.sleep(self.restart_delay)

    def _disconnect(self) -> None:
        link, self.consumer = self.consumer, None
        self._declaring = None
        if link is None:
            return
        with self._lock:
            self._consuming_all = False
        link.close()
        # Unacked on the closed connection, so RabbitMQ delivers them again.
        self.delay_queue = PriorityQueue()
        # A queue deleted on the server is declared again on the next connection.
        for queue_name in self.queue_names:
            self.broker.queues_pending.add(q_name(queue_name))

    def post_process_message(self, message: MessageProxy) -> None:
        """Ack or nack a finished message on the link it came from (from any thread).

        Dramatiq's version settles through `self.consumer`, which is None while
        the thread reconnects (an AttributeError per message in flight, logged as
        if the message were stuck until a restart) and a newer link afterwards.
        The message's own link knows whether its delivery can still be settled.
        """
        assert isinstance(message, _Delivery)
        ticket = message.record_ticket
        if ticket is not None and not message.failed:
            # Acknowledged only once its record, in the group commit, is durable.
            message.record_ticket = None
            ticket.when_settled(functools.partial(self.post_process_message, message))
            return
        event = "nack" if message.failed else "ack"
        self.broker.emit_before(event, message)
        if message.failed:
            message.link.nack(message)
        else:
            message.link.ack(message)
        self.broker.emit_after(event, message)

    def requeue_messages(self, messages: Iterable[MessageProxy]) -> None:
        """Nothing to do: RabbitMQ put back the unacked messages when the connection closed.

        `Worker.stop` calls this after the thread has stopped and closed its
        connection, for the messages still waiting in the work queue.
        """

    def close(self) -> None:
        """Close the connection once the thread has stopped; `Worker.stop` calls this per queue."""
        if not self.is_alive():
            self._disconnect()


class ConsumerMultiplexing(Middleware):
    """Makes a worker consume all its queues with one `MultiplexingConsumer` (RabbitMQ only)."""

    def __init__(
        self,
        *,
        keep_queue: Callable[[str], bool] = lambda queue_name: True,
        tenant_of_queue: Callable[[str], int | None] = lambda queue_name: None,
        prefetch: int = 0,
        tenant_weights: Mapping[int, float] | None = None,
    ) -> None:
        """`prefetch`: messages a process holds unacknowledged (0: 8 per worker thread)."""
        self.logger = logging.getLogger(type(self).__name__)
        # Whether a queue RabbitMQ deleted is declared and consumed again (tenant routing's).
        self.keep_queue = keep_queue
        # Whose a queue is (tenant routing's one rule), for the fair work queue.
        self.tenant_of_queue = tenant_of_queue
        self.prefetch = prefetch
        self.tenant_weights = dict(tenant_weights or {})

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Replace the worker's consumers and its work queue before the first thread starts."""
        if not isinstance(broker, TaskyardRabbitmqBroker):
            return
        # The worker threads, started after this hook, take from the fair queue.
        worker.work_queue = FairWorkQueue(
            tenant_of_queue=self.tenant_of_queue, weights=self.tenant_weights
        )
        consumer = MultiplexingConsumer(
            broker=broker,
            work_queue=worker.work_queue,
            prefetch_bound=self.prefetch or worker.queue_prefetch * ACK_WAIT_PREFETCH_FACTOR,
            delay_prefetch=worker.delay_prefetch,
            worker_timeout=worker.worker_timeout,
            keep_queue=self.keep_queue,
        )
        worker._add_consumer = functools.partial(add_consumer, worker, consumer)  # type: ignore[method-assign]

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Say the worker is ready only once its queues are consumed (or after a bounded wait).

        Runs after the tenant routing registered the tenants' queues.  Without
        the wait, a fresh worker said it was ready before it consumed anything,
        and its first jobs waited in their queues meanwhile.
        """
        consumer = next(
            (c for c in worker.consumers.values() if isinstance(c, MultiplexingConsumer)), None
        )
        if consumer is None or consumer.wait_consuming(BOOT_WAIT_SECONDS):
            return
        self.logger.warning(
            "Not consuming every queue %.0f s after boot; they are started in the background",
            BOOT_WAIT_SECONDS,
        )


def add_consumer(
    worker: Worker, consumer: MultiplexingConsumer, queue_name: str, *, delay: bool = False
) -> None:
    """`Worker._add_consumer`, registering the queue with the shared consumer instead."""
    if queue_name in worker.consumers:
        return
    if worker.consumer_whitelist and q_name(queue_name) not in worker.consumer_whitelist:
        return
    worker.consumers[queue_name] = consumer
    consumer.add_queue(queue_name)
    consumer.ensure_started()
