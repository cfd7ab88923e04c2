"""Keeps the objects of a booted worker out of the garbage collector's full passes."""

from __future__ import annotations

import gc
import logging

from dramatiq import Worker
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware


class FrozenHeap(Middleware):
    """Freezes what the worker process holds once it has booted (`gc.freeze`).

    A worker process holds some 100,000 objects after boot (modules, SQLAlchemy's
    mappers and caches, pika, Prometheus).  Python's full (generation 2)
    collection walks them all, holding the GIL, so every job of the process
    stops while it runs; once they are frozen, it walks none of them
    (`python -m bench.gc_pause` times a pass before and after).  They live as
    long as the process, so the collector
    has nothing to find among them; what jobs allocate later is collected as
    before.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Collect the boot's garbage once, then freeze what is left."""
        gc.collect()
        gc.freeze()
        self.logger.debug("Froze %d objects", gc.get_freeze_count())
