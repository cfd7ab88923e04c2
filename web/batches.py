"""Requeues of many dead letters, run beside the request, with progress a page can poll."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# Batches remembered at most (the oldest finished ones are forgotten first).
MAX_KEPT = 100


@dataclass
class Batch:
    """One bulk requeue: how far it got, and how it ended."""

    id: str
    operator_id: int
    total: int
    done: int = 0
    finished: bool = False
    # How it failed, in the command line's words (None: it did not).
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, count: int) -> None:
        """Count `count` more done."""
        with self.lock:
            self.done += count


class Batches:
    """The console process's bulk requeues, by id (one process: the console's threads)."""

    def __init__(self) -> None:
        self._batches: OrderedDict[str, Batch] = OrderedDict()
        self._lock = threading.Lock()

    def start(
        self,
        operator_id: int,
        total: int,
        work: Callable[[Callable[[int], None]], None],
        describe: Callable[[Exception], str],
    ) -> Batch:
        """Run `work(advance)` on a thread of its own; the batch it reports to."""
        batch = Batch(id=uuid.uuid4().hex, operator_id=operator_id, total=total)
        with self._lock:
            self._batches[batch.id] = batch
            while len(self._batches) > MAX_KEPT:
                self._batches.popitem(last=False)

        def run() -> None:
            try:
                work(batch.advance)
            except Exception as exc:  # the thread's outermost boundary: kept for the page
                batch.error = describe(exc)
            finally:
                batch.finished = True

        threading.Thread(target=run, name=f"requeue-{batch.id[:8]}", daemon=True).start()
        return batch

    def get(self, batch_id: str) -> Batch | None:
        """The batch with this id, if this process still remembers it."""
        with self._lock:
            return self._batches.get(batch_id)
