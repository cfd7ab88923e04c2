"""What the engine checks before a job's body, kept in the process and refreshed every second.

A job no longer reads its record before it runs: whether its tenant is
disabled or being deleted, and whether cancelling it was asked for, come from
here, refreshed by one poll per process (the tenant refresh's, every
`tenant_refresh_seconds`).  The job's final statement checks again, against
the database itself: this state only spares a job the run of a body whose
result would be thrown away.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from services.tenants import is_served

# Cancel requests older than this are forgotten (their jobs' records say cancelled anyway).
CANCEL_MEMORY = dt.timedelta(hours=1)
# A request committed late carries an earlier time than one already read: read back this far.
CANCEL_OVERLAP = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class StateSnapshot:
    """One poll: every tenant's status, and the cancel requests since the last poll."""

    tenant_statuses: dict[int, str]
    # (message id, requested at): the database's clock.
    cancelled: list[tuple[str, dt.datetime]] = field(default_factory=list)


class WorkerState:
    """Tenant statuses and recent cancel requests, as of the last poll."""

    def __init__(self, read: Callable[[dt.datetime | None], StateSnapshot]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._statuses: dict[int, str] = {}
        self._cancelled: dict[str, dt.datetime] = {}
        self._newest: dt.datetime | None = None
        self.polled = False

    def refresh(self) -> None:
        """Poll the database once (raises what the read raises; the caller logs it)."""
        since = self._newest - CANCEL_OVERLAP if self._newest is not None else None
        snapshot = self._read(since)
        with self._lock:
            self._statuses = dict(snapshot.tenant_statuses)
            for message_id, at in snapshot.cancelled:
                self._cancelled[message_id] = at
                if self._newest is None or at > self._newest:
                    self._newest = at
            if self._newest is not None:
                horizon = self._newest - CANCEL_MEMORY
                self._cancelled = {m: at for m, at in self._cancelled.items() if at >= horizon}
            self.polled = True

    def served(self) -> list[int]:
        """The tenants whose queues an unpinned worker serves, as of the last poll."""
        with self._lock:
            return sorted(t for t, status in self._statuses.items() if is_served(status))

    def tenant_status(self, tenant_id: int) -> str | None:
        """The tenant's status at the last poll; None when the poll did not know it (yet)."""
        return self._statuses.get(tenant_id)

    def cancel_requested(self, message_id: str) -> bool:
        """Whether cancelling this job was asked for, as of the last poll."""
        return message_id in self._cancelled
