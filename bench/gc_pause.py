"""`python -m bench.gc_pause`: how long a full garbage collection stops a worker process.

Imports what a worker process imports (Taskyard's actors and middleware, and
the bench's actors), then times `gc.collect()` (a full, generation-2 pass,
which holds the GIL: every job of the process waits) `--runs` times, before
and after `gc.freeze()`, which is what `middleware.frozen_heap.FrozenHeap` does
once a worker has booted.  Prints the heap's object count and the median pause
of each.  Needs no server: nothing connects.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

from bench.env import BenchEnv


def pause_ms(runs: int) -> float:
    """The median time of `runs` full collections, in ms."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print the full-collection pause of a worker's heap, as it is and frozen."""
    parser = argparse.ArgumentParser(prog="python -m bench.gc_pause", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-gc-"))).export()
    # The worker's heap at boot: imported only now, with the bench's settings exported.
    import actors  # noqa: F401
    import bench.taskyard_actors  # noqa: F401

    print(f"objects tracked: {len(gc.get_objects()):,}")
    print(f"full collection: {pause_ms(args.runs):.1f} ms (median of {args.runs})")
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        print(f"after gc.freeze(): {pause_ms(args.runs):.2f} ms ({frozen:,} objects frozen)")
    finally:
        gc.unfreeze()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
