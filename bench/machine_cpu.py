"""Machine-wide CPU per job: the system's worker processes, PostgreSQL and RabbitMQ, from /proc.

A `Sampler` reads, every `INTERVAL` seconds from before the worker starts until
its jobs are done, the CPU time (user + system) of every process of three parts:

- the worker processes: the worker's command and every process under it;
- PostgreSQL: the postmaster and its children (backends, walwriter,
  checkpointer, ...: every PostgreSQL process is one), except client backends
  of a database other than the run's (those serve someone else);
- RabbitMQ: the node (`beam.smp` with `rabbit` in its command line) and every
  process under it (`erl_child_setup`, `inet_gethost`, ...).

`window_cpu` then takes each process's CPU at the two ends of the drain window
(interpolated between the samples around them) and sums the differences per
part; nothing else on the machine is counted.  The children's CPU the kernel
adds to a parent when it reaps them (cutime, cstime) is not used: a process
that ends in the window keeps its last reading instead, and the postmaster's
would also count the backends of other clients that end.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import PROC, TICK, children, comm, descendants, pids, read_stat, title

WORKERS, POSTGRESQL, RABBITMQ = "worker processes", "PostgreSQL", "RabbitMQ"
PARTS = (WORKERS, POSTGRESQL, RABBITMQ)
# Seconds between two readings of /proc, and how often a reading also finds the processes
# anew (the walk of /proc costs more than a reading; BENCHMARKS.md's notes say what the
# readings cost the harness).
INTERVAL = 0.02
DISCOVER_EVERY = 5
# One process: its pid and its start time (a pid can be used again by a later process).
Key = tuple[int, int]
# A client backend's title: "postgres: [cluster: ]user database host(port) activity".
_CLIENT_HOST = re.compile(r"^(\[local\]|\S+\(\d+\))$")


def postmasters(proc: Path = PROC) -> list[int]:
    """PostgreSQL's postmasters: processes named postgres whose parent is not one."""
    found = []
    for pid in pids(proc):
        if comm(pid, proc) != "postgres":
            continue
        stat = read_stat(pid, proc)
        if stat is not None and comm(stat.ppid, proc) != "postgres":
            found.append(pid)
    return found


def rabbitmq_nodes(proc: Path = PROC) -> list[int]:
    """RabbitMQ's Erlang nodes: `beam.smp` processes with `rabbit` in their command line."""
    return [
        pid for pid in pids(proc) if comm(pid, proc) == "beam.smp" and "rabbit" in title(pid, proc)
    ]


def serves_other_database(process_title: str, database: str) -> bool:
    """Whether a PostgreSQL process's title is a client backend's of a database not `database`.

    Anything else (the auxiliary processes, a backend not yet titled) is counted.
    """
    if not process_title.startswith("postgres: "):
        return False
    words = process_title.removeprefix("postgres: ").split()
    if words and words[0].endswith(":"):  # the cluster's name, "15/main:"
        words = words[1:]
    if len(words) < 3 or not _CLIENT_HOST.match(words[2]):
        return False
    return words[1] != database


class Reader:
    """Reads the CPU seconds of every process of the three parts, at one moment.

    Which processes those are is found again (`discover`) by walking each
    part's tree from its roots; between two walks, only the stat of the
    processes found by the last one is read (about half the cost).
    """

    def __init__(self, database: str, proc: Path = PROC) -> None:
        self.database = database
        self.proc = proc
        self.roots: dict[str, list[int]] = {
            WORKERS: [],
            POSTGRESQL: postmasters(proc),
            RABBITMQ: rabbitmq_nodes(proc),
        }
        # When each process read so far started, on the clock of `time.time()`.
        self.born: dict[Key, float] = {}
        self._boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        # The processes of the last walk: part, and start time once read (a pid used
        # again by another process before the next walk is not that process).
        self._known: dict[int, tuple[str, int | None]] | None = None
        # Whether a PostgreSQL process serves another database, once its title says.
        self._other: dict[Key, bool] = {}
        # `watch` is called on the harness's thread while the sampler's thread reads.
        self._lock = threading.Lock()

    def watch(self, pid: int) -> None:
        """Count `pid` and the processes under it as the worker processes (from the next read)."""
        with self._lock:
            self.roots[WORKERS].append(pid)
            self._known = None

    def _walk(self) -> dict[int, tuple[str, int | None]]:
        known: dict[int, tuple[str, int | None]] = {}
        for part, roots in self.roots.items():
            for root in list(roots):
                # Every PostgreSQL process is a child of the postmaster: no deeper walk.
                below = children if part == POSTGRESQL else descendants
                for pid in [root, *below(root, self.proc)]:
                    known.setdefault(pid, (part, None))
        return known

    def read(self, discover: bool = True) -> dict[Key, tuple[str, float]]:
        """Every counted process's part and CPU seconds so far (`discover`: walk the trees)."""
        with self._lock:
            if discover or self._known is None:
                self._known = self._walk()
            known = self._known
        found: dict[Key, tuple[str, float]] = {}
        for pid, (part, started) in list(known.items()):
            stat = read_stat(pid, self.proc)
            if stat is None or started not in (None, stat.started):
                continue
            key = (pid, stat.started)
            known[pid] = (part, stat.started)
            if part == POSTGRESQL and pid not in self.roots[part] and self._serves_other(key):
                continue
            found[key] = (part, stat.cpu)
            if key not in self.born:
                self.born[key] = self._boot + stat.started / TICK
        return found

    def _serves_other(self, key: Key) -> bool:
        if key in self._other:
            return self._other[key]
        process_title = title(key[0], self.proc)
        other = serves_other_database(process_title, self.database)
        # A backend just forked still has the postmaster's title: asked again next time.
        if process_title.startswith("postgres: "):
            self._other[key] = other
        return other


