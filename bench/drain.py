"""`python -m bench.drain`: how a worker's rate builds up over a backlog, by backlog size.

For each `--counts` size, queues that many jobs of `--kind`, starts Taskyard's
worker and bare Dramatiq's in turn (as the throughput scenario does:
`bench.throughput.measure`), and prints their jobs/s and machine-wide CPU per
job, with the jobs started in each `--bucket` of time from the first start.
A worker whose start-up spills into its first jobs shows slow first buckets,
and a rate that depends on the backlog's size.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.env import BenchEnv, positive
from bench.machine_cpu import WORKERS


def per_bucket(starts: Sequence[float], bucket: float) -> list[int]:
    """The jobs started in each `bucket` seconds from the first start, empty buckets too."""
    if bucket <= 0:
        raise ValueError("the bucket is a positive number of seconds")
    if not starts:
        return []
    first = min(starts)
    counts = [0] * (int((max(starts) - first) / bucket) + 1)
    for start in starts:
        counts[int((start - first) / bucket)] += 1
    return counts


def _counts(value: str) -> list[int]:
    return [positive(part) for part in value.split(",")]


def main(argv: list[str] | None = None) -> int:
    """Each size, `--runs` times, Taskyard then bare Dramatiq."""
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--kind", choices=["noop", "write_row"], default="noop")
    parser.add_argument("--counts", type=_counts, default=[2_000, 20_000])
    parser.add_argument("--runs", type=positive, default=2)
    parser.add_argument("--bucket", type=float, default=0.25, help="seconds (default 0.25)")
    args = parser.parse_args(argv)
    if args.bucket <= 0:
        parser.error("--bucket: a positive number of seconds")
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-drain-")))
    env.export()
    # Imported only now: Taskyard reads its settings when its broker is built.
    from bench.systems import BareDramatiq, Taskyard, all_queues, engine_of
    from bench.throughput import measure

    taskyard, dramatiq = Taskyard(env), BareDramatiq(env)
    try:
        taskyard.setup()
        for run in range(1, args.runs + 1):
            for count in args.counts:
                for system in (taskyard, dramatiq):
                    drained = measure(system, args.kind, count, tag=f"drain-{run}-{count}")
                    cpu = sum(drained.cpu_ms.values())
                    print(
                        f"run {run}, {count:,} {args.kind} jobs, {system.name}: "
                        f"{drained.rate:,.0f} jobs/s, {cpu:.3f} CPU ms/job "
                        f"(worker processes {drained.cpu_ms.get(WORKERS, 0):.3f}); "
                        f"started per {args.bucket:g} s: {per_bucket(drained.starts, args.bucket)}",
                        flush=True,
                    )
    finally:
        env.delete_queues(all_queues([taskyard, dramatiq]))
        engine_of(env).dispose()
        env.drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
