"""Throughput: N jobs queued before the worker starts; jobs per second until all are done.

The clock runs from the first job's start to the last job's end as the worker
itself saw them (bench.bodies).  Over the same window, the machine-wide CPU per
job: the worker processes', PostgreSQL's and RabbitMQ's (bench.machine_cpu).

What a worker still does after its first job starts (a process of its command
that is still importing, a prefetch that grows once its queue is found busy) is
in that window.  So each backlog is big enough for the steady rate to decide
the figure: the no-op job's backlog is ten times the DB-writing job's, whose
jobs each take several times longer.  The start itself is measured apart
(`startup`), with no backlog, so that its cost stays in the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import machine_cpu
from bench.env import BenchError, cpu_or_zero
from bench.report import Figure
from bench.systems import Procrastinate, System, Taskyard

SCENARIO = "1-2. Throughput (one worker process, 8 threads)"
START_SCENARIO = "1-2. Worker start, no backlog (one worker process, 8 threads)"
CPU_SCENARIO = (
    "1-2. Machine-wide CPU per job, over the throughput runs' drain windows "
    "(worker processes + PostgreSQL + RabbitMQ)"
)
CPU_UNIT = "CPU ms/job"


@dataclass(frozen=True)
class Drained:
    """One throughput run: its jobs/s and its machine-wide CPU per job, by part."""

    rate: float
    cpu_ms: dict[str, float]
    # Each job's start (time.time()), as the worker's bodies tallied them.
    starts: tuple[float, ...] = ()


def measure(system: System, kind: str, count: int, *, processes: int = 1, tag: str) -> Drained:
    """Jobs per second for `count` queued jobs of `kind`, and the CPU per job they took."""
    system.reset()
    system.send(kind, count)
    reader = machine_cpu.Reader(system.env.database)
    # Sampling from before the worker starts: its first job may start before "ready".
    sampler = machine_cpu.Sampler(reader)
    sampler.start()
    try:
        worker = system.launch(tag, processes=processes)
        reader.watch(worker.proc.pid)
        try:
            worker.wait_ready(system.ready)
            done = worker.wait_done(kind, count, timeout=30 + count / 20)
            sampler.close()
            if isinstance(system, Taskyard):
                _wait_recorded(system, count)
        finally:
            worker.stop()
    finally:
        sampler.close()
    elapsed = done["last_end"] - done["first_start"]
    try:
        samples = sampler.stop()
        cpu = machine_cpu.window_cpu(samples, done["first_start"], done["last_end"], reader.born)
    except (machine_cpu.SamplerError, ValueError) as exc:
        raise BenchError(f"{system.name} {kind}: {exc}") from exc
    return Drained(
        count / max(elapsed, 1e-6), machine_cpu.per_job_ms(cpu, count), tuple(done["starts"])
    )


def _wait_recorded(taskyard: Taskyard, count: int, timeout: float = 30.0) -> None:
    """Wait until every job record says succeeded (each commits just after its body)."""
    deadline = time.monotonic() + timeout
    while (done := taskyard.succeeded()) != count:
        if time.monotonic() > deadline:
            raise BenchError(f"taskyard recorded {done} of {count} jobs as succeeded")
        time.sleep(0.05)


@dataclass
class _Pair:
    """A system's jobs/s and CPU per job figures of one job and worker count."""

    rate: Figure
    cpu: Figure
    parts: dict[str, list[float]] = field(
        default_factory=lambda: {part: [] for part in machine_cpu.PARTS}
    )

    def add(self, drained: Drained) -> None:
        self.rate.values.append(drained.rate)
        self.cpu.values.append(sum(drained.cpu_ms.values()))
        for part, ms in drained.cpu_ms.items():
            self.parts[part].append(ms)
        self.cpu.note = machine_cpu.parts_note(self.parts)


