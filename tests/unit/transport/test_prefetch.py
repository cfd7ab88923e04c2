"""How the prefetch bound is shared among busy queues (no server: the plan only)."""

from __future__ import annotations

import pytest

from transport.prefetch import BUSY_DELIVERIES, ENTER_TICKS, HOLD_TICKS, PrefetchShares, QueueLoad


def saturated(consumers: dict[str, int]) -> dict[str, QueueLoad]:
    """Every consumer of these queues holds a delivery (their backlogs wait behind)."""
    return {name: QueueLoad(n, n) for name, n in consumers.items()}


def settle(shares: PrefetchShares, queues: list[str], rounds: int = 20) -> dict[str, int]:
    """Apply the plan for a few observations of queues whose backlogs never end."""
    consumers = dict.fromkeys(queues, 1)
    for _ in range(rounds):
        consumers.update(shares.plan(saturated(consumers)))
    return consumers


def test_a_queue_busy_alone_gets_the_whole_bound() -> None:
    assert settle(PrefetchShares(64), ["a"]) == {"a": 64}


@pytest.mark.parametrize(("busy", "each"), [(2, 32), (10, 6), (64, 1), (1000, 1)])
def test_busy_queues_share_the_bound(busy: int, each: int) -> None:
    consumers = settle(PrefetchShares(64), [f"q{i}" for i in range(busy)])
    assert sum(consumers.values()) == max(64, busy)
    assert max(consumers.values()) - min(consumers.values()) <= 1
    assert min(consumers.values()) == each


def test_a_queue_whose_jobs_come_one_at_a_time_is_not_busy() -> None:
    # Seen holding its one delivery once, then not: never busy, never more consumers
    shares = PrefetchShares(64)
    assert shares.plan({"b": QueueLoad(1, 1)}) == {"b": 1}
    assert shares.plan({}) == {}
    assert shares.busy() == []


def test_a_queue_of_quick_jobs_is_busy_while_it_delivers_though_never_full() -> None:
    # Its acks go out in batches: it never holds its whole prefetch, yet delivers all along
    shares = PrefetchShares(8)
    plan = {}
    for _ in range(HOLD_TICKS * 3):
        plan = shares.plan({"a": QueueLoad(prefetch=8, in_hand=5, delivered=BUSY_DELIVERIES)})
    assert plan == {"a": 8}
    assert shares.busy() == ["a"]


def test_a_queue_is_busy_after_two_observations_saturated() -> None:
    shares = PrefetchShares(8)
    for _ in range(ENTER_TICKS - 1):
        assert shares.plan(saturated({"a": 1})) == {"a": 1}
    assert shares.plan(saturated({"a": 1})) == {"a": 8}


def test_a_drained_queue_gives_its_extra_consumers_back_after_the_hold() -> None:
    shares = PrefetchShares(8)
    consumers = settle(shares, ["a"])
    assert consumers == {"a": 8}
    # Its last jobs still held, but not by every consumer: the backlog is gone
    idle = {"a": QueueLoad(8, 3)}
    for _ in range(HOLD_TICKS):
        assert shares.plan(idle) == {"a": 8}
    assert shares.plan(idle) == {"a": 1}


def test_a_newly_busy_queue_grows_only_as_the_others_deliveries_are_settled() -> None:
    # Given queue a holding the whole bound
    shares = PrefetchShares(8)
    settle(shares, ["a"])

    # When queue b gets busy: a is cut to its half at once, b waits for a's deliveries
    shares.plan({"a": QueueLoad(8, 8), "b": QueueLoad(1, 1)})
    plan = shares.plan({"a": QueueLoad(8, 8), "b": QueueLoad(1, 1)})
    assert plan == {"a": 4, "b": 1}

    # Then b grows as a's cancelled consumers' deliveries are settled, never past the bound
    plan = shares.plan({"a": QueueLoad(4, 6), "b": QueueLoad(1, 1)})
    assert plan == {"a": 4, "b": 2}
    plan = shares.plan({"a": QueueLoad(4, 4), "b": QueueLoad(2, 2)})
    assert plan == {"a": 4, "b": 4}


def test_deliveries_held_by_other_queues_count_against_the_bound() -> None:
    # A quiet queue's one delivery in hand leaves one less for the busy queue's extras
    shares = PrefetchShares(8)
    shares.plan(saturated({"a": 1}))
    plan = shares.plan({"a": QueueLoad(1, 1), "quiet": QueueLoad(1, 1)})
    assert plan["a"] == 7
    assert plan["quiet"] == 1


def test_the_bound_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PrefetchShares(0)


def test_a_queue_seen_full_once_keeps_its_prefetch_until_it_is_found_busy() -> None:
    # A queue first consumed at its share of the bound (32) is not cut to one on the way
    shares = PrefetchShares(64)
    assert shares.plan({"a": QueueLoad(32, 32)}) == {"a": 32}
    assert shares.plan({"a": QueueLoad(32, 32)}) == {"a": 64}
    # One seen full once, then holding nothing, gives it back at once
    shares = PrefetchShares(64)
    shares.plan({"b": QueueLoad(32, 32)})
    assert shares.plan({"b": QueueLoad(32, 0)}) == {"b": 1}


def test_a_queue_never_busy_keeps_its_first_prefetch_while_it_holds_deliveries() -> None:
    # Replaced while holding some, its consumer would send back what pika had not handed over
    shares = PrefetchShares(64)
    shares.plan({"c": QueueLoad(32, 3, delivered=3)})
    assert shares.plan({"c": QueueLoad(32, 3)}) == {"c": 32}
    assert shares.plan({"c": QueueLoad(32, 0)}) == {"c": 1}
