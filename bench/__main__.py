"""`python -m bench`: measure Taskyard beside bare Dramatiq, Celery and procrastinate.

`--smoke` runs every scenario once at tiny sizes (the test suite does this so the
harness never rots); without it, the sizes below, three runs each, and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import machine_cpu
from bench.env import REPO, BenchEnv, BenchError, machine, unreachable
from bench.procstat import TICK
from bench.report import Figure, render, write


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    runs: int
    throughput: int
    send: int
    latency: int
    fairness_backlog: int
    fairness_probes: int
    # Fairness at scale: the noisy tenant counts, their backlog in all, B's probes (1/s).
    scale_tenants: tuple[int, ...]
    scale_backlog: int
    scale_probes: int
    tenants: int
    idle_seconds: float
    # Seconds a fresh worker gets to declare and subscribe to every queue before measuring.
    settle: float
    schedules: int
    due: int
    memory_small: int
    memory_large: int


# The scenarios in the order they run (`--only` takes these names).
SCENARIOS = (
    "throughput",
    "send",
    "latency",
    "fairness",
    "fairness-scale",
    "scheduler",
    "tenant-scale",
    "memory",
)
# Where the time goes and what stands in the way of each target: written by hand
# from profiles, appended to the generated report.
ANALYSIS = Path(__file__).with_name("ANALYSIS.md")

# The sizes where they fit in about 15 minutes on 2 shared cores; the
# smaller ones are named in BENCHMARKS.md's notes.
FULL = Sizes(
    runs=3,
    throughput=2_000,
    send=500,
    latency=400,
    fairness_backlog=10_000,
    fairness_probes=50,
    scale_tenants=(1, 10, 100, 1_000),
    scale_backlog=30_000,
    scale_probes=20,
    tenants=1_000,
    idle_seconds=20,
    settle=5,
    schedules=100_000,
    due=10_000,
    memory_small=10_000,
    memory_large=100_000,
)
SMOKE = Sizes(
    runs=1,
    throughput=40,
    send=20,
    latency=20,
    fairness_backlog=40,
    fairness_probes=5,
    scale_tenants=(2,),
    scale_backlog=100,
    scale_probes=2,
    tenants=20,
    idle_seconds=1,
    settle=1,
    schedules=200,
    due=20,
    memory_small=20,
    memory_large=60,
)


def notes(sizes: Sizes, bulk_calls: int) -> list[str]:
    """What the reader must know to read the figures."""
    return [
        "Every system runs in this one run, back to back per repetition: Taskyard as "
        "`dramatiq actors bench.taskyard_actors --processes 1 --threads 8` with all its "
        "middleware (tenant routing, job records, DB session, retry policy, outbox, "
        "dead letters); bare Dramatiq (`RabbitmqBroker`, default middleware); Celery 5 "
        "(threads pool, concurrency 8, `acks_late`); procrastinate 3 (concurrency 8).",
        "Throughput counts from the first job's start to the last job's end as the worker "
        "saw them; the jobs are queued before the worker starts. Taskyard's last job record "
        "commits just after its body ends, a few ms not counted.",
        "Machine-wide CPU per job is counted over each throughput run's own drain window "
        "(the first job's start to the last job's end, as for its jobs/s): the CPU time "
        "(user + system, /proc/<pid>/stat) of the system's worker processes (its command "
        "and every process under it), of PostgreSQL (the postmaster and its children: "
        "backends, walwriter, checkpointer, background writer; not client backends of "
        "another database than the run's) and of the RabbitMQ node (beam.smp and the "
        "processes under it), divided by the jobs; the parts' medians are in the figure's "
        f"note. The harness reads /proc every {machine_cpu.INTERVAL * 1000:.0f} ms from "
        "before the worker starts and interpolates each process's CPU at the window's ends; "
        f"the kernel counts CPU in {1000 / TICK:.0f} ms ticks per process, so a short window "
        "(a small run, a fast system) is the less precise. Not counted: the harness itself "
        "(its readings take some 4-5 % of a core while each system runs), and the machine's other "
        "servers (Redis, MariaDB, NATS, Mosquitto) and processes. These still share its "
        "cores, and PostgreSQL's shared processes and the RabbitMQ node do work for any other "
        "client they have in the window: background noise in these figures. procrastinate "
        "uses no RabbitMQ: its RabbitMQ part is what the node did meanwhile for no one of "
        "this run, a gauge of that noise.",
        f"Sizes: throughput {sizes.throughput:,} jobs per run; send {sizes.send:,} messages "
        f"(bulk: {bulk_calls} calls); latency {sizes.latency:,} probes at 200/s, after one "
        "unmeasured send that opens the producer's connections; fairness A's backlog "
        f"{sizes.fairness_backlog:,} and {sizes.fairness_probes} B jobs; fairness at scale "
        f"{sizes.scale_backlog:,} no-op jobs split among each N noisy tenants, "
        f"{sizes.scale_probes} B jobs one a second from when the worker is ready (only those "
        "sent before the backlog's last job ended count), run once, unacknowledged messages "
        "read from `rabbitmqctl list_channels` about once a second; memory "
        f"{sizes.memory_small:,} → {sizes.memory_large:,} jobs; tenant scale and memory "
        "run once. The harness queues Taskyard's backlogs with `send_many` (500 per "
        "call) and bare Dramatiq's with `send()`: queueing is set-up, not measured.",
        "Tenant scale and the scheduler have no peer that does the same thing; they are "
        "measured against the issue's bounds only.",
        "The scheduler figure times the body of `scheduler_tick` (claim, outbox rows, "
        "commit, publish) in the harness's process, in a `taskyard_transaction`.",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run, no targets")
    parser.add_argument("--out", type=Path, help="where to write the report")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only this scenario (again for more): {', '.join(SCENARIOS)}",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    out = args.out or (REPO / "BENCHMARKS.md")
    problems = unreachable()
    if problems:
        for problem in problems:
            print(f"python -m bench: {problem}", file=sys.stderr)
        return 2
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-bench-")))
    env.export()
    # Imported only now: Taskyard reads its settings when its broker is built.
    from bench import (
        fairness,
        fairness_scale,
        latency,
        memory,
        scheduler,
        send,
        tenant_scale,
        throughput,
    )
    from bench.systems import BareDramatiq, Celery, Procrastinate, Taskyard, all_queues, engine_of

    taskyard, dramatiq = Taskyard(env), BareDramatiq(env)
    procrastinate = Procrastinate(env)
    peers = [taskyard, dramatiq, Celery(env), procrastinate]
    started = time.monotonic()
    figures: list[Figure] = []
    failures: list[str] = []
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    command += "".join(f" --only {name}" for name in args.only or [])
    if args.out:
        command += f" --out {shlex.quote(str(args.out))}"
    # The analysis is of a full run's figures: not appended to a partial one.
    partial = [f"Only the scenarios asked for ran: {', '.join(args.only)}."] if args.only else []

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)

    def report(info: dict[str, str], *, finished: bool) -> None:
        # Written after every scenario, so a run stopped half-way still leaves its figures.
        extra = (
            []
            if finished
            else ["Run not finished: the scenarios below the last table did not run."]
        )
        text = render(
            figures,
            machine=info,
            command=command,
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            runs=sizes.runs,
            smoke=args.smoke,
            notes=[*extra, *partial, *notes(sizes, send.BULK_CALLS), *failures],
        )
        if not args.smoke and not args.only and ANALYSIS.exists():
            text += "\n" + ANALYSIS.read_text()
        write(out, text)

    scenarios: list[tuple[str, Callable[[], list[Figure]]]] = [
        (
            "throughput",
            lambda: throughput.run(
                peers, count=sizes.throughput, runs=sizes.runs, two_processes=not args.smoke
            ),
        ),
        ("send", lambda: send.run(taskyard, dramatiq, count=sizes.send, runs=sizes.runs)),
        (
            "latency",
            # The smoke run keeps near a minute: the peers' latency only in the full run.
            lambda: latency.run(
                [taskyard, dramatiq] if args.smoke else peers, count=sizes.latency, runs=sizes.runs
            ),
        ),
        (
            "fairness",
            lambda: fairness.run(
                taskyard,
                dramatiq,
                backlog=sizes.fairness_backlog,
                probes=sizes.fairness_probes,
                runs=sizes.runs,
            ),
        ),
        (
            "fairness scale",
            lambda: fairness_scale.run(
                taskyard,
                dramatiq,
                tenants=sizes.scale_tenants,
                backlog=sizes.scale_backlog,
                probes=sizes.scale_probes,
            ),
        ),
        (
            "scheduler",
            lambda: scheduler.run(taskyard, total=sizes.schedules, due=sizes.due, runs=sizes.runs),
        ),
        (
            "tenant scale",
            lambda: tenant_scale.run(
                taskyard,
                tenants=sizes.tenants,
                idle_seconds=sizes.idle_seconds,
                settle=sizes.settle,
            ),
        ),
        (
            "memory",
            lambda: memory.run(
                [taskyard, dramatiq], small=sizes.memory_small, large=sizes.memory_large
            ),
        ),
    ]
    try:
        step("setting up the bench database")
        taskyard.setup()
        procrastinate.setup()
        info = machine()
        for name, scenario in scenarios:
            if args.only and name.replace(" ", "-") not in args.only:
                continue
            step(name)
            try:
                figures.extend(scenario())
            except BenchError as exc:
                # One scenario that cannot measure does not cost the others their figures.
                failures.append(f"Scenario {name} failed: {str(exc).splitlines()[0]}")
                step(failures[-1])
            report(info, finished=False)
    finally:
        step("cleaning up queues and the database")
        try:
            env.delete_queues(all_queues(peers))
        finally:
            engine_of(env).dispose()
            env.drop_database()
    report(info, finished=True)
    step(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
