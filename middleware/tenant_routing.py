"""Tenant routing: which queue a tenant's messages use, and which queues a worker serves."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dramatiq import Actor, Message, Worker
from dramatiq.broker import Broker
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from middleware.actor_options import is_taskyard
from middleware.worker_state import WorkerState
from services.errors import PermanentError, valid_tenant_id
from settings import tenant_of_queue_name, tenant_queue_name
from transport.rabbitmq import Refusal


class RouteRefused(PermanentError):
    """A message may not run where it arrived (`Refusal.reason`: wrong queue, tenant, actor)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.error, reason=refusal.reason)


class TenantRouting(Middleware):
    """Routes each tenant's messages to `tenant.<id>` and keeps the worker's queue list fresh.

    The queue is chosen from the message's `tenant_id` when the message is
    built (no database lookup on send).  A worker serves the queues of every
    active tenant, found at boot and every `refresh_seconds` after, or only
    the `pinned` tenants.
    """

    # `tenant_scoped`: the actor takes `tenant_id` and runs on its tenant's queue.
    actor_options = {"tenant_scoped"}

    def __init__(
        self,
        *,
        queue_prefix: str = "",
        pinned: Iterable[int] = (),
        refresh_seconds: float = 30.0,
        list_tenants: Callable[[], list[int]] | None = None,
        state: WorkerState | None = None,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.queue_prefix = queue_prefix
        self.pinned = tuple(pinned)
        self.refresh_seconds = refresh_seconds
        self.list_tenants = list_tenants
        # Tenant statuses and cancel requests, refreshed by the same loop (every worker).
        self.state = state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def system_queue(self) -> str:
        """The queue of system actors (the scheduler tick, maintenance)."""
        return f"{self.queue_prefix}taskyard.system"

    def queue_for(self, tenant_id: int) -> str:
        """The queue of one tenant."""
        return tenant_queue_name(self.queue_prefix, tenant_id)

    def refusal(self, actor: Actor[Any, Any] | None, message: Message[Any]) -> Refusal | None:
        """Why `message` may not run on the queue it arrived on; None when it may.

        The one rule of where an actor runs, checked by the consumer before a
        body becomes a job and again by the engine before any of the actor's
        code: a tenant-scoped actor only from the queue of the tenant it names,
        any other actor (the system actors: tenant deletion, the locker's
        re-encryption, retention, the scheduler's tick) only from the queue it
        was declared on.  Taskyard's actors take keyword arguments only, and
        `tenant_id` must be a positive integer, as `send()` requires.
        """
        queue = q_name(message.queue_name)
        name = message.actor_name
        if actor is None:
            return Refusal(
                "unknown_actor",
                f"no actor named {name!r} on this worker (message on {queue!r}); deploy the "
                "code that declares it, then requeue the dead letter",
            )
        if is_taskyard(actor) and message.args:
            return Refusal(
                "invalid_arguments",
                f"{name} takes keyword arguments only (got {len(message.args)} positional)",
            )
        if not actor.options.get("tenant_scoped"):
            if queue != actor.queue_name:
                return Refusal(
                    "wrong_queue",
                    f"{name} runs only from queue {actor.queue_name!r}, not from {queue!r}; "
                    "refused before it ran",
                )
            return None
        tenant_id = message.kwargs.get("tenant_id")
        if not valid_tenant_id(tenant_id):
            return Refusal(
                "invalid_arguments",
                f"{name} needs tenant_id, a positive integer (got {tenant_id!r})",
            )
        if queue != self.queue_for(tenant_id):
            return Refusal(
                "tenant_mismatch",
                f"{name} for tenant {tenant_id} arrived on queue {queue!r}, not on "
                f"{self.queue_for(tenant_id)!r}; it was not sent through Taskyard's routing, so "
                "it runs for no tenant",
            )
        return None

    def check_message(self, actor: Actor[Any, Any] | None, message: Message[Any]) -> None:
        """Raise `RouteRefused` unless `message` may run on the queue it arrived on."""
        refusal = self.refusal(actor, message)
        if refusal is not None:
            raise RouteRefused(refusal)

    def tenant_of_queue(self, queue_name: str) -> int | None:
        """The tenant whose queue (or delay queue) this is; None for any other queue."""
        return tenant_of_queue_name(self.queue_prefix, queue_name)

    def still_served(self, queue_name: str) -> bool:
        """Whether a queue RabbitMQ deleted should be declared and consumed again.

        Not a tenant's queue once that tenant is being deleted (or is gone):
        declaring it again would leave an empty queue behind for ever.  When the
        tenants cannot be read, yes: a queue kept by mistake is harmless.
        """
        tenant_id = self.tenant_of_queue(queue_name)
        if tenant_id is None or self.list_tenants is None:
            return True
        try:
            # Every tenant not being deleted, whether or not this worker is pinned.
            return tenant_id in self.list_tenants()
        except Exception:
            self.logger.warning("Could not read the tenants; %s kept", queue_name, exc_info=True)
            return True

    def tenants_to_serve(self) -> list[int]:
        """The tenants whose queues this worker should consume."""
        if self.pinned:
            return list(self.pinned)
        if self.state is not None and self.state.polled:
            return self.state.served()
        if self.list_tenants is None:
            return []
        return self.list_tenants()

    def declare_tenant_queues(self, broker: Broker) -> int:
        """Declare (and so start consuming) the queue of every tenant to serve; returns new ones."""
        before = set(broker.get_declared_queues())
        for tenant_id in self.tenants_to_serve():
            broker.declare_queue(self.queue_for(tenant_id))
        return len(set(broker.get_declared_queues()) - before)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """A worker pinned with TASKYARD_TENANTS serves those tenants' queues and nothing else."""
        if self.pinned and not worker.consumer_whitelist:
            worker.consumer_whitelist = {self.queue_for(tenant_id) for tenant_id in self.pinned}

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Serve the tenants' queues now, and look for new tenants in the background."""
        if self.state is not None:
            try:
                self.state.refresh()
            except Exception:
                self.logger.warning("Could not read the tenants' state", exc_info=True)
        added = self.declare_tenant_queues(broker)
        self.logger.info("Serving %d tenant queue(s)", added)
        if self.state is None and (self.pinned or self.list_tenants is None):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._refresh_loop, args=(broker,), name="taskyard-tenant-refresh", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop looking for new tenants."""
        self._stop.set()

    def _refresh_loop(self, broker: Broker) -> None:
        failing = False
        while not self._stop.wait(self.refresh_seconds):
            try:
                if self.state is not None:
                    self.state.refresh()
                # A pinned worker serves its tenants' queues, whatever the poll says.
                added = 0 if self.pinned else self.declare_tenant_queues(broker)
            except Exception as exc:
                # The database may be away for a while; the next round tries again.  One
                # line when that starts, not one a second.
                if not failing:
                    self.logger.warning(
                        "Could not refresh the tenant list (%s: %s); retrying every %g s",
                        type(exc).__name__,
                        str(exc).splitlines()[0][:300] if str(exc) else "",
                        self.refresh_seconds,
                    )
                failing = True
                continue
            if failing:
                self.logger.info("Refreshing the tenant list again")
                failing = False
            if added:
                self.logger.info("Now serving %d new tenant queue(s)", added)