class SamplerError(RuntimeError):
    """The sampler's thread failed: its samples stop there, and no window can be read from them."""


@dataclass(frozen=True)
class Sample:
    """One reading: when (`time.time()`, the clock of the job bodies' tally) and what."""

    at: float
    cpu: dict[Key, tuple[str, float]]


class Sampler:
    """Reads `reader` every `interval` seconds on a thread of its own, from `start` to `stop`.

    The first and last readings, and every `discover_every`-th, walk the trees.
    """

    def __init__(
        self, reader: Reader, interval: float = INTERVAL, discover_every: int = DISCOVER_EVERY
    ) -> None:
        self.reader = reader
        self.interval = interval
        self.discover_every = discover_every
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-cpu", daemon=True)

    def _sample(self, discover: bool) -> None:
        before = time.time()
        cpu = self.reader.read(discover)
        self.samples.append(Sample((before + time.time()) / 2, cpu))

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._sample(len(self.samples) % self.discover_every == 0)
        except Exception as exc:  # told by `stop`: the thread's own report would go unread
            self.error = exc

    def start(self) -> None:
        """Take the first sample now, the next ones on the thread."""
        self._sample(True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and take the last sample, once (a second call does nothing).

        Never raises (it is called on the way out of a failed run too): `stop` does.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._sample(True)
        except Exception as exc:
            self.error = self.error or exc

    def stop(self) -> list[Sample]:
        """`close`, then every sample; SamplerError if the thread failed."""
        self.close()
        if self.error is not None:
            raise SamplerError(f"reading /proc failed: {self.error!r}") from self.error
        return self.samples


def _at(times: Sequence[float], values: Sequence[float], moment: float) -> float:
    """The value at `moment`: 0 before the first point, linear between two, then the last."""
    if moment <= times[0]:
        return values[0] if moment == times[0] else 0.0
    for i in range(1, len(times)):
        if moment <= times[i]:
            share = (moment - times[i - 1]) / (times[i] - times[i - 1])
            return values[i - 1] + (values[i] - values[i - 1]) * share
    return values[-1]


def window_cpu(
    samples: Sequence[Sample], start: float, end: float, born: Mapping[Key, float] | None = None
) -> dict[str, float]:
    """CPU seconds per part from `start` to `end`, which the samples must span.

    A process first read after the first sample was born since: its CPU was 0
    when it started (`born`, on the samples' clock), or, not known, at the
    sample before. One no longer read has ended: its CPU stays at its last
    reading.
    """
    if not samples or not samples[0].at <= start <= end <= samples[-1].at:
        raise ValueError(f"the samples do not span the window {start:.3f}-{end:.3f}")
    parts = {part: 0.0 for part in PARTS}
    first: dict[Key, int] = {}
    for i, sample in enumerate(samples):
        for key in sample.cpu:
            first.setdefault(key, i)
    for key, i in first.items():
        times, values = [], []
        if i > 0:
            # Started between the last sample without it and this one, or before, if the
            # trees were not walked in between (then `born` says when).
            zero = born.get(key, samples[i - 1].at) if born else samples[i - 1].at
            times.append(min(max(zero, samples[0].at), samples[i].at - 1e-9))
            values.append(0.0)
        part, last = samples[i].cpu[key]
        for sample in samples[i:]:
            if key in sample.cpu:
                last = sample.cpu[key][1]
            times.append(sample.at)
            values.append(last)
        parts[part] += _at(times, values, end) - _at(times, values, start)
    return parts


def per_job_ms(cpu: Mapping[str, float], jobs: int) -> dict[str, float]:
    """CPU seconds per part over `jobs` jobs, as milliseconds per job."""
    if jobs <= 0:
        raise ValueError("no jobs to divide by")
    return {part: seconds * 1000 / jobs for part, seconds in cpu.items()}


def parts_note(parts: Mapping[str, Sequence[float]]) -> str:
    """The median of each part, in ms per job, for the figure's note."""
    shown = [f"{part} {statistics.median(v):.2f}" for part, v in parts.items() if v]
    return ", ".join(shown) + " ms: medians" if shown else ""
