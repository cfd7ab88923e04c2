"""`transport.publisher.gather`: one future for a pass of declarations."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from services.errors import BrokerRefused
from transport.publisher import PublishFailed, gather


def futures(count: int) -> list[Future[None]]:
    return [Future() for _ in range(count)]


def test_it_resolves_once_every_future_has() -> None:
    parts = futures(3)
    combined = gather(parts)
    parts[2].set_result(None)
    parts[0].set_result(None)
    assert not combined.done()
    parts[1].set_result(None)
    assert combined.done() and combined.result() is None


def test_nothing_to_wait_for_is_done_at_once() -> None:
    assert gather([]).result(timeout=0) is None


def test_it_fails_with_the_first_failure_without_waiting_for_the_rest() -> None:
    parts = futures(3)
    combined = gather(parts)
    refused = BrokerRefused("tenant.2", 406, "PRECONDITION_FAILED", advice="delete it")
    parts[1].set_exception(refused)
    assert combined.exception() is refused
    # A later failure or success changes nothing
    parts[0].set_exception(PublishFailed("later"))
    parts[2].set_result(None)
    assert combined.exception() is refused


def test_a_part_cancelled_fails_it() -> None:
    parts = futures(2)
    combined = gather(parts)
    parts[0].cancel()
    with pytest.raises(PublishFailed, match="cancelled"):
        combined.result(timeout=0)


def test_cancelling_it_cancels_the_parts_still_pending() -> None:
    parts = futures(2)
    parts[0].set_result(None)
    combined = gather(parts)
    assert combined.cancel()
    assert parts[1].cancelled() and not parts[0].cancelled()
