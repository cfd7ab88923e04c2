"""The tenants' queues as the console shows them: read from RabbitMQ at most every few seconds.

The overview lists every tenant's queue that holds messages, and the tenants page
each of its tenants' queues: each read is a passive declare per queue (or the
management API's list), so with many tenants a reading costs RabbitMQ and the
console's process real work.  Every page and operator of one console process
shares one `QueueReadings`: a tenant's queue read less than MAX_AGE_SECONDS ago
is shown as read then, and only the others are read again.  One reading runs at
a time; a request that arrives meanwhile waits for it and uses what it read, so
ten operators with the overview open cost RabbitMQ what one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from cli.summary import QueueInfo, read_queues
from settings import Settings

# How long a queue's reading is shown before it is read again (under the overview's
# refresh period: each of its refreshes shows a reading this fresh at least).
MAX_AGE_SECONDS = 5.0
# Readings of tenants nobody asked for in this long are forgotten (deleted tenants).
FORGET_AFTER_SECONDS = 300.0

Reading = tuple[list[QueueInfo] | None, str | None, str | None]


class QueueReadings:
    """The last reading of each tenant's queue in this process, and when it was made."""

    def __init__(
        self,
        settings: Settings,
        *,
        read: Callable[[Settings, list[int]], Reading] = read_queues,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._readings: dict[int, tuple[float, QueueInfo]] = {}
        self._warning: str | None = None

    def read(self, tenant_ids: Sequence[int]) -> Reading:
        """The tenants' queues (in `tenant_ids`' order), the reason they could not be read,
        and the management API's warning: as `cli.summary.read_queues` answers."""
        with self._lock:
            now = self._clock()
            stale = [
                tenant_id
                for tenant_id in dict.fromkeys(tenant_ids)
                if (kept := self._readings.get(tenant_id)) is None
                or now - kept[0] >= MAX_AGE_SECONDS
            ]
            if stale:
                found, error, warning = self._read(self.settings, stale)
                if found is None:
                    return None, error, None  # (a failure is not kept: the next asks again)
                read_at = self._clock()
                for info in found:
                    self._readings[info["tenant_id"]] = (read_at, info)
                self._warning = warning
                self._forget(read_at)
            return [self._readings[t][1] for t in tenant_ids], None, self._warning

    def _forget(self, now: float) -> None:
        old = [t for t, (at, _) in self._readings.items() if now - at >= FORGET_AFTER_SECONDS]
        for tenant_id in old:
            del self._readings[tenant_id]
