"""How a worker process shares its bounded prefetch among the queues that are busy.

Every queue is consumed with a prefetch of one message, so an idle or quiet
queue holds at most one unacknowledged message.  One message in hand is too
few for a queue that is busy alone: its acks wait for the group commit of job
records, and the threads would wait for deliveries meanwhile.  So the queues
found busy share the process's bound: each gets a prefetch of up to bound ÷
(busy queues), and gives it back when more queues get busy or its backlog is
gone.  When more queues are busy than the bound, each keeps its prefetch of
one: a process then holds one message per busy queue, and no queue ever waits
for another's backlog to get a message in.

A queue is busy when, at two observations in a row, it held all its prefetch
allows (its jobs are slow) or had `BUSY_DELIVERIES` delivered since the last
one (its jobs are quick: a busy queue's acks go out in group-commit batches,
so it is rarely seen full); a queue whose jobs come one at a time is rarely
seen either way.  It stays busy until it has not been seen so for `HOLD_TICKS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Observations in a row that find a queue full or delivering before it is busy.
ENTER_TICKS = 2
# Deliveries between two observations that show a queue has a backlog.
BUSY_DELIVERIES = 2
# Observations without it before a busy queue's share is taken back: a busy queue holds
# less than its prefetch for a moment whenever a group commit's acks go out.
HOLD_TICKS = 10


@dataclass(frozen=True)
class QueueLoad:
    """A queue's prefetch, the deliveries it holds unsettled, and those since the last look."""

    prefetch: int
    in_hand: int
    delivered: int = 0


class PrefetchShares:
    """Decides the prefetch each queue should have."""

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("the prefetch bound is at least 1")
        self.bound = bound
        self._tick = 0
        self._streak: dict[str, int] = {}
        self._busy_until: dict[str, int] = {}
        # Queues found busy at least once (a drained one gives its share back at once).
        self._was_busy: set[str] = set()

    def busy(self) -> list[str]:
        """The queues counted as busy at the last observation."""
        return sorted(name for name, until in self._busy_until.items() if until >= self._tick)

    def plan(self, loads: Mapping[str, QueueLoad]) -> dict[str, int]:
        """Observe the queues that hold deliveries or a larger prefetch; their prefetch now.

        `loads` needs only the queues holding a delivery or a prefetch above
        one: any other queue is idle and keeps a prefetch of one.  Returns the
        prefetch each queue of `loads` (and each queue still counted busy)
        should have now.  A queue gives back its share at once; it grows only
        while the deliveries held (or allowed) by the busy queues, and those
        held elsewhere, stay within the bound.
        """
        self._tick += 1
        for name, load in loads.items():
            if load.in_hand >= load.prefetch or load.delivered >= BUSY_DELIVERIES:
                self._streak[name] = self._streak.get(name, 0) + 1
                if self._streak[name] >= ENTER_TICKS:
                    self._busy_until[name] = self._tick + HOLD_TICKS
            else:
                self._streak.pop(name, None)
        for name in [n for n in self._streak if n not in loads]:
            del self._streak[name]
        for name in [n for n, until in self._busy_until.items() if until < self._tick]:
            del self._busy_until[name]
        busy = sorted(self._busy_until)
        # A queue seen full or delivering, not busy yet, keeps what it has until the next
        # look: a queue first consumed at its share of the bound (`MultiplexingConsumer`)
        # is not cut to one message on its way to being found busy.
        # One never found busy keeps its first prefetch while it holds deliveries: a consumer
        # replaced meanwhile would send back what pika received and had not handed over yet.
        shares = {
            name: load.prefetch
            if name in self._streak or (load.in_hand and name not in self._was_busy)
            else 1
            for name, load in loads.items()
        }
        self._was_busy.update(busy)
        if busy:
            share, spare = divmod(self.bound, len(busy))
            for index, name in enumerate(busy):
                shares[name] = max(1, share + (1 if index < spare else 0))
        return self._within_bound(shares, loads, set(busy))

    def _within_bound(
        self, shares: dict[str, int], loads: Mapping[str, QueueLoad], busy: set[str]
    ) -> dict[str, int]:
        """Shrink at once; grow only as far as the deliveries already held leave room."""
        idle = QueueLoad(prefetch=1, in_hand=0)
        planned = {name: min(n, loads.get(name, idle).prefetch) for name, n in shares.items()}
        held = sum(
            max(planned[name], load.in_hand) if name in busy else load.in_hand
            for name, load in ((name, loads.get(name, idle)) for name in planned)
        )
        growing = [name for name, share in shares.items() if planned[name] < share]
        # Smallest first, so that a queue newly busy gets its share before others grow.
        growing.sort(key=lambda name: (planned[name], name))
        room = max(self.bound, len(busy)) - held
        while growing and room > 0:
            for name in list(growing):
                load = loads.get(name, idle)
                if planned[name] >= shares[name]:
                    growing.remove(name)
                    continue
                planned[name] += 1
                # Room already taken by the queue's deliveries in hand costs nothing more.
                if planned[name] > load.in_hand:
                    room -= 1
                if room <= 0:
                    break
        return planned
