"""The worker's work queue, served fairly across tenants instead of first-in first-out.

Dramatiq's worker threads take the next message from `worker.work_queue`, a
`PriorityQueue` ordered by actor priority and then arrival: whatever a busy
tenant's queues delivered first runs first, and a quiet tenant's job waits
behind all of it.  `FairWorkQueue` keeps that interface (it is a `Queue`, so
`put`, `get(timeout)`, `task_done`, `join`, `unfinished_tasks`, `qsize` and
`empty` behave as Dramatiq expects) but chooses the next message by start-time
fair queueing across flows: each tenant is one flow, and every other queue (the
system queue) one flow of its own.

Each flow has a virtual time, advanced by 1 / weight for every job it starts;
the next job comes from the waiting flow of least virtual time, so a tenant of
weight 2 starts twice as many jobs as one of weight 1 while both wait.  A flow
that had nothing waiting joins at the queue's current virtual time less one
job's worth (as the Linux scheduler places a task that wakes up), so it goes
ahead of the busy flows once, without banking credit for the time it was idle.
Within a flow, jobs go by actor priority, then arrival.  Priority does not
order jobs across flows: any tenant may send to any actor, so a cross-tenant
priority would let one tenant's backlog of a high-priority actor starve all
the others.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from queue import PriorityQueue

from dramatiq.worker import _WorkQueueItem

# What a flow that wakes up is placed ahead of the current virtual time, in jobs:
# enough to go before busy flows tied at it, never a burst.
WAKE_CREDIT_JOBS = 1.0
# Jobs started between two sweeps for flows with nothing to remember.
FORGET_EVERY = 1024


@dataclass
class _Flow:
    """One tenant's (or one other queue's) waiting jobs and its virtual time."""

    weight: float
    vtime: float = 0.0
    # (actor priority, arrival number, item): a heap, least first.
    waiting: list[tuple[int, int, _WorkQueueItem]] = field(default_factory=list)


class FairWorkQueue(PriorityQueue[_WorkQueueItem]):
    """A drop-in for Dramatiq's work queue that starts the least-served tenant's job first."""

    def __init__(
        self,
        *,
        tenant_of_queue: Callable[[str], int | None],
        weights: Mapping[int, float] | None = None,
    ) -> None:
        self.tenant_of_queue = tenant_of_queue
        self.weights = dict(weights or {})
        super().__init__()

    # `Queue` calls these four under its own lock; everything else (blocking, timeouts,
    # task_done, join) is the standard library's.
    def _init(self, maxsize: int) -> None:
        self.queue = []  # unused: kept for code that reads it on a PriorityQueue
        self._flows: dict[Hashable, _Flow] = {}
        # Flows with something waiting: (virtual time, activation number, flow key).
        self._ready: list[tuple[float, int, Hashable]] = []
        self._vtime = 0.0
        self._count = 0
        self._served = 0
        self._order = itertools.count()

    def _qsize(self) -> int:
        return self._count

    def _put(self, item: _WorkQueueItem) -> None:
        key = self._flow_key(item.message.queue_name)
        flow = self._flows.get(key)
        if flow is None:
            weight = self._weight(key)
            flow = self._flows[key] = _Flow(weight, self._vtime - WAKE_CREDIT_JOBS / weight)
        if not flow.waiting:
            flow.vtime = max(flow.vtime, self._vtime - WAKE_CREDIT_JOBS / flow.weight)
            heapq.heappush(self._ready, (flow.vtime, next(self._order), key))
        heapq.heappush(flow.waiting, (item.priority, next(self._order), item))
        self._count += 1

    def _get(self) -> _WorkQueueItem:
        vtime, _, key = heapq.heappop(self._ready)
        flow = self._flows[key]
        _, _, item = heapq.heappop(flow.waiting)
        self._count -= 1
        # The virtual time is the start tag of the job just started: it never goes back.
        self._vtime = max(self._vtime, vtime)
        flow.vtime = vtime + 1 / flow.weight
        if flow.waiting:
            heapq.heappush(self._ready, (flow.vtime, next(self._order), key))
        self._served += 1
        if self._served % FORGET_EVERY == 0:
            self._forget_idle()
        return item

    def _forget_idle(self) -> None:
        # A flow with nothing waiting whose virtual time fell behind the wake-up
        # placement would rejoin exactly as a new one: nothing to remember (tenants
        # come and go).  A busy tenant's flow, empty between two deliveries, is
        # ahead of it and stays, so it does not earn a wake-up credit per job.
        for key in [
            key
            for key, flow in self._flows.items()
            if not flow.waiting and flow.vtime <= self._vtime - WAKE_CREDIT_JOBS / flow.weight
        ]:
            del self._flows[key]

    def _flow_key(self, queue_name: str) -> Hashable:
        tenant_id = self.tenant_of_queue(queue_name)
        return ("queue", queue_name) if tenant_id is None else tenant_id

    def _weight(self, key: Hashable) -> float:
        return self.weights.get(key, 1.0) if isinstance(key, int) else 1.0

    def virtual_time(self, tenant_id: int) -> float | None:
        """A tenant's virtual time (None when it has none remembered); for tests and debugging."""
        with self.mutex:
            flow = self._flows.get(tenant_id)
            return None if flow is None else flow.vtime
