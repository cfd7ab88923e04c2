"""A booted worker's objects are frozen out of the collector's full passes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from middleware.frozen_heap import FrozenHeap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_after_boot_what_the_process_holds_is_frozen_and_new_objects_are_not() -> None:
    # Given a process holding objects, none frozen
    held = [[n] for n in range(1_000)]
    assert gc.get_freeze_count() == 0

    # When the worker has booted
    broker = StubBroker()
    FrozenHeap().after_worker_boot(broker, Worker(broker, worker_threads=1))

    # Then they (and the rest of the heap) are frozen, and a full pass no longer sees them
    assert gc.get_freeze_count() >= len(held)
    assert not any(obj is held for obj in gc.get_objects())
    # And what is allocated afterwards is collected as before
    later: list[object] = []
    later.append(later)  # a cycle only the collector frees
    assert any(obj is later for obj in gc.get_objects())


def test_the_worker_middleware_freezes_last() -> None:
    import brokers

    # Its after_worker_boot runs after every other one: after-hooks run in reverse order,
    # and any middleware before it (Dramatiq's AgeLimit's place) has no boot hook of its own.
    stack = brokers.broker.middleware
    first = next(i for i, m in enumerate(stack) if isinstance(m, FrozenHeap))
    assert all(type(m).after_worker_boot is Middleware.after_worker_boot for m in stack[:first]), [
        type(m).__name__ for m in stack[:first]
    ]
