"""The console's bulk requeues run on a thread of their own and report how far they got."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import wait_for
from web.batches import MAX_KEPT, Batches


def test_a_batch_counts_its_progress_and_keeps_its_error() -> None:
    def work(advance: Callable[[int], None]) -> None:
        advance(1000)
        advance(500)
        raise ConnectionError("broker gone")

    batches = Batches()
    batch = batches.start(7, 2000, work, lambda exc: f"cannot reach the broker ({exc})")
    wait_for(lambda: batch.finished, timeout=5, what="the batch to end")
    assert (batch.done, batch.total) == (1500, 2000)
    assert batch.error == "cannot reach the broker (broker gone)"
    assert batches.get(batch.id) is batch and batches.get("nope") is None


def test_only_the_latest_batches_are_remembered() -> None:
    batches = Batches()
    started = [batches.start(1, 0, lambda advance: None, str) for _ in range(MAX_KEPT + 1)]
    assert batches.get(started[0].id) is None
    assert batches.get(started[-1].id) is started[-1]
