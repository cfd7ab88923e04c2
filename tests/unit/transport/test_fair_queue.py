"""The fair work queue: least-served tenant first, weights, wake-up credit, priority, join."""

from __future__ import annotations

import threading
from collections import Counter
from queue import Empty
from types import SimpleNamespace
from typing import Any

import pytest
from dramatiq.common import iter_queue
from dramatiq.worker import _WorkQueueItem

from transport.fair_queue import FairWorkQueue

PREFIX = "t1."


def tenant_of_queue(queue_name: str) -> int | None:
    head = f"{PREFIX}tenant."
    return int(queue_name[len(head) :]) if queue_name.startswith(head) else None


def item(queue: str, name: str = "", priority: int = 0) -> _WorkQueueItem:
    message: Any = SimpleNamespace(queue_name=queue, name=name)
    return _WorkQueueItem(priority, message)


def tenant(tenant_id: int) -> str:
    return f"{PREFIX}tenant.{tenant_id}"


def drain(queue: FairWorkQueue) -> list[str]:
    return [each.message.name for each in iter_queue(queue)]


def fair_queue(weights: dict[int, float] | None = None) -> FairWorkQueue:
    return FairWorkQueue(tenant_of_queue=tenant_of_queue, weights=weights)


def test_a_quiet_tenants_job_starts_before_the_busy_tenants_next_ones() -> None:
    # Given tenant 1's backlog already in hand, and some of it started
    queue = fair_queue()
    for n in range(50):
        queue.put(item(tenant(1), f"a{n}"))
    assert [queue.get_nowait().message.name for _ in range(10)] == [f"a{n}" for n in range(10)]

    # When tenant 2 sends one job
    queue.put(item(tenant(2), "b"))

    # Then it is the next to start
    assert queue.get_nowait().message.name == "b"


def test_busy_tenants_take_turns() -> None:
    queue = fair_queue()
    for n in range(3):
        for tenant_id in (1, 2, 3):
            queue.put(item(tenant(tenant_id), f"{tenant_id}-{n}"))
    assert drain(queue) == [f"{t}-{n}" for n in range(3) for t in (1, 2, 3)]


def test_a_quiet_tenant_goes_ahead_of_a_thousand_busy_ones() -> None:
    # Given 1,000 tenants, each with one job in hand (prefetch 1), taking turns
    queue = fair_queue()
    for tenant_id in range(1, 1001):
        queue.put(item(tenant(tenant_id), "busy"))
    for _ in range(1500):
        served = queue.get_nowait()
        queue.put(served)  # its tenant's next delivery

    # When a tenant that was never served sends one job, it is next
    queue.put(item(tenant(5000), "quiet"))
    assert queue.get_nowait().message.name == "quiet"


def test_a_busy_tenant_refilled_one_at_a_time_earns_no_wake_up_credit() -> None:
    # Given three tenants each holding one job at a time (a prefetch of one each)
    queue = fair_queue()
    for tenant_id in (1, 2, 3):
        queue.put(item(tenant(tenant_id), str(tenant_id)))
    order = []
    for _ in range(3000):
        served = queue.get_nowait()
        order.append(served.message.name)
        # Its next delivery comes after its queue emptied
        queue.put(served)

    # Then they still take turns (also across the sweeps for idle tenants): an empty
    # moment is not a wake-up
    assert Counter(order) == {"1": 1000, "2": 1000, "3": 1000}
    assert order[:6] == ["1", "2", "3", "1", "2", "3"]


def test_a_tenant_idle_for_long_gets_one_jobs_credit_not_a_burst() -> None:
    # Given tenant 1 busy for a long time while tenant 2 was idle
    queue = fair_queue()
    queue.put(item(tenant(2), "b-old"))
    assert queue.get_nowait().message.name == "b-old"
    for n in range(200):
        queue.put(item(tenant(1), f"a{n}"))
    for _ in range(100):
        queue.get_nowait()

    # When tenant 2 wakes up with a burst of 10 jobs
    for n in range(10):
        queue.put(item(tenant(2), f"b{n}"))

    # Then it gets its first job at once and then only its share: it alternates with tenant 1
    names = [queue.get_nowait().message.name for _ in range(8)]
    assert names[:2] == ["b0", "b1"]
    assert [name[0] for name in names[2:]] == ["a", "b", "a", "b", "a", "b"]


@pytest.mark.parametrize(("weight", "share"), [(2.0, 2), (3.0, 3), (0.5, 0.5)])
def test_a_weighted_tenant_starts_its_weights_share(weight: float, share: float) -> None:
    queue = fair_queue({1: weight})
    for _ in range(300):
        queue.put(item(tenant(1), "heavy"))
        queue.put(item(tenant(2), "plain"))
    started = Counter(queue.get_nowait().message.name for _ in range(120))
    assert started["heavy"] / started["plain"] == pytest.approx(share, rel=0.05)


def test_other_queues_are_a_flow_of_their_own_and_stay_served() -> None:
    # Given a tenant's backlog being served
    queue = fair_queue()
    for _ in range(100):
        queue.put(item(tenant(1), "tenant"))
    queue.get_nowait()

    # When the system queue has jobs, it goes next, then takes turns with the tenant
    for _ in range(3):
        queue.put(item(f"{PREFIX}taskyard.system", "system"))
    assert [queue.get_nowait().message.name for _ in range(5)] == [
        "system",
        "tenant",
        "system",
        "tenant",
        "system",
    ]


def test_within_a_tenant_priority_then_arrival() -> None:
    queue = fair_queue()
    queue.put(item(tenant(1), "late-low", priority=10))
    queue.put(item(tenant(1), "first", priority=0))
    queue.put(item(tenant(1), "second", priority=0))
    assert drain(queue) == ["first", "second", "late-low"]


def test_priority_does_not_order_tenants() -> None:
    # A high-priority backlog of tenant 1 does not hold back tenant 2's low-priority job
    queue = fair_queue()
    for _ in range(5):
        queue.put(item(tenant(1), "urgent", priority=0))
    queue.put(item(tenant(2), "low", priority=100))
    assert drain(queue)[:2] == ["urgent", "low"]


def test_queue_interface_blocks_times_out_counts_and_joins() -> None:
    queue = fair_queue()
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(Empty):
        queue.get(timeout=0.01)
    queue.put(item(tenant(1), "x"))
    queue.put(item(tenant(2), "y"))
    assert queue.qsize() == 2 and queue.unfinished_tasks == 2

    joined = threading.Event()
    threading.Thread(target=lambda: (queue.join(), joined.set()), daemon=True).start()
    queue.get_nowait()
    queue.task_done()
    assert not joined.wait(0.05)
    queue.get(timeout=1)
    queue.task_done()
    assert joined.wait(1)
    with pytest.raises(ValueError, match="task_done"):
        queue.task_done()


def test_a_get_waiting_on_an_empty_queue_wakes_on_put() -> None:
    queue = fair_queue()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get(timeout=2).message.name))
    waiter.start()
    queue.put(item(tenant(3), "z"))
    waiter.join(2)
    assert got == ["z"]


def test_idle_tenants_are_forgotten() -> None:
    # Many tenants served once each, then one busy tenant: the idle ones leave no state
    queue = fair_queue()
    for tenant_id in range(1, 2001):
        queue.put(item(tenant(tenant_id), "once"))
    drain(queue)
    for _ in range(3000):
        queue.put(item(tenant(1), "busy"))
        queue.get_nowait()
    assert queue.virtual_time(2) is None
    assert queue.virtual_time(1) is not None