def _pair(what: str, name: str, *, rate_target: float | None, cpu_target: float | None) -> _Pair:
    baseline = "dramatiq" if name != "dramatiq" else None
    return _Pair(
        Figure(SCENARIO, what, name, "jobs/s", baseline=baseline, ratio_at_least=rate_target),
        Figure(
            CPU_SCENARIO,
            what,
            name,
            CPU_UNIT,
            baseline=baseline,
            ratio_at_most=cpu_target,
            higher_is_better=False,
        ),
    )


def run(
    systems: Sequence[System], *, count: int, noop_count: int, runs: int, two_processes: bool
) -> list[Figure]:
    """Both job bodies on every system, `runs` times each, the systems back to back per run.

    `count` DB-writing jobs a run, `noop_count` no-op jobs; procrastinate, about
    a tenth as fast at no-op jobs as the others, drains `count` of each (its
    figure is a reference, with no target).
    """
    rates: list[Figure] = []
    cpus: list[Figure] = []
    # The engine issue's targets: jobs/s with one worker process, and two (None: reported,
    # no target); machine-wide CPU per job, one worker process.
    for kind, size, what, target, target_two, cpu_target in (
        ("write_row", count, "DB-writing job", 0.9, 1.0, None),
        ("noop", noop_count, "no-op job", 0.7, None, 2.0),
    ):
        one = {
            system.name: _pair(
                what,
                system.name,
                rate_target=target if isinstance(system, Taskyard) else None,
                cpu_target=cpu_target if isinstance(system, Taskyard) else None,
            )
            for system in systems
        }
        two = {
            name: _pair(
                f"{what}, 2 worker processes",
                name,
                rate_target=target_two if name == "taskyard" else None,
                cpu_target=None,
            )
            for name in ("taskyard", "dramatiq")
        }
        for run_no in range(runs):
            for system in systems:
                tag = f"{kind}-{run_no}"
                jobs = count if isinstance(system, Procrastinate) else size
                one[system.name].add(measure(system, kind, jobs, tag=tag))
                if two_processes and system.name in two and not isinstance(system, Procrastinate):
                    two[system.name].add(measure(system, kind, jobs, processes=2, tag=f"{tag}-p2"))
        shown = [*one.values(), *(two.values() if two_processes else [])]
        rates += [pair.rate for pair in shown]
        cpus += [pair.cpu for pair in shown]
    return rates + cpus


def startup(systems: Sequence[System], *, runs: int) -> list[Figure]:
    """Each system's worker started on empty queues: seconds to "ready", CPU until settled.

    The CPU is every process of the command (user + system, from /proc) from
    its launch until the processes together have been quiet for a moment
    (`Worker.wait_settled`): imports, connections, forks such as Taskyard's
    metrics server.  A worker started on a backlog does that work while its
    first jobs run.
    """
    ready: dict[str, Figure] = {}
    cpu: dict[str, Figure] = {}
    for system in systems:
        baseline = "dramatiq" if system.name != "dramatiq" else None
        ready[system.name] = Figure(
            START_SCENARIO,
            "launch → ready",
            system.name,
            "s",
            baseline=baseline,
            higher_is_better=False,
        )
        cpu[system.name] = Figure(
            START_SCENARIO,
            "CPU of the command's processes, launch → settled",
            system.name,
            "CPU s",
            baseline=baseline,
            higher_is_better=False,
        )
    for run_no in range(runs):
        for system in systems:
            system.reset()
            started = time.monotonic()
            worker = system.launch(f"start-{run_no}")
            try:
                worker.wait_ready(system.ready)
                ready[system.name].values.append(time.monotonic() - started)
                if not worker.wait_settled(timeout=30.0):
                    raise BenchError(f"{system.name}'s worker was still busy 30 s after ready")
                cpu[system.name].values.append(sum(cpu_or_zero(pid) for pid in worker.pids()))
            finally:
                worker.stop()
    return [*ready.values(), *cpu.values()]
