"""The console's queue readings: each tenant's queue read at most every few seconds, one
reading at a time, shared by every request of the process."""

from __future__ import annotations

import threading
import time
from typing import Any

from cli.summary import QueueInfo
from settings import Settings
from web.queue_readings import FORGET_AFTER_SECONDS, MAX_AGE_SECONDS, QueueReadings


def _info(tenant_id: int, ready: int) -> QueueInfo:
    return {
        "tenant_id": tenant_id,
        "queue": f"tenant.{tenant_id}",
        "exists": True,
        "ready": ready,
        "unacked": None,
        "consumers": 0,
    }


class FakeRabbit:
    """Answers each reading with the tenants' depths now, and remembers what it was asked."""

    def __init__(self) -> None:
        self.depth: dict[int, int] = {}
        self.asked: list[list[int]] = []
        self.down = False
        self.pause: threading.Event | None = None

    def read(self, settings: Settings, tenant_ids: list[int]) -> Any:
        self.asked.append(list(tenant_ids))
        if self.pause is not None:
            self.pause.wait(5)
        if self.down:
            return None, "cannot reach the broker", None
        return [_info(t, self.depth.get(t, 0)) for t in tenant_ids], None, None


def test_a_reading_is_shown_for_a_few_seconds_then_read_again_only_where_stale() -> None:
    rabbit, now = FakeRabbit(), [100.0]
    readings = QueueReadings(Settings(), read=rabbit.read, clock=lambda: now[0])
    rabbit.depth = {1: 3, 2: 5}
    found, error, _ = readings.read([2, 1])
    assert error is None and [(q["tenant_id"], q["ready"]) for q in found or []] == [(2, 5), (1, 3)]
    # Within MAX_AGE_SECONDS: as read, RabbitMQ not asked; a new tenant alone is read.
    rabbit.depth = {1: 0, 2: 0, 3: 7}
    now[0] += MAX_AGE_SECONDS / 2
    found, _, _ = readings.read([1, 2, 3])
    assert [q["ready"] for q in found or []] == [3, 5, 7]
    assert rabbit.asked == [[2, 1], [3]]
    # Past it: read again (tenant 3, read later, is still fresh).
    now[0] += MAX_AGE_SECONDS / 2
    found, _, _ = readings.read([1, 2, 3])
    assert [q["ready"] for q in found or []] == [0, 0, 7]
    assert rabbit.asked[-1] == [1, 2]


def test_a_failed_reading_is_not_kept_and_old_tenants_are_forgotten() -> None:
    rabbit, now = FakeRabbit(), [0.0]
    readings = QueueReadings(Settings(), read=rabbit.read, clock=lambda: now[0])
    rabbit.down = True
    assert readings.read([1]) == (None, "cannot reach the broker", None)
    rabbit.down = False
    rabbit.depth = {1: 2}
    found, error, _ = readings.read([1])
    assert error is None and (found or [])[0]["ready"] == 2
    assert rabbit.asked == [[1], [1]]
    # A tenant nobody asks for any more (a deleted one) does not stay in memory.
    now[0] += FORGET_AFTER_SECONDS
    readings.read([9])
    assert set(readings._readings) == {9}


def test_requests_at_once_share_one_reading() -> None:
    rabbit = FakeRabbit()
    rabbit.pause = threading.Event()
    readings = QueueReadings(Settings(), read=rabbit.read)
    answers: list[Any] = []
    threads = [
        threading.Thread(target=lambda: answers.append(readings.read([1, 2]))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while not rabbit.asked and time.monotonic() < deadline:
        time.sleep(0.01)
    rabbit.pause.set()
    for thread in threads:
        thread.join(5)
    assert rabbit.asked == [[1, 2]]
    assert len(answers) == 4 and all(a[0] is not None and len(a[0]) == 2 for a in answers)
