"""Bounded label values for Taskyard's metrics: queues, actors and a few top tenants."""

from __future__ import annotations

import re
import threading

# Every tenant not given a label of its own is counted under this one.
OTHER_TENANT = "other"
# Tenant queues (one per tenant) all share this queue label.
TENANT_QUEUE = "tenant"
# Messages naming an actor this worker does not know.
UNKNOWN_ACTOR = "unknown"


def queue_label(queue_name: str, prefix: str) -> str:
    """The queue label: `tenant` for any tenant queue, the unprefixed name otherwise."""
    name = queue_name.removesuffix(".DQ").removesuffix(".XQ")
    name = name.removeprefix(prefix)
    if re.fullmatch(r"tenant\.\d+", name):
        return TENANT_QUEUE
    return name


class TenantLabels:
    """Gives a label of its own to at most `2 * limit` tenants per process; the rest are `other`.

    The `limit` tenants with the most jobs since the process started are
    labelled; a tenant overtaking the smallest of them takes its place, but
    only until `2 * limit` tenants have ever been labelled, after which the
    set is frozen, so a counter's series never grow past `2 * limit + 1`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[int, int] = {}
        self._current: set[int] = set()
        self._ever: set[int] = set()
        self._lock = threading.Lock()

    def count(self, tenant_id: int | None) -> str:
        """Count one job of `tenant_id` and return its label (`other` without a tenant)."""
        if tenant_id is None or self.limit <= 0:
            return OTHER_TENANT
        with self._lock:
            seen = self._counts.get(tenant_id, 0) + 1
            self._counts[tenant_id] = seen
            if tenant_id in self._current:
                return str(tenant_id)
            if len(self._current) < self.limit and len(self._ever) < 2 * self.limit:
                self._admit(tenant_id)
                return str(tenant_id)
            if len(self._ever) >= 2 * self.limit or not self._current:
                return OTHER_TENANT
            smallest = min(self._current, key=lambda t: self._counts[t])
            if seen > self._counts[smallest]:
                self._current.discard(smallest)
                self._admit(tenant_id)
                return str(tenant_id)
            return OTHER_TENANT

    def _admit(self, tenant_id: int) -> None:
        self._current.add(tenant_id)
        self._ever.add(tenant_id)

    def labelled(self) -> frozenset[int]:
        """Every tenant that has been given a label of its own."""
        with self._lock:
            return frozenset(self._ever)
