"""Soak: DB-writing jobs at a steady rate for minutes, with the records' retention in minutes.

`jobs` is partitioned by periods of `period` seconds instead of days for the
run: the harness plays the daily retention job once a period, with its own
steps (`services.partitions.attach_range` makes the next periods' partitions
ahead, `drop_partition` detaches and drops each one older than the retention),
while one worker runs the jobs the harness sends every second.  Sampled every
`sample` seconds: the `jobs` table's bytes (every partition's heap, TOAST and
indexes), the jobs the worker finished, and its worker process's RSS.  Reported:
each one's slope (least squares) over the samples after the first retention
cycle, when the table has reached the size the retention keeps it at.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from bench.env import BenchError
from bench.procstat import rss_mb
from bench.report import Figure
from bench.store import tally_ends
from bench.systems import Taskyard, engine_of
from services import partitions
from services.message_ids import id_floor

SCENARIO = "11. Soak (steady rate, retention in minutes)"
# The soak's partitions: not `jobs_pYYYYMMDD`, so the daily job's code leaves them alone.
PREFIX = "jobs_s"
# Periods of partitions kept ready ahead of now.
AHEAD = 2

_BYTES = text(
    "SELECT COALESCE(sum(pg_total_relation_size(relid)), 0) "
    "FROM pg_partition_tree('jobs') WHERE isleaf"
)


def _say(line: str) -> None:
    print(f"    soak: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    """One reading: seconds since the start, the table's bytes, jobs done, worker RSS."""

    at: float
    table_bytes: int
    done: int
    rss_mib: float


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


class Retention:
    """The retention job, per `period` seconds: partitions made ahead, the expired dropped."""

    def __init__(self, engine: Engine, period: float, keep: int) -> None:
        self.engine = engine
        self.period = dt.timedelta(seconds=period)
        self.keep = keep
        self.made: dict[dt.datetime, str] = {}
        self.dropped = 0
        self.left = 0

    def _start(self, moment: dt.datetime) -> dt.datetime:
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return epoch + (moment - epoch) // self.period * self.period

    def clear_days(self, today: dt.date) -> None:
        """Drop the daily partitions from today on: the soak's periods take their ids."""
        with self.engine.connect() as conn:
            days = partitions.partitions(conn)
            conn.commit()
            for day, name in sorted(days.items()):
                if day >= today and not partitions.drop_partition(conn, name):
                    raise BenchError(f"could not drop {name} before the soak")

    def tick(self, now: dt.datetime) -> None:
        """Make the partitions up to AHEAD periods ahead; drop those past the retention."""
        first = self._start(now)
        with self.engine.connect() as conn:
            for n in range(AHEAD + 1):
                start = first + n * self.period
                if start not in self.made:
                    name = f"{PREFIX}{start:%Y%m%d%H%M%S}"
                    partitions.attach_range(
                        conn, name, id_floor(start), id_floor(start + self.period)
                    )
                    conn.commit()
                    self.made[start] = name
            cutoff = now - self.keep * self.period
            for start in sorted(self.made):
                if start + self.period <= cutoff:
                    if partitions.drop_partition(conn, self.made[start]):
                        del self.made[start]
                        self.dropped += 1
                    else:
                        self.left += 1


def _send_steadily(taskyard: Taskyard, rate: int, until: float, stop: threading.Event) -> None:
    """`rate` DB-writing jobs at the start of every second until `until` (monotonic)."""
    tick = time.monotonic()
    while tick < until and not stop.is_set():
        taskyard.send("write_row", rate)
        tick += 1.0
        stop.wait(max(0.0, tick - time.monotonic()))


def soak(
    taskyard: Taskyard, *, seconds: float, rate: int, period: float, keep: int, sample: float
) -> tuple[list[Sample], str]:
    """Run the soak; the samples, and what the retention did."""
    engine = engine_of(taskyard.env)
    retention = Retention(engine, period, keep)
    retention.clear_days(dt.datetime.now(dt.UTC).date())
    worker = taskyard.start("soak", settle=True)
    retention.tick(dt.datetime.now(dt.UTC))
    path = Path(f"{worker.done_base}.write_row")
    samples: list[Sample] = []
    stop = threading.Event()
    started = time.monotonic()
    sender = threading.Thread(
        target=_send_steadily, args=(taskyard, rate, started + seconds, stop), daemon=True
    )
    sender.start()
    try:
        pid = worker.worker_pid()
        next_tick = started + period
        next_sample = started
        while time.monotonic() < started + seconds:
            now = time.monotonic()
            if now >= next_tick:
                retention.tick(dt.datetime.now(dt.UTC))
                next_tick += period
            if now >= next_sample:
                with engine.connect() as conn:
                    size = int(conn.execute(_BYTES).scalar_one())
                samples.append(Sample(now - started, size, len(tally_ends(path)), rss_mb(pid)))
                next_sample += sample
            time.sleep(max(0.0, min(next_tick, next_sample) - time.monotonic()))
    finally:
        stop.set()
        sender.join(30)
        worker.stop()
    with engine.connect() as conn:
        stray = int(
            conn.execute(text(f"SELECT count(*) FROM {partitions.DEFAULT_PARTITION}")).scalar_one()
        )
    _say(
        f"{len(samples)} samples, {retention.dropped} partitions dropped, {retention.left} "
        f"drops left for a later period, {stray:,} records in the default partition"
    )
    if retention.dropped == 0:
        raise BenchError("the soak dropped no partition: run it longer than its retention")
    did = (
        f"{retention.dropped} partitions dropped, {retention.left} drops deferred, "
        f"{stray:,} records in the default partition at the end"
    )
    return samples, did


def run(
    taskyard: Taskyard,
    *,
    seconds: float,
    rate: int,
    period: float,
    keep: int,
    sample: float,
) -> list[Figure]:
    """The slopes of the table's size, the throughput and the worker's RSS in a soak."""
    samples, did = soak(
        taskyard, seconds=seconds, rate=rate, period=period, keep=keep, sample=sample
    )
    # From the end of the first retention cycle: the table has reached its steady size.
    steady = [s for s in samples if s.at >= (keep + 1) * period]
    if len(steady) < 3:
        raise BenchError(f"only {len(steady)} samples after the first retention cycle")
    minutes = [s.at / 60 for s in steady]
    size = [s.table_bytes / 2**20 for s in steady]
    rss = [s.rss_mib for s in steady]
    # Jobs/s between consecutive samples, placed at the end of each interval.
    rates = [(b.done - a.done) / (b.at - a.at) for a, b in itertools.pairwise(steady)]
    span = minutes[-1] - minutes[0]
    note = (
        f"{rate} DB-writing jobs/s sent for {seconds:g} s, one worker process of "
        f"8 threads; partitions of {period:g} s, kept {keep} periods; slope over the "
        f"{span * 60:.0f} s after the first retention cycle; {did}"
    )

    def figure(what: str, unit: str, values: list[float], xs: list[float]) -> Figure:
        mean = statistics.fmean(values)
        per_minute = slope(xs, values)
        return Figure(
            SCENARIO,
            f"{what}: slope (mean {mean:,.1f} {unit}, "
            f"{per_minute * span / mean * 100 if mean else 0:+.1f} % over the window)",
            "taskyard",
            f"{unit}/min",
            [per_minute],
            higher_is_better=False,
            note=note,
        )

    return [
        figure("jobs table size", "MiB", size, minutes),
        figure("throughput", "jobs/s", rates, minutes[1:]),
        figure("worker RSS", "MiB", rss, minutes),
    ]
