"""Changing the kind of existing queues (classic to quorum, or back) without losing a message.

RabbitMQ cannot change a queue's kind in place: a queue declared again with
another `x-queue-type` is refused (406).  Each queue is moved instead, with
every worker stopped:

1. its messages are moved to a holding queue, `<name>.migrating`, each one
   acknowledged on the old queue only once RabbitMQ has confirmed its copy;
2. the emptied queue is deleted (only if still empty) and declared anew, of
   the new kind and with the arguments Taskyard gives it;
3. the messages are moved back, and the holding queue is deleted.

A run that stops half way is resumed by running it again: a holding queue
left behind is emptied into its queue.  At worst a message is copied twice
(moved, then the run stopped before its acknowledgement), which the job's
record makes harmless: a copy of a finished job is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import dq_name, q_name, xq_name

# The suffix of the queue that holds a queue's messages while it is declared anew.
HOLDING_SUFFIX = ".migrating"
# RabbitMQ's reply code for a declaration whose arguments differ from the queue's.
PRECONDITION_FAILED = 406
NOT_FOUND = 404

# pika's BlockingChannel (its stubs do not describe it).
Channel = Any


class QueuesInUse(Exception):
    """A queue still has consumers: the workers must be stopped first."""


@dataclass
class Moved:
    """What happened to one queue."""

    queue: str
    # "migrated", "already" (of the kind asked for), "absent" (declared on first use).
    outcome: str
    messages: int = 0


def queue_family(canonical: str) -> list[str]:
    """A queue, its delay queue and its dead-letter queue (Dramatiq's naming)."""
    return [q_name(canonical), dq_name(canonical), xq_name(canonical)]


class QueueMigration:
    """Moves queues to the arguments `arguments_of(name)` gives (their kind among them)."""

    def __init__(self, broker_url: str, arguments_of: Callable[[str], dict[str, Any]]) -> None:
        self.broker_url = broker_url
        self.arguments_of = arguments_of
        self._connection: pika.BlockingConnection | None = None
        self._channel: Channel | None = None

    def __enter__(self) -> QueueMigration:
        self._connection = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    @property
    def channel(self) -> Channel:
        """A confirm-mode channel, opened again after RabbitMQ closed the last one."""
        if self._channel is None or not self._channel.is_open:
            assert self._connection is not None, "use QueueMigration as a context manager"
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def _fresh_channel(self) -> None:
        if self._channel is not None and self._channel.is_open:
            self._channel.close()
        self._channel = None

    def _passive(self, name: str) -> Any | None:
        """The queue's declare-ok (message and consumer counts), or None when it does not exist."""
        try:
            return self.channel.queue_declare(name, passive=True).method
        except pika.exceptions.ChannelClosedByBroker as closed:
            if closed.reply_code != NOT_FOUND:
                raise
            return None

    def _has_arguments(self, name: str, arguments: dict[str, Any]) -> bool:
        """Whether the queue exists with these arguments (a declaration RabbitMQ accepts)."""
        try:
            self.channel.queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as closed:
            if closed.reply_code != PRECONDITION_FAILED:
                raise
            return False
        return True

    def _move(self, source: str, target: str) -> int:
        """Move every ready message of `source` to `target`, each confirmed before its ack."""
        moved = 0
        channel = self.channel
        while True:
            method, properties, body = channel.basic_get(source, auto_ack=False)
            if method is None:
                return moved
            # Published to the default exchange, so straight to `target`; with confirms on,
            # this returns once RabbitMQ has the copy (and raises if it refused it).
            channel.basic_publish("", target, body, properties, mandatory=True)
            channel.basic_ack(method.delivery_tag)
            moved += 1

    def migrate(self, name: str) -> Moved:
        """Give one queue the arguments asked for, its messages kept."""
        arguments = self.arguments_of(name)
        holding = name + HOLDING_SUFFIX
        found = self._passive(name)
        held = self._passive(holding)
        if found is None and held is None:
            return Moved(name, "absent")
        if found is not None and found.consumer_count:
            raise QueuesInUse(
                f"{name} has {found.consumer_count} consumer(s): stop every worker "
                "(dramatiq actors) before migrating its queues, then run this again"
            )
        if found is not None and held is None and self._has_arguments(name, arguments):
            return Moved(name, "already")
        moved = 0
        if found is not None:
            self.channel.queue_declare(holding, durable=True, arguments=_kind_only(arguments))
            while True:
                moved += self._move(name, holding)
                try:
                    self.channel.queue_delete(name, if_empty=True)
                    break
                except pika.exceptions.ChannelClosedByBroker as closed:
                    if closed.reply_code != PRECONDITION_FAILED:
                        raise
                    # Something was published to it meanwhile: move that too.
        # A fresh channel: RabbitMQ 3.10's channel keeps what it knew of the deleted
        # queue, and publishing to the new one of another kind there crashes it (541).
        self._fresh_channel()
        self.channel.queue_declare(name, durable=True, arguments=arguments)
        self._move(holding, name)
        self.channel.queue_delete(holding)
        return Moved(name, "migrated", moved)

    def migrate_all(self, canonicals: Iterable[str]) -> list[Moved]:
        """Every queue of these canonical names, with their delay and dead-letter queues."""
        return [self.migrate(name) for canonical in canonicals for name in queue_family(canonical)]


def _kind_only(arguments: dict[str, Any]) -> dict[str, Any]:
    """A holding queue's arguments: the kind only (no dead-lettering, no TTL)."""
    return {key: value for key, value in arguments.items() if key == "x-queue-type"}
